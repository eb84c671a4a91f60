"""Robust zero-shot classification: top-1 accuracy under an l_inf attack next to clean top-1, under either scoring.

The attacks are torchattacks' `PGD` and `APGD` (github.com/Harry24k/adversarial-attacks-pytorch, release 3.3.0). They
work in `[0, 1]` pixel space on a model that returns class logits, so `ZeroShotClassifier` wraps a SmartCLIP (or a
converted CLIP) as one: `[0, 1]` pixels -> the processor's normalisation -> image embedding -> scores against the
class prompts' embeddings (plain or modular) -> logits. An `eps` of 4/255 therefore means 4 grey levels of the
image a user sees, whatever the processor's mean and std.

`robust_zeroshot` returns, per scoring, `{"<set>/acc1_<attack>_eps<k>": ...}` with the budget in grey levels
(`eps_name`: 4/255 is `eps4`), e.g. `"scenes_zeroshot/acc1_pgd_eps4"`, beside the clean `"scenes_zeroshot/acc1"` of
`evaluate_model`; `smartclip-eval --attack` merges them into its results under each scoring.
`PixelNormalisation` and `parse_eps` are shared with the Sim-CLIP training attack (`smartclip_methods.simclip`).
"""

import math
from collections.abc import Sequence
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from modeling_smartclip import SmartCLIPModel
from modeling_smartclip.configuration_smartclip import SCORINGS
from modeling_smartclip.masking import similarity
from modeling_smartclip.retrieval import EncodedTexts
from smartclip_data.sources import load_image

from .evaluate import _Encoder, class_prompts
from .metrics import classification_metrics
from .sets import ClassificationSet

ATTACKS = ("pgd", "apgd")
# PGD's step size as a multiple of eps / steps: the steps together span 2.5 eps, so a random start on the ball's edge
# can still cross the whole ball (2 eps) with room to spare.
PGD_STEP_FACTOR = 2.5
MAX_LOGIT_SCALE = 100.0  # as `SmartCLIPModel.forward` caps it


# ----- pixels and flags -------------------------------------------------------------------------------------------


