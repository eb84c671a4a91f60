"""The heart of SmartCLIP: the mask head and the masked similarity.

A caption's mask picks the embedding dimensions (concept modules) it talks about; an image is compared with the
caption only through those dimensions: `cos(image * mask(caption), caption)` (Xie et al., CVPR 2025, Eqs. 5-7).
"""

import torch
from torch import nn
from transformers import CLIPTextConfig
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from .configuration_smartclip import SCORINGS, SmartCLIPConfig

# Floor of a masked image's squared norm: an all-zero mask scores 0 with a finite gradient (not 1e18).
EMPTY_MASK_EPS = 1e-6
# Caption rows per block in the masked similarity's backward: bounds its temporaries to (512, n_image).
BACKWARD_ROWS = 512
# A fresh head starts all-on, so a model converted from CLIP scores and trains exactly as CLIP at step 0: every
# logit is near MASK_LOGIT_BIAS (sigmoid 0.88, slope 0.10, far from saturation) with a spread of about
# MASK_LOGIT_SPREAD (weights of std MASK_LOGIT_SPREAD / sqrt(width) on layer-normed tokens), 20 spreads above the
# threshold's logit 0. A random start (std 1) switched off a random half of the dimensions, and so broke the
# pretrained alignment before the first step (see docs/design.md).
MASK_LOGIT_BIAS = 2.0
MASK_LOGIT_SPREAD = 0.1


class MaskLogits(nn.Linear):
    """The head's last Linear, `(..., width) -> (..., projection_dim)`: its own class so that `_init_weights` can
    give it the all-on start."""


class SmartCLIPMaskHead(nn.Module):
    """Predicts a binary mask over the `projection_dim` embedding dimensions from a caption's token sequence.

    One transformer block over the text tower's final hidden states, then a pooling step, a Linear to
    `projection_dim`, a sigmoid and a straight-through binarisation. The two poolings differ in one place:
    `"attention"` pools the tokens with a learned query *before* the Linear (one mask per caption, the paper's
    head); `"union"` applies the Linear to every token and takes the maximum *after* it, so a caption's mask is
    the union of what its words switch on.
    """

    def __init__(self, config: SmartCLIPConfig):
        super().__init__()
        text_width = config.text_config.hidden_size
        width = config.mask_hidden_size or text_width
        block_config = CLIPTextConfig(
            hidden_size=width,
            num_attention_heads=config.mask_num_attention_heads or config.text_config.num_attention_heads,
            intermediate_size=config.mask_intermediate_size or 4 * width,
            hidden_act=config.text_config.hidden_act,
            layer_norm_eps=config.text_config.layer_norm_eps,
        )
        # The block follows the text tower's attention implementation (`SmartCLIPModel.set_attn_implementation`).
        block_config._attn_implementation = config.text_config._attn_implementation or "sdpa"
        self.threshold = config.mask_threshold
        self.pooling = config.mask_pooling
        self.input_projection = nn.Linear(text_width, width) if width != text_width else nn.Identity()
        self.block = CLIPEncoderLayer(block_config)
        # The block is pre-norm, so its output scale is free to grow; without this norm the mask logits grew into
        # the thousands while training, every sigmoid saturated and the straight-through gradient vanished.
        self.norm = nn.LayerNorm(width, eps=config.text_config.layer_norm_eps)
        if self.pooling == "attention":
            self.query = nn.Parameter(torch.zeros(1, 1, width))
            self.pool = nn.MultiheadAttention(width, block_config.num_attention_heads, batch_first=True)
        self.to_logits = MaskLogits(width, config.projection_dim)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """
        Args:
            hidden_states: `(batch, seq_len, text_hidden)`, the text tower's last hidden states.
            attention_mask: `(batch, seq_len)`, 1 for tokens and 0 for padding; `None` means no padding.

        Returns:
            `(mask, probs)`, both `(batch, projection_dim)`: `mask` is exactly 0/1 in the forward pass and carries
            the sigmoid's gradient in the backward pass; `probs` is the sigmoid itself (for the sparsity term).
        """
        batch, seq_len, _ = hidden_states.shape
        if attention_mask is None:
            attention_mask = hidden_states.new_ones(batch, seq_len)
        padding = attention_mask == 0  # (B, T)
        block_mask = torch.zeros(padding.shape, dtype=hidden_states.dtype, device=hidden_states.device)
        block_mask = block_mask.masked_fill(padding, torch.finfo(hidden_states.dtype).min)[:, None, None, :]
        tokens = self.norm(self.block(self.input_projection(hidden_states), block_mask))  # (B, T, W)

        if self.pooling == "attention":
            pooled, _ = self.pool(self.query.expand(batch, -1, -1), tokens, tokens, key_padding_mask=padding)
            logits = self.to_logits(pooled[:, 0])  # (B, D)
        else:
            token_logits = self.to_logits(tokens).masked_fill(padding[..., None], float("-inf"))  # (B, T, D)
            logits = token_logits.amax(dim=1)  # (B, D)

        probs = torch.sigmoid(logits)
        hard = (probs > self.threshold).to(probs.dtype)
        mask = hard + (probs - probs.detach())  # straight-through: exactly `hard` forward, `probs` gradient backward
        return mask, probs


