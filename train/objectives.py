"""Training objectives: what `SmartCLIPTrainer.compute_loss` minimises, picked by name in `build_objective`.

An objective receives the model, its `SmartCLIPOutput` (computed without `return_loss`) and the batch, gathers the
features it needs from every rank (`gather_features`), and calls the pure loss functions of
`modeling_smartclip.losses`: the math lives there once, for the model's own `forward` and for the trainer alike.
A related method brings its own `TrainingLoss` subclass and hands an instance to `run_training` (see
`methods/setclip/`); the names below are the core trainer's `--objective` choices.
"""

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel

from modeling_smartclip import SmartCLIPConfig, SmartCLIPOutput, clip_loss, modular_loss
from modeling_smartclip.losses import LAMBDA_SPARSITY, scale_from_log, sparsity_penalty

from .distributed import gather_features, rank_offset


class TrainingLoss:
    """Base class. Class attributes tell the trainer how to set the model up for this loss.

    Attributes:
        trains_mask_head: whether the loss sends gradients to the mask head (if not, the head is frozen).
        trains_logit_scale: whether the loss uses the model's `logit_scale` (if not, it is frozen: DDP runs without
            searching for unused parameters, so every trainable one must get a gradient).
        scoring: the `SmartCLIPConfig.scoring` a model trained with this loss is saved with.
        config_loss_type: the `SmartCLIPConfig.loss_type` (what `forward(return_loss=True)` computes) saved with it.
        (The saved `SmartCLIPConfig.mask_head_trained` is `trains_mask_head`.)
        needs_text_masks: whether the loss reads `outputs.text_masks`; the trainer passes it to `forward` as
            `output_text_masks`, so the mask head runs only when it is used.
        needs_first_sentence: whether the batch must also hold each caption's first sentence; the collator then
            appends them to the captions (`CaptionCollator(first_sentence=True)`), so one text pass encodes both.

    The core objectives take `local_loss: bool = False`: with it, each rank scores only its own captions against all
    gathered images and its own images against all gathered captions (open_clip's `local_loss`), so per-rank loss
    memory and FLOPs are `O(local_batch x global_batch)` instead of `O(global_batch^2)`, with the same gradients as
    the global loss when ranks hold equal batches. Worth it from a few ranks up (the paper's 8 x 128) and needed
    for 32k global batches; in one process it changes nothing.
    """

    trains_mask_head: bool = False
    trains_logit_scale: bool = True
    scoring: str = "plain"
    config_loss_type: str = "clip"
    needs_text_masks: bool = True
    needs_first_sentence: bool = False

    @classmethod
    def from_arguments(cls, args, config: SmartCLIPConfig) -> "TrainingLoss":
        """The objective as `smartclip-train`'s `ModelArguments` (`args`) and the model's config configure it."""
        return cls(local_loss=args.local_loss)

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

    def __init__(self, lambda_align: float = 1.0, lambda_sparsity: float = LAMBDA_SPARSITY,
                 sparsity_reduction: str = "sum", local_loss: bool = False):
        self.lambda_align = lambda_align
        self.lambda_sparsity = lambda_sparsity
        self.sparsity_reduction = sparsity_reduction
        self.local_loss = local_loss

    @classmethod
    def from_arguments(cls, args, config: SmartCLIPConfig) -> "ModularLoss":
        return cls(config.lambda_align, config.lambda_sparsity, config.sparsity_reduction, args.local_loss)

    def masks(self, outputs: SmartCLIPOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """`(masks, probs)`, both `(local_batch, D)`: the head's hard masks and the sigmoids of the sparsity term."""
        return outputs.text_masks, outputs.text_mask_probs

    def __call__(self, model, outputs: SmartCLIPOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        masks, probs = self.masks(outputs)
        logit_scale = logit_scale_of(model)
        weights = (self.lambda_align, self.lambda_sparsity, self.sparsity_reduction)
        if not self.local_loss:
            text_embeds, image_embeds, masks, probs = gather_features(
                outputs.text_embeds, outputs.image_embeds, masks, probs
            )
            loss = modular_loss(text_embeds, image_embeds, masks, probs, logit_scale, *weights)
        else:
            all_text_embeds, all_image_embeds, all_masks = gather_features(
                outputs.text_embeds, outputs.image_embeds, masks
            )
            offset = rank_offset(len(masks), masks.device)
            loss = modular_loss(
                outputs.text_embeds, outputs.image_embeds, masks, probs, logit_scale, *weights,
                all_text_embeds, all_image_embeds, all_masks, offset,
            )
        return loss, {"mask_density": masks.detach().mean().item(), "logit_scale": logit_scale.exp().item()}


class RandomMaskLoss(ModularLoss):
    """Control: the modular loss with random masks instead of the head's, to show what a learned mask adds.

    Each step draws new Bernoulli masks, one per caption, of density `density`: pass the density of the trained
    SmartCLIP masks this run controls (`smartclip-compare` measures it). `None` reads the density of the head's
    current hard masks on each batch, which is only meaningful for a head that was trained
    (`config.mask_head_trained`); `from_arguments` refuses it otherwise. The head gets no gradient (it is frozen),
    and the sparsity term only adds a constant.
    """

    trains_mask_head = False
    scoring = "plain"
    config_loss_type = "clip"  # the head stays untrained, so `forward`'s loss is CLIP's

    def __init__(self, lambda_align: float = 1.0, lambda_sparsity: float = LAMBDA_SPARSITY,
                 sparsity_reduction: str = "sum", density: float | None = None, local_loss: bool = False):
        super().__init__(lambda_align, lambda_sparsity, sparsity_reduction, local_loss)
        if density is not None and not 0.0 <= density <= 1.0:
            raise ValueError(f"RandomMaskLoss: density={density}; expected a value in [0, 1] or None.")
        self.density = density
        self.needs_text_masks = density is None  # a given density never runs the head

    @classmethod
    def from_arguments(cls, args, config: SmartCLIPConfig) -> "RandomMaskLoss":
        if args.random_mask_density is None and not config.mask_head_trained:
            raise ValueError(
                "--objective random_mask needs --random_mask_density (the density of the trained SmartCLIP masks "
                "it controls): this model's mask head is untrained, so its own density says nothing."
            )
        return cls(config.lambda_align, config.lambda_sparsity, config.sparsity_reduction,
                   args.random_mask_density, args.local_loss)

    def masks(self, outputs: SmartCLIPOutput) -> tuple[torch.Tensor, torch.Tensor]:
        if self.density is None:
            density = float(outputs.text_masks.detach().mean())
        else:
            density = self.density
        random_masks = torch.bernoulli(torch.full_like(outputs.text_embeds, density))
        return random_masks, random_masks


class PairedMaskLoss(TrainingLoss):
    """The paper's "w.o. Modular" ablation (Fig. 5): each image is masked by its own caption's mask, then CLIP's
    loss compares the masked images with every caption.

    Unlike `ModularLoss`, caption a meets image b through caption b's mask, not its own, so a mask can make a pair
    recognisable by its mask pattern alone: the shortcut the paper's modular pairing removes. Scores plainly after
    training (an unpaired image has no caption to take a mask from).
    """

    trains_mask_head = True
    config_loss_type = "clip"

    def __init__(self, lambda_sparsity: float = LAMBDA_SPARSITY, sparsity_reduction: str = "sum",
                 local_loss: bool = False):
        self.lambda_sparsity = lambda_sparsity
        self.sparsity_reduction = sparsity_reduction
        self.local_loss = local_loss
        self.contrastive = CLIPLoss(local_loss)  # scores the masked images

    @classmethod
    def from_arguments(cls, args, config: SmartCLIPConfig) -> "PairedMaskLoss":
        return cls(config.lambda_sparsity, config.sparsity_reduction, args.local_loss)

    def __call__(self, model, outputs: SmartCLIPOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        masked_images = F.normalize(outputs.image_embeds * outputs.text_masks, dim=-1)  # (b, D)
        penalty = self.lambda_sparsity * sparsity_penalty(outputs.text_mask_probs, self.sparsity_reduction)
        paired = SmartCLIPOutput(text_embeds=outputs.text_embeds, image_embeds=masked_images)
        loss, logs = self.contrastive(model, paired, batch)
        return loss + penalty, logs | {"mask_density": outputs.text_masks.detach().mean().item()}


class LongCLIPLoss(TrainingLoss):
    """Long-CLIP's objective (Zhang et al., ECCV 2024): CLIP's loss on (image, long caption) plus CLIP's loss on
    (the image's principal components, the caption's first sentence), both with label smoothing.

    The coarse image features keep the top `pca_dim` principal components of the batch's unit image embeddings,
    with the mean added back and renormalised ("primary component matching", `PCA` and `forward` in
    github.com/beichenzbc/Long-CLIP/blob/main/model/model_longclip.py), so a one-sentence caption is matched with
    the images' main directions rather than with every detail. Gradients flow through the decomposition, as there.
    Unlike Long-CLIP, which decomposes each GPU's own batch, the components come from the gathered global batch, so
    the loss does not depend on how the batch is split over ranks.

    The batch holds each caption's first sentence after the captions (`needs_first_sentence`), so `forward`'s
    one text pass encodes both: `outputs.text_embeds` is `(2 * local_batch, D)`, long captions first. With
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
        images = len(outputs.image_embeds)
        if len(outputs.text_embeds) != 2 * images:
            raise ValueError(
                f"the longclip objective needs each caption's first sentence after the captions ({2 * images} texts "
                f"for {images} images); got {len(outputs.text_embeds)}. Build the collator with "
                "CaptionCollator(..., first_sentence=True)."
            )
        text_embeds, short_embeds = outputs.text_embeds[:images], outputs.text_embeds[images:]  # (local_batch, D)
        all_text_embeds, all_image_embeds, all_short_embeds = gather_features(
            text_embeds, outputs.image_embeds, short_embeds
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
            loss_long = clip_loss(text_embeds, outputs.image_embeds, logit_scale, all_text_embeds,
                                  all_image_embeds, offset, smoothing)
            loss_short = clip_loss(short_embeds, coarse_embeds, logit_scale, all_short_embeds, all_coarse_embeds,
                                   offset, smoothing)
        logs = {"loss_long": loss_long.item(), "loss_short": loss_short.item(),
                "logit_scale": scale_from_log(logit_scale).item()}
        return loss_long + loss_short, logs


# The core trainer's `--objective` choices: the one place a name picks an objective.
OBJECTIVES: dict[str, type[TrainingLoss]] = {
    "smartclip": ModularLoss,
    "clip": CLIPLoss,
    "random_mask": RandomMaskLoss,
    "paired_mask": PairedMaskLoss,
    "longclip": LongCLIPLoss,
}


def build_objective(name: str, **kwargs) -> TrainingLoss:
    """The core objective `name` (a key of `OBJECTIVES`), constructed with `kwargs`."""
    if name not in OBJECTIVES:
        raise ValueError(f"objective {name!r}; expected one of {tuple(OBJECTIVES)}.")
    return OBJECTIVES[name](**kwargs)


__all__ = [
    "OBJECTIVES", "CLIPLoss", "LongCLIPLoss", "ModularLoss", "PairedMaskLoss", "RandomMaskLoss", "TrainingLoss",
    "build_objective", "logit_scale_of",
]