class PixelNormalisation(nn.Module):
    """The processor's normalisation as a module: `(B, 3, H, W)` pixels in `[0, 1]` -> `(x - mean) / std`, the
    `pixel_values` the model reads; `inverse` maps them back."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    @classmethod
    def from_processor(cls, processor) -> "PixelNormalisation":
        """From a `SmartCLIPProcessor` / `CLIPProcessor` (its image processor's `image_mean`, `image_std`)."""
        image_processor = processor.image_processor
        return cls(image_processor.image_mean, image_processor.image_std)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean.to(pixels)) / self.std.to(pixels)

    def inverse(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return pixel_values * self.std.to(pixel_values) + self.mean.to(pixel_values)


def parse_eps(text: str, flag: str = "--eps") -> float:
    """`"4/255"` -> 4/255, `"0.01"` -> 0.01; a one-line `ValueError` naming `flag` for anything else or a negative."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{flag} {text!r}: expected a number or a fraction such as 4/255.") from None
    if value < 0 or not math.isfinite(value):
        raise ValueError(f"{flag} {text!r}: expected a budget >= 0.")
    return value


def eps_name(eps: float) -> str:
    """How a budget appears in metric names: in grey levels (units of 1/255), `4/255` -> `"eps4"`."""
    return f"eps{round(eps * 255, 6):g}"


def check_attack(eps: float, steps: int, step_size: float | None = None, where: str = "attack") -> None:
    """One-line `ValueError`s for budgets that cannot be an attack: eps < 0, steps < 1 or a step size <= 0 with
    eps > 0."""
    if eps < 0:
        raise ValueError(f"{where}: eps={eps}; expected eps >= 0.")
    if eps > 0 and steps < 1:
        raise ValueError(f"{where}: steps={steps} with eps={eps}; an attack needs steps >= 1.")
    if eps > 0 and step_size is not None and step_size <= 0:
        raise ValueError(f"{where}: step size {step_size} with eps={eps}; expected a step size > 0.")


# ----- the classifier the attacks see -----------------------------------------------------------------------------


class ZeroShotClassifier(nn.Module):
    """`[0, 1]` pixels `(B, 3, H, W)` -> class logits `(B, n_class)`: the model's image embedding scored against the
    class prompts' embeddings under `scoring`, times the model's logit scale (capped at 100).

    Args:
        model: a `SmartCLIPModel` (its image tower is attacked; its weights are not changed).
        classes: `(n_class, D)` unit-norm class embeddings and masks, as `smartclip_eval`'s `class_prompts` builds them.
        normalisation: the processor's `PixelNormalisation`.
        scoring: `"plain"` or `"modular"`.
    """

    def __init__(self, model: SmartCLIPModel, classes: EncodedTexts, normalisation: PixelNormalisation, scoring: str):
        super().__init__()
        if scoring not in SCORINGS:
            raise ValueError(f"scoring={scoring!r}; expected one of {SCORINGS}.")
        self.model, self.normalisation, self.scoring = model, normalisation, scoring
        self.register_buffer("class_embeds", classes.text_embeds.float(), persistent=False)
        masks = classes.text_masks
        self.register_buffer("class_masks", None if masks is None else masks.float(), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        model = self.model
        features = model.get_image_features(self.normalisation(pixels).to(model.dtype)).pooler_output
        image_embeds = F.normalize(features.float(), dim=-1)  # (B, D)
        scale = model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE).float()
        return scale * similarity(self.class_embeds, image_embeds, self.class_masks, self.scoring).T  # (B, n_class)


def make_attack(name: str, classifier: nn.Module, eps: float, steps: int):
    """torchattacks' untargeted l_inf `PGD` (random start, step `PGD_STEP_FACTOR * eps / steps`) or `APGD`
    (cross-entropy, one restart) on `classifier`."""
    import torchattacks  # only the attacked evaluation needs it

    if name == "pgd":
        alpha = PGD_STEP_FACTOR * eps / steps
        return torchattacks.PGD(classifier, eps=eps, alpha=alpha, steps=steps, random_start=True)
    if name == "apgd":
        return torchattacks.APGD(classifier, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss="ce", seed=0)
    raise ValueError(f"--attack {name!r}; expected one of {ATTACKS}.")


def attack_batch(classifier: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, attack: str, eps: float,
                 steps: int) -> torch.Tensor:
    """`(B, 3, H, W)` adversarial pixels of `pixels` (in `[0, 1]`) against `classifier` for the true `labels` `(B,)`.
    torchattacks reseeds the global generator (APGD), so the attack runs in a fork of it, seeded with 0."""
    check_attack(eps, steps, where=f"--attack {attack}")
    devices = [pixels.device] if pixels.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.enable_grad():
        torch.manual_seed(0)
        return make_attack(attack, classifier, eps, steps)(pixels, labels).detach()


def robust_zeroshot(
    model: SmartCLIPModel,
    processor,
    eval_set: ClassificationSet,
    scorings: Sequence[str],
    attack: str,
    eps: Sequence[float],
    steps: int,
    batch_size: int = 64,
) -> dict[str, dict[str, float]]:
    """`{scoring: {"<set>/acc1_<attack>_eps<k>": top-1 under attack, ...}}` for each scoring and budget in `eps`.

    The images are read and processed one batch at a time (as `processor` does for the clean evaluation), mapped back
    to `[0, 1]`, attacked through `ZeroShotClassifier` and scored with `classification_metrics`, the clean
    evaluation's. An image that cannot be read is an error here (the clean evaluation skips it).
    """
    if attack not in ATTACKS:
        raise ValueError(f"--attack {attack!r}; expected one of {ATTACKS}.")
    for budget in eps:
        check_attack(budget, steps, where=f"--attack {attack}")
    normalisation = PixelNormalisation.from_processor(processor).to(model.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            classes = class_prompts(_Encoder(model, processor, batch_size), eval_set)
        classifiers = {s: ZeroShotClassifier(model, classes, normalisation, s).to(model.device) for s in scorings}
        logits = {(scoring, budget): [] for scoring in scorings for budget in eps}
        for start in range(0, len(eval_set.images), batch_size):
            images = [load_image(value) for value in eval_set.images[start : start + batch_size]]
            pixel_values = processor(images=images, return_tensors="pt")["pixel_values"].to(model.device)
            pixels = normalisation.inverse(pixel_values.float()).clamp(0, 1)  # (B, 3, H, W)
            labels = eval_set.labels[start : start + batch_size].to(model.device)
            for (scoring, budget), chunks in logits.items():
                adversarial = attack_batch(classifiers[scoring], pixels, labels, attack, budget, steps)
                with torch.no_grad():
                    chunks.append(classifiers[scoring](adversarial))  # (B, n_class)
    finally:
        model.train(was_training)
    labels = eval_set.labels.to(model.device)
    results: dict[str, dict[str, float]] = {scoring: {} for scoring in scorings}
    for (scoring, budget), chunks in logits.items():
        accuracy = classification_metrics(torch.cat(chunks).T, labels)["acc1"]
        results[scoring][f"{eval_set.name}/acc1_{attack}_{eps_name(budget)}"] = accuracy
    return results


def robust_evaluation(model: SmartCLIPModel, processor, eval_sets: Sequence, scorings: Sequence[str], attack: str,
                      eps: Sequence[float], steps: int, batch_size: int = 64) -> dict[str, dict[str, float]]:
    """`robust_zeroshot` of every zero-shot set among `eval_sets` (the others have no class to attack), merged per
    scoring: the layout of `evaluate_model`'s results, which the command merges them into."""
    results: dict[str, dict[str, float]] = {scoring: {} for scoring in scorings}
    for eval_set in eval_sets:
        if isinstance(eval_set, ClassificationSet):
            for scoring, metrics in robust_zeroshot(model, processor, eval_set, scorings, attack, eps, steps,
                                                    batch_size).items():
                results[scoring].update(metrics)
    return results


__all__ = [
    "ATTACKS", "PixelNormalisation", "ZeroShotClassifier", "attack_batch", "check_attack", "eps_name", "make_attack",
    "parse_eps", "robust_evaluation", "robust_zeroshot",
]
