"""Losses as small pure functions, so the model (one process) and the trainer (features gathered from every rank)
compute them with the same code."""

import torch
import torch.nn.functional as F

from .masking import masked_similarity


def contrastive_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy of a `(n, n)` logit matrix whose diagonal holds the positive pairs."""
    labels = torch.arange(len(logits_per_text), device=logits_per_text.device)
    return (F.cross_entropy(logits_per_text, labels) + F.cross_entropy(logits_per_text.T, labels)) / 2


def clip_loss(text_embeds: torch.Tensor, image_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's loss on unit-norm `(B, D)` embeddings; `logit_scale` is the log-temperature parameter."""
    return contrastive_loss(logit_scale.exp() * text_embeds @ image_embeds.T)


def modular_loss(
    text_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    text_masks: torch.Tensor,
    text_mask_probs: torch.Tensor,
    logit_scale: torch.Tensor,
    lambda_align: float = 1.0,
    lambda_sparsity: float = 0.01,
) -> torch.Tensor:
    """SmartCLIP's loss (Eq. 9): `lambda_align * (CE over rows + CE over columns) / 2 + lambda_sparsity * mean(probs)`.

    Row b of the logits scores caption b against every image seen through caption b's own mask, so its
    cross-entropy is `L_ctrT` (Eq. 6-7) and the column cross-entropy is `L_ctrI` (Eq. 5). All inputs are `(B, D)`.
    The sparsity term averages the soft mask over batch and dimensions (the paper's L1 norm, scaled so its weight
    does not depend on `D`).
    """
    logits_per_text = logit_scale.exp() * masked_similarity(text_embeds, image_embeds, text_masks)
    return lambda_align * contrastive_loss(logits_per_text) + lambda_sparsity * text_mask_probs.mean()


__all__ = ["contrastive_loss", "clip_loss", "modular_loss"]
