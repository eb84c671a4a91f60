"""Training objectives: what `SmartCLIPTrainer.compute_loss` minimises, picked by name in `build_objective`.

An objective receives the model, its `SmartCLIPOutput` (computed without `return_loss`) and the batch, gathers the
features it needs from every rank (`gather_features`), and calls the pure loss functions of
`modeling_smartclip.losses`: the math lives there once, for the model's own `forward` and for the trainer alike.
A related method brings its own `TrainingLoss` subclass and hands an instance to `run_training` (see
`methods/setclip/`); the names below are the core trainer's `--objective` choices.
"""

import torch
from accelerate.utils import extract_model_from_parallel

from modeling_smartclip import SmartCLIPOutput, clip_loss, modular_loss
from modeling_smartclip.losses import scale_from_log

from .distributed import gather_features, rank_offset


class TrainingLoss:
    """Base class. Class attributes tell the trainer how to set the model up for this loss.

    Attributes:
        trains_mask_head: whether the loss sends gradients to the mask head (if not, the head is frozen).
        scoring: the `SmartCLIPConfig.scoring` a model trained with this loss is saved with.
        config_loss_type: the `SmartCLIPConfig.loss_type` (what `forward(return_loss=True)` computes) saved with it.
        (The saved `SmartCLIPConfig.mask_head_trained` is `trains_mask_head`.)
        needs_text_masks: whether the loss reads `outputs.text_masks`; the trainer passes it to `forward` as
            `output_text_masks`, so the mask head runs only when it is used.

    The core objectives take `local_loss: bool = False`: with it, each rank scores only its own captions against all
    gathered images and its own images against all gathered captions (open_clip's `local_loss`), so per-rank loss
    memory and FLOPs are `O(local_batch x global_batch)` instead of `O(global_batch^2)`, with the same gradients as
    the global loss when ranks hold equal batches. Worth it from a few ranks up (the paper's 8 x 128) and needed
    for 32k global batches; in one process it changes nothing.
    """

    trains_mask_head: bool = False
    scoring: str = "plain"
    config_loss_type: str = "clip"
    needs_text_masks: bool = True

    def __call__(self, model, outputs: SmartCLIPOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Returns the scalar loss of the global batch and a few numbers to log."""
        raise NotImplementedError


def logit_scale_of(model) -> torch.Tensor:
    """The log-temperature parameter of a model that may be wrapped (DDP, `torch.compile`)."""
    return extract_model_from_parallel(model).logit_scale


class CLIPLoss(TrainingLoss):
    """CLIP's symmetric contrastive loss on unmasked embeddings: the baseline, with the same towers and script."""

    needs_text_masks = False

    def __init__(self, local_loss: bool = False):
        self.local_loss = local_loss

    def __call__(self, model, outputs: SmartCLIPOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        logit_scale = logit_scale_of(model)
        logs = {"logit_scale": logit_scale.exp().item()}
        if not self.local_loss:
            text_embeds, image_embeds = gather_features(outputs.text_embeds, outputs.image_embeds)
            return clip_loss(text_embeds, image_embeds, logit_scale), logs
        all_text_embeds, all_image_embeds = gather_features(outputs.text_embeds, outputs.image_embeds)
        offset = rank_offset(len(outputs.text_embeds), outputs.text_embeds.device)
        loss = clip_loss(
            outputs.text_embeds, outputs.image_embeds, logit_scale, all_text_embeds, all_image_embeds, offset
        )
        return loss, logs


class ModularLoss(TrainingLoss):
    """SmartCLIP's loss (Eq. 9): each caption compares every image through the caption's own mask."""

    trains_mask_head = True
    scoring = "modular"
    config_loss_type = "smartclip"

    def __init__(self, lambda_align: float = 1.0, lambda_sparsity: float = 0.01, local_loss: bool = False):
        self.lambda_align = lambda_align
        self.lambda_sparsity = lambda_sparsity
        self.local_loss = local_loss

    def masks(self, outputs: SmartCLIPOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """`(masks, probs)`, both `(local_batch, D)`: the head's hard masks and the sigmoids of the sparsity term."""
        return outputs.text_masks, outputs.text_mask_probs

    def __call__(self, model, outputs: SmartCLIPOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        masks, probs = self.masks(outputs)
        logit_scale = logit_scale_of(model)
        if not self.local_loss:
            text_embeds, image_embeds, masks, probs = gather_features(
                outputs.text_embeds, outputs.image_embeds, masks, probs
            )
            loss = modular_loss(
                text_embeds, image_embeds, masks, probs, logit_scale, self.lambda_align, self.lambda_sparsity
            )
        else:
            all_text_embeds, all_image_embeds, all_masks = gather_features(
                outputs.text_embeds, outputs.image_embeds, masks
            )
            offset = rank_offset(len(masks), masks.device)
            loss = modular_loss(
                outputs.text_embeds, outputs.image_embeds, masks, probs, logit_scale, self.lambda_align,
                self.lambda_sparsity, all_text_embeds, all_image_embeds, all_masks, offset,
            )
        return loss, {"mask_density": masks.detach().mean().item(), "logit_scale": logit_scale.exp().item()}


class RandomMaskLoss(ModularLoss):
    """Control: the modular loss with random masks instead of the head's, to show what a learned mask adds.

    Each step draws new Bernoulli masks, one per caption, whose density is `density` or, by default, the density
    of the head's current hard masks on this batch. The head gets no gradient (it is frozen), and the sparsity
    term only adds a constant (`lambda_sparsity` times the random masks' mean).
    """

    trains_mask_head = False
    scoring = "plain"
    config_loss_type = "clip"  # the head stays untrained, so `forward`'s loss is CLIP's

    def __init__(
        self, lambda_align: float = 1.0, lambda_sparsity: float = 0.01, density: float | None = None,
        local_loss: bool = False,
    ):
        super().__init__(lambda_align, lambda_sparsity, local_loss)
        if density is not None and not 0.0 <= density <= 1.0:
            raise ValueError(f"RandomMaskLoss: density={density}; expected a value in [0, 1] or None.")
        self.density = density

    def masks(self, outputs: SmartCLIPOutput) -> tuple[torch.Tensor, torch.Tensor]:
        head_masks = outputs.text_masks.detach()
        density = head_masks.mean() if self.density is None else self.density
        random_masks = torch.bernoulli(torch.full_like(head_masks, float(density)))
        return random_masks, random_masks


class LongCLIPLoss(TrainingLoss):
    """Long-CLIP's objective (Zhang et al., ECCV 2024): CLIP's loss on (image, long caption) plus CLIP's loss on
    (the image's principal components, the caption's first sentence), both with label smoothing.

    The coarse image features keep the top `pca_dim` principal components of the batch's unit image embeddings,
    with the mean added back and renormalised ("primary component matching", `PCA` and `forward` in
    github.com/beichenzbc/Long-CLIP/blob/main/model/model_longclip.py), so a one-sentence caption is matched with
    the images' main directions rather than with every detail. Gradients flow through the decomposition, as there.
    Unlike Long-CLIP, which decomposes each GPU's own batch, the components come from the gathered global batch, so
    the loss does not depend on how the batch is split over ranks.

    The batch needs the first sentences' tokens, `short_input_ids` and `short_attention_mask`
    (`CaptionCollator(first_sentence=True)`); they go through the text tower in a second pass here. With
    `local_loss` both terms are local (`TrainingLoss`); the components still come from the whole gathered batch.
    """

    needs_first_sentence = True
    needs_text_masks = False

    def __init__(self, pca_dim: int = 32, label_smoothing: float = 0.1, local_loss: bool = False):
        if pca_dim < 1 or not 0.0 <= label_smoothing < 1.0:
            raise ValueError(
                f"LongCLIPLoss: pca_dim={pca_dim}, label_smoothing={label_smoothing}; expected pca_dim >= 1 and "
                "label_smoothing in [0, 1)."
            )
        self.pca_dim = pca_dim
        self.label_smoothing = label_smoothing
        self.local_loss = local_loss

    @staticmethod
    def principal_components(features: torch.Tensor, k: int) -> torch.Tensor:
        """The rank-`k` PCA reconstruction of the rows of `features` `(N, D)`: their mean plus the centred rows
        projected onto the `k` leading principal directions; `(N, D)`.

        Returns `features` itself when `k >= min(N - 1, D)`, the most the centred rows' rank can be: the
        reconstruction is then exact, and skipping it avoids differentiating through tied (zero) eigenvalues.
        """
        if k >= min(len(features) - 1, features.shape[1]):
            return features
        mean = features.mean(dim=0, keepdim=True)  # (1, D)
        centred = (features - mean).to(torch.promote_types(features.dtype, torch.float32))  # eigh needs >= fp32
        _, directions = torch.linalg.eigh(centred.T @ centred)  # (D, D), columns by ascending eigenvalue
        top = directions[:, -k:]  # (D, k)
        return (centred @ top @ top.T).to(features.dtype) + mean  # (N, D)

    def __call__(self, model, outputs: SmartCLIPOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if "short_input_ids" not in batch:
            raise ValueError(
                "the longclip objective needs each caption's first sentence in the batch (`short_input_ids`, "
                "`short_attention_mask`); got only " + ", ".join(batch) + ". Build the collator with "
                "CaptionCollator(..., first_sentence=True)."
            )
        short_features = extract_model_from_parallel(model).get_text_features(
            input_ids=batch["short_input_ids"], attention_mask=batch.get("short_attention_mask")
        ).pooler_output  # (local_batch, D)
        short_embeds = short_features / short_features.norm(dim=-1, keepdim=True)  # (local_batch, D)
        all_text_embeds, all_image_embeds, all_short_embeds = gather_features(
            outputs.text_embeds, outputs.image_embeds, short_embeds
        )
        all_coarse_embeds = self.principal_components(all_image_embeds, self.pca_dim)  # (B, D)
        all_coarse_embeds = all_coarse_embeds / all_coarse_embeds.norm(dim=-1, keepdim=True)
        logit_scale = logit_scale_of(model)
        smoothing = self.label_smoothing
        if not self.local_loss:
            loss_long = clip_loss(all_text_embeds, all_image_embeds, logit_scale, label_smoothing=smoothing)
            loss_short = clip_loss(all_short_embeds, all_coarse_embeds, logit_scale, label_smoothing=smoothing)
        else:
            offset = rank_offset(len(short_embeds), short_embeds.device)
            coarse_embeds = all_coarse_embeds[offset : offset + len(short_embeds)]  # this rank's images
            loss_long = clip_loss(outputs.text_embeds, outputs.image_embeds, logit_scale, all_text_embeds,
                                  all_image_embeds, offset, smoothing)
            loss_short = clip_loss(short_embeds, coarse_embeds, logit_scale, all_short_embeds, all_coarse_embeds,
                                   offset, smoothing)
        logs = {"loss_long": loss_long.item(), "loss_short": loss_short.item(),
                "logit_scale": scale_from_log(logit_scale).item()}
        return loss_long + loss_short, logs


OBJECTIVES = ("smartclip", "clip", "random_mask", "longclip")


def build_objective(name: str, **kwargs) -> TrainingLoss:
    """The core objective `name` (one of `OBJECTIVES`), constructed with `kwargs`."""
    if name == "smartclip":
        return ModularLoss(**kwargs)
    elif name == "clip":
        return CLIPLoss(**kwargs)
    elif name == "random_mask":
        return RandomMaskLoss(**kwargs)
    elif name == "longclip":
        return LongCLIPLoss(**kwargs)
    raise ValueError(f"objective {name!r}; expected one of {OBJECTIVES}.")


__all__ = [
    "OBJECTIVES", "CLIPLoss", "LongCLIPLoss", "ModularLoss", "RandomMaskLoss", "TrainingLoss", "build_objective",
    "logit_scale_of",
]
