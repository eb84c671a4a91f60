"""Losses as small pure functions, so the model (one process) and the trainer (features gathered from every rank)
compute them with the same code.

Each loss takes the `(B, D)` features of the whole batch (gathered from every rank by the trainer). For open_clip's
*local* loss (github.com/mlfoundations/open_clip, src/open_clip/loss.py, `ClipLoss(local_loss=True)`), a rank passes
its own `(b, D)` features, the gathered ones as `all_*` and where its rows start in them (`label_offset`): it scores
its captions against every image and its images against every caption, `O(b x B)` instead of `O(B x B)`. Averaged
over ranks (DDP averages the gradients) this is the global loss, gradients included, when ranks hold equal batches.
"""

import math

import torch
import torch.nn.functional as F

from .configuration_smartclip import LAMBDA_SPARSITY, SPARSITY_REDUCTIONS
from .masking import masked_similarity

# CLIP caps the temperature at 100 (Radford et al. 2021, Sec. 2.5; open_clip clamps `logit_scale` to ln 100):
# beyond it the logits overflow the softmax (exp(89) is inf in float32).
MAX_LOGIT_SCALE = math.log(100)


def scale_from_log(logit_scale: torch.Tensor) -> torch.Tensor:
    """`exp(logit_scale)` with `logit_scale` clamped at ln 100 (no gradient beyond it, as CLIP's clamp)."""
    return logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()


def contrastive_loss(
    logits_per_text: torch.Tensor,
    image_columns: torch.Tensor | None = None,
    label_offset: int = 0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Symmetric cross-entropy: `(CE over each caption's row + CE over each image's column) / 2`.

    Args:
        logits_per_text: `(b, N)`, caption i's logits over the images; its positive is image `label_offset + i`.
        image_columns: `(N, b)`, every caption's logit for each of the `b` images; image j's positive is caption
            `label_offset + j`. `None`: the columns of a square `logits_per_text` (the whole batch).
        label_offset: index of the first local row in the gathered batch (the local loss).
        label_smoothing: as `F.cross_entropy`'s, on both sides (Long-CLIP trains with 0.1).

    The column softmax runs along dim 0, so no transposed `(N, b)` copy is made.
    """
    columns = logits_per_text if image_columns is None else image_columns
    labels = torch.arange(len(logits_per_text), device=logits_per_text.device) + label_offset  # (b,)
    loss_text = F.cross_entropy(logits_per_text, labels, label_smoothing=label_smoothing)
    log_probs = columns.log_softmax(dim=0)  # (N, b)
    nll_image = -log_probs[labels, torch.arange(columns.shape[1], device=columns.device)]  # (b,)
    if label_smoothing:  # F.cross_entropy's smoothing: (1 - e) * NLL + e * mean over classes of -log p
        nll_image = (1 - label_smoothing) * nll_image - label_smoothing * log_probs.mean(dim=0)
    return (loss_text + nll_image.mean()) / 2


def clip_loss(
    text_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    all_text_embeds: torch.Tensor | None = None,
    all_image_embeds: torch.Tensor | None = None,
    label_offset: int = 0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """CLIP's loss on unit-norm `(b, D)` embeddings; `logit_scale` is the log-temperature parameter.

    `all_text_embeds` / `all_image_embeds` (`(B, D)`, every rank's, this rank's at `label_offset`) make it the
    local loss; `None` means the local batch is the whole batch. `label_smoothing`: as in `contrastive_loss`.
    """
    scale = scale_from_log(logit_scale)
    if all_text_embeds is None:  # scale on the (B, D) side
        return contrastive_loss((scale * text_embeds) @ image_embeds.T, label_smoothing=label_smoothing)
    logits_per_text = (scale * text_embeds) @ all_image_embeds.T  # (b, B)
    image_columns = (scale * all_text_embeds) @ image_embeds.T  # (B, b)
    return contrastive_loss(logits_per_text, image_columns, label_offset, label_smoothing)


def sparsity_penalty(text_mask_probs: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """The L1 norm of the soft masks `(b, D)` (Eq. 8), averaged over captions: `"sum"` sums each caption's mask over
    the dimensions (the paper's `||m||_1`, so a mask entry's gradient is `1 / b`); `"mean"` also averages over the
    dimensions (what 0.1.0 saved; `D` times weaker)."""
    if reduction == "sum":
        return text_mask_probs.sum(dim=-1).mean()
    if reduction == "mean":
        return text_mask_probs.mean()
    raise ValueError(f"sparsity reduction {reduction!r}; expected one of {SPARSITY_REDUCTIONS}.")


def modular_loss(
    text_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    text_masks: torch.Tensor,
    text_mask_probs: torch.Tensor,
    logit_scale: torch.Tensor,
    lambda_align: float = 1.0,
    lambda_sparsity: float = LAMBDA_SPARSITY,
    sparsity_reduction: str = "sum",
    all_text_embeds: torch.Tensor | None = None,
    all_image_embeds: torch.Tensor | None = None,
    all_text_masks: torch.Tensor | None = None,
    label_offset: int = 0,
) -> torch.Tensor:
    """SmartCLIP's loss (Eq. 9): `lambda_align * (CE over rows + CE over columns) / 2 + lambda_sparsity * L1`.

    Row b of the logits scores caption b against every image seen through caption b's own mask, so its
    cross-entropy is `L_ctrT` (Eq. 6-7) and the column cross-entropy is `L_ctrI` (Eq. 5). With all-on masks the
    alignment term is CLIP's loss. Halving the two cross-entropies, as CLIP does, is Eq. 9 with `lambda_align = 1/2`
    (the paper does not state its value), so `lambda_sparsity` is in the paper's units: the weight of each
    caption's `||m||_1` (`sparsity_penalty`). All inputs are `(b, D)`. `all_text_embeds`, `all_image_embeds`,
    `all_text_masks` (`(B, D)`, every rank's) make it the local loss (module docstring); each rank's sparsity term
    is then its own captions' mean.
    """
    scale = scale_from_log(logit_scale)
    if all_text_embeds is None:
        align = contrastive_loss(masked_similarity(text_embeds, image_embeds, text_masks, scale=scale))
    else:
        logits_per_text = masked_similarity(text_embeds, all_image_embeds, text_masks, scale=scale)  # (b, B)
        image_columns = masked_similarity(all_text_embeds, image_embeds, all_text_masks, scale=scale)  # (B, b)
        align = contrastive_loss(logits_per_text, image_columns, label_offset)
    return lambda_align * align + lambda_sparsity * sparsity_penalty(text_mask_probs, sparsity_reduction)


__all__ = ["MAX_LOGIT_SCALE", "clip_loss", "contrastive_loss", "modular_loss", "scale_from_log", "sparsity_penalty"]
