"""Changes proposed for `modeling_smartclip/masking.py` and `losses.py`, measured here before they are made there.

The benchmarks run these next to the package's functions and report both, so each proposal's effect is a measured
figure. Same mathematics as `masked_similarity`: `S[a, b] = <T_a * M_a, I_b> / (|T_a| * sqrt(M_a . I_b^2))`.

1. `LeanMaskedCosine`: an autograd function that keeps one `(n_text, n_image)` tensor for backward (the inverse
   masked norm) instead of four (autograd keeps the numerator, the clamp's input, the square root and, through the
   logit scale's product, the similarity itself), and recomputes the numerator in backward (one more matmul).
2. The logit scale multiplies the `(n_text, D)` masked captions, not the `(n_text, n_image)` similarity, so its
   gradient needs no `(n_text, n_image)` tensor (as `clip_loss` already does by operator precedence).
3. (made in the package: `masked_similarity` writes inference blocks in place into one preallocated output.)
4. `forward_skipping_mask_head`: `SmartCLIPModel.forward` under plain scoring and without a loss does not need the
   masks, so it skips the mask head (the zero-shot pipeline calls `forward` once per image with every label).
"""

import torch

from modeling_smartclip import SmartCLIPModel, SmartCLIPOutput
from modeling_smartclip.losses import contrastive_loss
from modeling_smartclip.masking import EMPTY_MASK_EPS


class LeanMaskedCosine(torch.autograd.Function):
    """`S = (A @ I^T) * rsqrt(M @ J^T)` for masked unit captions `A = T * M / |T|` (optionally scaled), images `I`,
    masks `M` and squared images `J = I^2`, all `(n, D)`; returns `(n_text, n_image)`."""

    @staticmethod
    def forward(ctx, masked_text, image_embeds, text_masks, image_embeds_squared):
        inverse_norm = (text_masks @ image_embeds_squared.T).clamp_min_(EMPTY_MASK_EPS).rsqrt_()  # (n_text, n_image)
        ctx.save_for_backward(masked_text, image_embeds, text_masks, image_embeds_squared, inverse_norm)
        return (masked_text @ image_embeds.T).mul_(inverse_norm)

    @staticmethod
    def backward(ctx, grad):
        masked_text, image_embeds, text_masks, image_embeds_squared, inverse_norm = ctx.saved_tensors
        grad_numerator = grad * inverse_norm  # dS/dN = rsqrt(P)
        # dS/dP = -N * P^(-3/2) / 2, built in place in the recomputed numerator's memory
        grad_squared_norm = (masked_text @ image_embeds.T).mul_(grad_numerator).mul_(inverse_norm).mul_(inverse_norm)
        grad_squared_norm.mul_(-0.5)
        return (
            grad_numerator @ image_embeds,  # (n_text, D)
            grad_numerator.T @ masked_text,  # (n_image, D)
            grad_squared_norm @ image_embeds_squared,  # (n_text, D)
            grad_squared_norm.T @ text_masks,  # (n_image, D)
        )


def lean_modular_loss(
    text_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    text_masks: torch.Tensor,
    text_mask_probs: torch.Tensor,
    logit_scale: torch.Tensor,
    lambda_align: float = 1.0,
    lambda_sparsity: float = 0.01,
) -> torch.Tensor:
    """`modular_loss` with proposals 1 and 2: same value, one `(B, B)` tensor saved for backward instead of four."""
    masked_text = text_embeds * text_masks * (logit_scale.exp() / text_embeds.norm(dim=-1, keepdim=True))  # (B, D)
    logits_per_text = LeanMaskedCosine.apply(masked_text, image_embeds, text_masks, image_embeds.square())
    return lambda_align * contrastive_loss(logits_per_text) + lambda_sparsity * text_mask_probs.mean()


def forward_skipping_mask_head(
    self: SmartCLIPModel,
    input_ids: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    return_loss: bool | None = None,
    **kwargs,
) -> SmartCLIPOutput:
    """`SmartCLIPModel.forward` with proposal 4; bind it to a model with `types.MethodType` to measure it.

    Same logits; `text_masks` and `text_mask_probs` are `None` when the head is skipped.
    """
    if return_loss or self.config.scoring != "plain" or input_ids is None or pixel_values is None or kwargs:
        return SmartCLIPModel.forward(self, input_ids, pixel_values, attention_mask, return_loss, **kwargs)
    image_features = self.get_image_features(pixel_values)
    text_features = self.get_text_features(input_ids, attention_mask)
    image_embeds = image_features / image_features.norm(dim=-1, keepdim=True)  # (n_image, D)
    text_embeds = text_features / text_features.norm(dim=-1, keepdim=True)  # (n_text, D)
    logits_per_text = self.score(text_embeds, image_embeds, None, "plain")
    return SmartCLIPOutput(
        logits_per_image=logits_per_text.T, logits_per_text=logits_per_text, text_embeds=text_embeds,
        image_embeds=image_embeds,
    )


__all__ = ["LeanMaskedCosine", "forward_skipping_mask_head", "lean_modular_loss"]