def masked_similarity(
    text_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    text_masks: torch.Tensor,
    chunk_size: int | None = None,
    image_embeds_squared: torch.Tensor | None = None,
    scale: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """`scale * cos(image_b * mask_a, text_a)` for every caption a and image b; the one implementation that the
    loss, `forward`'s modular logits and the retrieval helper all call.

    Args:
        text_embeds: `(n_text, D)` caption embeddings (any norm).
        image_embeds: `(n_image, D)` image embeddings (any norm: cosine ignores the scale).
        text_masks: `(n_text, D)` caption masks with values in {0, 1}.
        chunk_size: captions per block when no gradient is needed (inference): besides the output, at most one
            `(chunk_size, n_image)` block is built at a time.
        image_embeds_squared: `image_embeds ** 2`, if a gallery already holds it.
        scale: a factor (e.g. `exp(logit_scale)`) of the result, applied to the `(n_text, D)` captions (or, in
            training, inside the autograd function) so that its gradient keeps no `(n_text, n_image)` tensor.

    Returns:
        `(n_text, n_image)` masked cosine similarities. No `(n_text, n_image, D)` tensor is built: the numerator is
        `(M * T) @ I^T` and, because `m * m = m` for a binary mask, `||I_b * M_a||^2 = M @ (I * I)^T`.
    """
    inputs = (text_embeds, image_embeds, text_masks, scale)
    if torch.is_grad_enabled() and any(torch.is_tensor(t) and t.requires_grad for t in inputs):
        # Training: the (n_text, n_image) inverse masked norm is the one pairwise tensor kept for backward.
        scale = torch.as_tensor(1.0 if scale is None else scale, dtype=text_embeds.dtype, device=text_embeds.device)
        return _MaskedCosine.apply(text_embeds, image_embeds, text_masks, scale)

    if image_embeds_squared is None:
        image_embeds_squared = image_embeds.square()  # (n_image, D)
    masked_text = text_embeds * text_masks / text_embeds.norm(dim=-1, keepdim=True)  # (n_text, D)
    if scale is not None:
        masked_text = masked_text * scale

    # Inference: each block is written once into the output and scaled in place.
    similarity = masked_text.new_empty(len(text_embeds), len(image_embeds))
    step = chunk_size or max(len(text_embeds), 1)
    for start in range(0, len(text_embeds), step):
        block = similarity[start : start + step]  # (chunk, n_image)
        torch.matmul(masked_text[start : start + step], image_embeds.T, out=block)
        masked_image_norm_sq = text_masks[start : start + step] @ image_embeds_squared.T  # (chunk, n_image)
        block.mul_(masked_image_norm_sq.clamp_min_(EMPTY_MASK_EPS).rsqrt_())
    return similarity


def similarity(
    text_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    text_masks: torch.Tensor,
    scoring: str,
    chunk_size: int | None = None,
    image_embeds_squared: torch.Tensor | None = None,
    scale: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """`(n_text, n_image)` cosine similarities of unit-norm embeddings under `scoring`, times `scale` if given:
    `"plain"` (CLIP's; `text_masks` may be `None`) or `"modular"` (`masked_similarity`, whose arguments the others
    are)."""
    if scoring == "plain":
        return (text_embeds if scale is None else scale * text_embeds) @ image_embeds.T
    if scoring == "modular":
        return masked_similarity(text_embeds, image_embeds, text_masks, chunk_size, image_embeds_squared, scale)
    raise ValueError(f"scoring={scoring!r}; expected one of {SCORINGS}.")


# ----- masked_similarity's training path ------------------------------------------------------------------------


class _MaskedCosine(torch.autograd.Function):
    """`S = scale * (U * M) @ I^T * rsqrt(M @ (I * I)^T)`, `U = T / |T|`, for captions `T`, masks `M` `(n_text, D)` and
    images `I` `(n_image, D)`: `masked_similarity`'s training path. Autograd would keep four `(n_text, n_image)`
    tensors and four `(n, D)` intermediates for backward; this keeps only the inverse masked norm besides its inputs,
    and recomputes the rest in backward (one more matmul), in blocks of `BACKWARD_ROWS` captions."""

    @staticmethod
    def forward(ctx, text_embeds, image_embeds, text_masks, scale):
        text_norm = text_embeds.norm(dim=-1, keepdim=True)  # (n_text, 1)
        inverse_norm = (text_masks @ image_embeds.square().T).clamp_min_(EMPTY_MASK_EPS).rsqrt_()  # (n_text, n_image)
        ctx.save_for_backward(text_embeds, image_embeds, text_masks, scale, text_norm, inverse_norm)
        return (text_embeds * text_masks * (scale / text_norm) @ image_embeds.T).mul_(inverse_norm)

    @staticmethod
    def backward(ctx, grad):
        # With G the incoming gradient and H = G * R: dL/dN = scale * H, dL/dP = -0.5 * scale * H * N * R^2 (0 where
        # the clamp held) and dL/dscale = sum(H * N) = sum((H @ I) * U * M). The constant factors (scale, -0.5) go on
        # the (n, D) side, so each (rows, n_image) block costs four elementwise passes.
        text_embeds, image_embeds, text_masks, scale, text_norm, inverse_norm = ctx.saved_tensors
        image_squared = image_embeds.square().mul_(-0.5 * scale)  # (n_image, D), times dL/dP's constant factors
        floor = inverse_norm.new_tensor(EMPTY_MASK_EPS).rsqrt()  # where the clamp held P, P is a constant
        # In practice only an empty mask reaches the clamp: one read of R spares every block a comparison and a fill.
        clamped = bool(inverse_norm.max() >= floor)
        grad_unit, grad_masks = torch.empty_like(text_embeds), torch.empty_like(text_masks)  # (n_text, D)
        grad_image, grad_squared = torch.zeros_like(image_embeds), torch.zeros_like(image_embeds)  # (n_image, D)
        grad_scale = torch.zeros_like(scale)
        for start in range(0, len(grad), BACKWARD_ROWS):
            rows = slice(start, start + BACKWARD_ROWS)
            masked_unit = text_embeds[rows] * text_masks[rows] / text_norm[rows]  # U * M: (rows, D)
            inverse = inverse_norm[rows]  # (rows, n_image)
            grad_numerator = grad[rows] * inverse  # H = dL/dN / scale
            numerator = masked_unit @ image_embeds.T  # N, recomputed: (rows, n_image)
            grad_norm_sq = numerator.mul_(grad_numerator).mul_(inverse).mul_(inverse)  # dL/dP / (-0.5 * scale)
            if clamped:
                grad_norm_sq.masked_fill_(inverse >= floor, 0.0)
            torch.matmul(grad_numerator, image_embeds, out=grad_unit[rows])  # dL/d(U * M) / scale
            if ctx.needs_input_grad[3]:
                grad_scale += torch.dot(grad_unit[rows].view(-1), masked_unit.view(-1))
            torch.matmul(grad_norm_sq, image_squared, out=grad_masks[rows])
            grad_image.addmm_(grad_numerator.T, masked_unit)
            grad_squared.addmm_(grad_norm_sq.T, text_masks[rows])  # dL/d(I * I) / (-0.5 * scale)
        # In place from here on: at n_text = 4096 each (n_text, D) temporary would be a tenth of the peak.
        unit_text = text_embeds / text_norm  # (n_text, D), made after the blocks' temporaries are gone
        grad_unit.mul_(scale)  # dL/d(U * M)
        grad_masks.addcmul_(grad_unit, unit_text)
        grad_unit.mul_(text_masks)  # dL/dU; through U = T / |T|: (g - (g . U) U) / |T|
        along_unit = torch.bmm(grad_unit.unsqueeze(1), unit_text.unsqueeze(2)).squeeze(2)  # (n_text, 1)
        grad_text = grad_unit.addcmul_(unit_text, along_unit, value=-1.0).div_(text_norm)
        grad_image = grad_image.addcmul_(grad_squared, image_embeds, value=-1.0).mul_(scale)
        return grad_text, grad_image, grad_masks, grad_scale


__all__ = ["MaskLogits", "SmartCLIPMaskHead", "masked_similarity", "similarity"]
