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

from .distributed import gather_features


class TrainingLoss:
    """Base class. Class attributes tell the trainer how to set the model up for this loss.

    Attributes:
        trains_mask_head: whether the loss sends gradients to the mask head (if not, the head is frozen).
        scoring: the `SmartCLIPConfig.scoring` a model trained with this loss is saved with.
        config_loss_type: the `SmartCLIPConfig.loss_type` (what `forward(return_loss=True)` computes) saved with it.
        (The saved `SmartCLIPConfig.mask_head_trained` is `trains_mask_head`.)
    """

    trains_mask_head: bool = False
    scoring: str = "plain"
    config_loss_type: str = "clip"

    def __call__(self, model, outputs: SmartCLIPOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Returns the scalar loss of the global batch and a few numbers to log."""
        raise NotImplementedError


def logit_scale_of(model) -> torch.Tensor:
    """The log-temperature parameter of a model that may be wrapped (DDP, `torch.compile`)."""
    return extract_model_from_parallel(model).logit_scale


class CLIPLoss(TrainingLoss):
    """CLIP's symmetric contrastive loss on unmasked embeddings: the baseline, with the same towers and script."""

    def __call__(self, model, outputs: SmartCLIPOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        text_embeds, image_embeds = gather_features(outputs.text_embeds, outputs.image_embeds)
        logit_scale = logit_scale_of(model)
        return clip_loss(text_embeds, image_embeds, logit_scale), {"logit_scale": logit_scale.exp().item()}


class ModularLoss(TrainingLoss):
    """SmartCLIP's loss (Eq. 9): each caption compares every image through the caption's own mask."""

    trains_mask_head = True
    scoring = "modular"
    config_loss_type = "smartclip"

    def __init__(self, lambda_align: float = 1.0, lambda_sparsity: float = 0.01):
        self.lambda_align = lambda_align
        self.lambda_sparsity = lambda_sparsity

    def masks(self, outputs: SmartCLIPOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """`(masks, probs)`, both `(local_batch, D)`: the head's hard masks and the sigmoids of the sparsity term."""
        return outputs.text_masks, outputs.text_mask_probs

    def __call__(self, model, outputs: SmartCLIPOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        masks, probs = self.masks(outputs)
        text_embeds, image_embeds, masks, probs = gather_features(
            outputs.text_embeds, outputs.image_embeds, masks, probs
        )
        logit_scale = logit_scale_of(model)
        loss = modular_loss(
            text_embeds, image_embeds, masks, probs, logit_scale, self.lambda_align, self.lambda_sparsity
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

    def __init__(self, lambda_align: float = 1.0, lambda_sparsity: float = 0.01, density: float | None = None):
        super().__init__(lambda_align, lambda_sparsity)
        if density is not None and not 0.0 <= density <= 1.0:
            raise ValueError(f"RandomMaskLoss: density={density}; expected a value in [0, 1] or None.")
        self.density = density

    def masks(self, outputs: SmartCLIPOutput) -> tuple[torch.Tensor, torch.Tensor]:
        head_masks = outputs.text_masks.detach()
        density = head_masks.mean() if self.density is None else self.density
        random_masks = torch.bernoulli(torch.full_like(head_masks, float(density)))
        return random_masks, random_masks


OBJECTIVES = ("smartclip", "clip", "random_mask")


def build_objective(name: str, **kwargs) -> TrainingLoss:
    """The core objective `name` (one of `OBJECTIVES`), constructed with `kwargs`."""
    if name == "smartclip":
        return ModularLoss(**kwargs)
    elif name == "clip":
        return CLIPLoss(**kwargs)
    elif name == "random_mask":
        return RandomMaskLoss(**kwargs)
    raise ValueError(f"objective {name!r}; expected one of {OBJECTIVES}.")


__all__ = [
    "OBJECTIVES", "CLIPLoss", "ModularLoss", "RandomMaskLoss", "TrainingLoss", "build_objective", "logit_scale_of",
]
