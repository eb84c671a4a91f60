"""Sim-CLIP's objective: the student's embedding of an attacked image is pulled to the frozen teacher's embedding of
the clean image.

As released (github.com/speedlab-git/SimCLIP at 2388a87, `train/adversarial_training_simclip.py`), the loss is
`-cos(E(x_adv), sg(E_0(x)))`, with `E_0` a frozen copy of the starting vision tower and projection and `x_adv` from
`pgd_embedding_attack` (the release writes it as half of a symmetric sum whose other half has no gradient). The
paper's symmetric siamese term on the student's own clean embedding, `-cos(E(x), sg(E(x_adv)))`, and a clean term
`-cos(E(x), sg(E_0(x)))` (FARE's `clean_weight`) are optional and off by default, as released.
"""

import copy

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from torch import nn

from modeling_smartclip import SmartCLIPModel, SmartCLIPOutput
from smartclip_eval.robust import PixelNormalisation, check_attack
from smartclip_train.objectives import TrainingLoss

from .attack import pgd_embedding_attack


class ImageEncoder(nn.Module):
    """A vision tower and its projection: `(B, 3, H, W)` normalised `pixel_values` -> `(B, D)` projected features, not
    normalised (`SmartCLIPModel.get_image_features(...).pooler_output`)."""

    def __init__(self, vision_model: nn.Module, visual_projection: nn.Module):
        super().__init__()
        self.vision_model, self.visual_projection = vision_model, visual_projection

    @classmethod
    def frozen_copy(cls, model: SmartCLIPModel) -> "ImageEncoder":
        """A copy of `model`'s vision tower and projection that takes no gradient, in eval mode."""
        teacher = cls(copy.deepcopy(model.vision_model), copy.deepcopy(model.visual_projection))
        return teacher.requires_grad_(False).eval()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)


def negative_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`-mean_i cos(a_i, b_i)` of two `(B, D)` tensors."""
    return -F.cosine_similarity(a, b, dim=-1).mean()


class SimCLIPLoss(TrainingLoss):
    """`-cos(E(x_adv), sg(E_0(x))) + w_sym (-cos(E(x), sg(E(x_adv)))) + w_clean (-cos(E(x), sg(E_0(x))))`.

    The teacher `E_0` lives here, not in the model, so the saved folder is the student alone; it moves to the
    batch's device on first use. The attack runs on the bare model in eval mode (as released), on `[0, 1]` pixels
    recovered from the batch's `pixel_values` with the processor's `normalisation` (clipped to `[0, 1]`, against a
    processor's rounding); with `eps == 0` the student reads the batch's own `pixel_values`. The loss is a mean over images of per-image terms, so under several processes
    the mean of the ranks' losses (and DDP's mean of their gradients) is the loss of the global batch: no gather.

    Only the vision tower and its projection get gradients: the text tower's outputs and `logit_scale` are never
    read and the mask head never runs (`needs_text_masks = False`); `smartclip-train-simclip` freezes them all.
    `scoring`, `config_loss_type` and `trains_mask_head` are the starting model's (`from_model`), so the saved config
    still says how it scores and whether its head was trained (the command freezes the head either way).

    Args:
        teacher: the frozen `ImageEncoder` (`ImageEncoder.frozen_copy` of the starting model).
        normalisation: the processor's `PixelNormalisation`.
        eps, steps, step_size, momentum, random_start: `pgd_embedding_attack`'s (the released 4/255, 10, 1/255, 0.9,
            True).
        symmetric_weight, clean_weight: weights of the optional terms (0: off).
    """

    needs_text_masks = False
    trains_logit_scale = False

    def __init__(
        self,
        teacher: ImageEncoder,
        normalisation: PixelNormalisation,
        eps: float = 4 / 255,
        steps: int = 10,
        step_size: float = 1 / 255,
        momentum: float = 0.9,
        random_start: bool = True,
        symmetric_weight: float = 0.0,
        clean_weight: float = 0.0,
        scoring: str = "plain",
        config_loss_type: str = "clip",
        trains_mask_head: bool = False,
    ):
        check_attack(eps, steps, step_size, where="SimCLIPLoss")
        if symmetric_weight < 0 or clean_weight < 0:
            raise ValueError(
                f"SimCLIPLoss: symmetric_weight={symmetric_weight}, clean_weight={clean_weight}; expected weights >= 0."
            )
        if not 0 <= momentum < 1:
            raise ValueError(f"SimCLIPLoss: momentum={momentum}; expected a value in [0, 1).")
        if any(param.requires_grad for param in teacher.parameters()):
            raise ValueError("SimCLIPLoss: the teacher must be frozen; build it with ImageEncoder.frozen_copy.")
        self.teacher, self.normalisation = teacher, normalisation
        self.attack = dict(eps=eps, steps=steps, step_size=step_size, momentum=momentum, random_start=random_start)
        self.symmetric_weight, self.clean_weight = symmetric_weight, clean_weight
        self.scoring, self.config_loss_type, self.trains_mask_head = scoring, config_loss_type, trains_mask_head

    @classmethod
    def from_model(cls, model: SmartCLIPModel, processor, **kwargs) -> "SimCLIPLoss":
        """The loss whose teacher is a frozen copy of `model`'s image encoder, normalised as `processor` does."""
        config = model.config
        return cls(
            ImageEncoder.frozen_copy(model), PixelNormalisation.from_processor(processor), scoring=config.scoring,
            config_loss_type=config.loss_type, trains_mask_head=config.mask_head_trained, **kwargs,
        )

    def adversarial_values(
        self, model: SmartCLIPModel, pixel_values: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """`(B, 3, H, W)` normalised `pixel_values` of the attacked images (the batch's own when eps is 0)."""
        if self.attack["eps"] == 0:
            return pixel_values
        was_training = model.training
        model.eval()
        try:
            adversarial = pgd_embedding_attack(
                lambda pixels: model.get_image_features(self.normalisation(pixels)).pooler_output,
                self.normalisation.inverse(pixel_values).clamp(0, 1), target, **self.attack,
            )
        finally:
            model.train(was_training)
        return self.normalisation(adversarial)

    def __call__(
        self, model: nn.Module, outputs: SmartCLIPOutput, batch: dict
    ) -> tuple[torch.Tensor, dict[str, float]]:
        model = extract_model_from_parallel(model)  # the attack and the adversarial pass call the bare model
        pixel_values = batch["pixel_values"].to(outputs.image_embeds.device)
        self.teacher.to(pixel_values.device)
        with torch.no_grad():
            target = self.teacher(pixel_values.to(self.teacher.visual_projection.weight.dtype))  # (B, D)
        adversarial = model.get_image_features(self.adversarial_values(model, pixel_values, target)).pooler_output
        terms = {"adversarial": (1.0, negative_cosine(adversarial, target))}
        clean = outputs.image_embeds  # (B, D) the student's clean embeddings, unit norm (cosine ignores the norm)
        if self.symmetric_weight > 0:
            terms["symmetric"] = (self.symmetric_weight, negative_cosine(clean, adversarial.detach()))
        if self.clean_weight > 0:
            terms["clean"] = (self.clean_weight, negative_cosine(clean, target))
        loss = sum(weight * value for weight, value in terms.values())
        logs = {f"loss_{name}": value.item() for name, (_, value) in terms.items()}
        logs["cos_clean_to_teacher"] = F.cosine_similarity(clean.detach(), target, dim=-1).mean().item()
        return loss, logs


__all__ = ["ImageEncoder", "SimCLIPLoss", "negative_cosine"]
