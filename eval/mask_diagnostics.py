"""Concept-level diagnostics: do SmartCLIP's masks pick concepts, and are the image embedding's coordinates aligned
with the scenes' concepts? Each number is defined in docs/mask_diagnostics.md.

The pure functions take tensors; `diagnose` computes every diagnostic of a `MaskDiagnosticsSet` (the built-in scenes'
test objects) from the image embeddings and a function that gives captions' masks, and `mask_diagnostics` does both
encodings for a model. The captions are built from each object's attributes (its sentence and its attribute-level
captions, `smartclip_data.scenes`), so the diagnostics are the same for scenes generated with or without
`partial_captions`.
"""

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from datasets import Dataset

from modeling_smartclip import SmartCLIPModel
from modeling_smartclip.retrieval import encode_gallery, encode_texts
from smartclip_data.scenes import ATTRIBUTES, COLOURS, SHAPES, SLOTS, describe, describe_attribute

# The mask-bit factors of the variance shares, and the caption forms of one object (its sentence, then one caption
# per attribute).
FACTORS = ("slot", "shape", "colour", "size")
FORMS = ("sentence", *ATTRIBUTES)
# Rotations averaged in the alignment's random-rotation baseline.
ROTATIONS = 5


# ----- pure functions on tensors ----------------------------------------------------------------------------------


def density_ratio(long_masks: torch.Tensor, sentence_masks: torch.Tensor) -> float:
    """Mean density of the long captions' masks over that of the one-sentence masks; `(n_long, D)` and
    `(n_sentence, D)` in {0, 1}. NaN when the sentence masks are all off."""
    sentence = sentence_masks.float().mean().item()
    return long_masks.float().mean().item() / sentence if sentence > 0 else math.nan


def jaccard(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """`(n,)` Jaccard index of each row of `first` with the same row of `second`, both `(n, D)` in {0, 1}; two empty
    masks count as 1 (they switch on the same, empty, set)."""
    first, second = first.float(), second.float()
    both = (first * second).sum(dim=1)
    either = first.sum(dim=1) + second.sum(dim=1) - both
    return torch.where(either > 0, both / either.clamp_min(1), 1.0)


def variance_share(masks: torch.Tensor, groups: torch.Tensor) -> float:
    """Share of the mask bits' variance explained by a factor: `sum_d B_d / sum_d V_d`, where for dimension d,
    `V_d` is the variance of the bit over the `n` masks and `B_d = sum_g (n_g / n) (mean_g - mean)^2` its
    between-group variance for the factor's groups, i.e. the per-dimension share `B_d / V_d` averaged with weights
    `V_d`. masks: `(n, D)` in {0, 1}; groups: `(n,)` long, each mask's level of the factor. NaN when no bit varies or
    the factor has a single level."""
    masks = masks.float()
    levels, group = torch.unique(groups, return_inverse=True)
    total = masks.var(dim=0, unbiased=False).sum()
    if len(levels) < 2 or total == 0:
        return math.nan
    counts = torch.bincount(group, minlength=len(levels)).to(masks)  # (n_level,)
    sums = torch.zeros(len(levels), masks.shape[1], dtype=masks.dtype, device=masks.device).index_add_(
        0, group.to(masks.device), masks
    )
    means = sums / counts[:, None]  # (n_level, D)
    between = (counts[:, None] / len(masks) * (means - masks.mean(dim=0)).square()).sum()
    return (between / total).item()


def _standardised(values: torch.Tensor) -> torch.Tensor:
    """Columns of `(n, k)` `values` centred and scaled to unit variance; a constant column becomes zeros."""
    values = values.double() - values.double().mean(dim=0)
    scale = values.square().mean(dim=0).sqrt()
    return values / torch.where(scale > 0, scale, 1.0)


def concept_alignment(embeds: torch.Tensor, indicators: torch.Tensor) -> float:
    """`mean_d max_k |corr(embeds[:, d], indicators[:, k])|`: how well each coordinate of the embedding follows one
    concept. embeds: `(n, D)`; indicators: `(n, K)` in {0, 1}, a concept's presence in each of the `n` images. A
    constant coordinate or indicator has correlation 0."""
    correlation = _standardised(embeds).T @ _standardised(indicators) / len(embeds)  # (D, K)
    return correlation.abs().amax(dim=1).mean().item()


def random_rotations(dim: int, count: int, seed: int = 0) -> torch.Tensor:
    """`(count, dim, dim)` orthogonal matrices drawn uniformly (Haar), reproducibly from `seed`: the QR factor of a
    Gaussian matrix with the signs of R's diagonal moved into Q (Mezzadri 2007, arXiv math-ph/0609050)."""
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(count, dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]


def rotation_baseline(embeds: torch.Tensor, indicators: torch.Tensor, rotations: int = ROTATIONS, seed: int = 0) -> float:
    """`concept_alignment` of `embeds @ R`, averaged over `rotations` random orthogonal `R` (`random_rotations`):
    what the score is for the same information in coordinates that owe nothing to the concepts."""
    embeds = embeds.double().cpu()
    return sum(
        concept_alignment(embeds @ rotation, indicators.cpu()) for rotation in random_rotations(embeds.shape[1], rotations, seed)
    ) / rotations


# ----- the scenes' objects ----------------------------------------------------------------------------------------


@dataclass
class MaskDiagnosticsSet:
    """The built-in scenes' test images and their objects, for `diagnose`.

    images: `n_image` images (shared with the split's other sets, so they are encoded once).
    long_captions: `n_image` long captions.
    objects: for each image, its objects (`{"shape", "colour", "size", "slot"}`, size None in scenes without sizes).
    """

    name: str
    images: Sequence
    long_captions: list[str]
    objects: list[list[dict]]


def diagnostics_set(test_split: Dataset, name: str = "scenes", images: Sequence | None = None) -> MaskDiagnosticsSet:
    """The `MaskDiagnosticsSet` of a scenes split (from `make_scenes`); `images` may pass its image column already in
    use, so it is encoded once."""
    images = test_split["image"] if images is None else images
    return MaskDiagnosticsSet(name, images, list(test_split["long_caption"]), [list(o) for o in test_split["objects"]])


def _caption(obj: dict, form: str) -> str:
    return describe(obj) if form == "sentence" else describe_attribute(obj, form)


def _indicators(objects: list[list[dict]], factor: str) -> torch.Tensor:
    """`(n_image, K)` presence of each concept of `factor`: an object at each slot (K = 4), or each (slot, colour) /
    (slot, shape) pair (K = 16)."""
    values = {"slot": [None], "colour": list(COLOURS), "shape": list(SHAPES)}[factor]
    concepts = {(slot, value): k for k, (slot, value) in enumerate(itertools.product(SLOTS, values))}
    present = torch.zeros(len(objects), len(concepts))
    for image, scene in enumerate(objects):
        for obj in scene:
            present[image, concepts[obj["slot"], None if factor == "slot" else obj[factor]]] = 1
    return present


def _distinct_masks(masks_of: Callable[[list[str]], torch.Tensor], captions: list[str]) -> torch.Tensor:
    """`(n_caption, D)` masks of `captions`, each distinct caption encoded once (objects repeat across scenes)."""
    distinct = list(dict.fromkeys(captions))
    masks = masks_of(distinct).float()
    position = {caption: i for i, caption in enumerate(distinct)}
    return masks[torch.tensor([position[caption] for caption in captions], device=masks.device)]


def _mask_diagnostics(masks_of: Callable[[list[str]], torch.Tensor], eval_set: MaskDiagnosticsSet) -> dict[str, float]:
    objects = [obj for scene in eval_set.objects for obj in scene]
    image_of = [image for image, scene in enumerate(eval_set.objects) for _ in scene]
    forms = [form for form in FORMS if form != "size" or all(obj["size"] is not None for obj in objects)]
    captions = [_caption(obj, form) for obj in objects for form in forms]
    masks = _distinct_masks(masks_of, captions).reshape(len(objects), len(forms), -1)  # (n_object, n_form, D)
    sentence_masks = masks[:, 0]

    # Pairs of different forms: of one object, and of two objects of one image (each ordered form pair, so both
    # means hold every pair of forms in the same proportions and differ only in whether the object is shared).
    form_pairs = list(itertools.combinations(range(len(forms)), 2))
    same = torch.cat([jaccard(masks[:, f], masks[:, g]) for f, g in form_pairs])
    partial = torch.cat([jaccard(masks[:, f], masks[:, g]) for f, g in form_pairs if f > 0])
    pairs = [(a, b) for a, b in itertools.combinations(range(len(objects)), 2) if image_of[a] == image_of[b]]
    if not pairs:
        raise ValueError(f"{eval_set.name}: no image holds two objects; expected scenes of 2-4 objects.")
    first, second = (torch.tensor(side, dtype=torch.long, device=masks.device) for side in zip(*pairs))
    different = torch.cat([
        jaccard(masks[first, f], masks[second, g]) for f, g in itertools.permutations(range(len(forms)), 2)
    ])

    results = {
        "density_ratio": density_ratio(_distinct_masks(masks_of, eval_set.long_captions), sentence_masks),
        "jaccard_same_object": same.mean().item(),
        "jaccard_different_object": different.mean().item(),
        "jaccard_shared_slot_only": partial.mean().item(),
    }
    for factor in FACTORS:
        levels = {value: i for i, value in enumerate(dict.fromkeys(obj[factor] for obj in objects))}
        groups = torch.tensor([levels[obj[factor]] for obj in objects])
        results[f"variance_share_{factor}"] = variance_share(sentence_masks, groups)
    return results


def diagnose(
    image_embeds: torch.Tensor,
    masks_of: Callable[[list[str]], torch.Tensor] | None,
    eval_set: MaskDiagnosticsSet,
    rotations: int = ROTATIONS,
    seed: int = 0,
) -> dict[str, float]:
    """Every diagnostic of `eval_set` (keys and definitions: docs/mask_diagnostics.md).

    image_embeds: `(n_image, D)`, the embeddings of `eval_set.images` in order.
    masks_of: captions -> `(n_caption, D)` masks in {0, 1}; None leaves the mask diagnostics out (a model whose mask
        head was never trained), keeping only the image embedding's alignment.
    """
    if len(image_embeds) != len(eval_set.objects):
        raise ValueError(
            f"{eval_set.name}: {len(image_embeds)} image embeddings for {len(eval_set.objects)} scenes; expected one "
            "per scene, in order."
        )
    results = _mask_diagnostics(masks_of, eval_set) if masks_of is not None else {}
    for factor in ("slot", "colour", "shape"):
        indicators = _indicators(eval_set.objects, factor)
        results[f"alignment_{factor}"] = concept_alignment(image_embeds, indicators.to(image_embeds.device))
        results[f"alignment_{factor}_rotated"] = rotation_baseline(image_embeds, indicators, rotations, seed)
    return results


@torch.no_grad()
def mask_diagnostics(
    model: SmartCLIPModel,
    processor,
    scenes: Dataset,
    batch_size: int = 64,
    masks: bool | None = None,
    rotations: int = ROTATIONS,
    seed: int = 0,
) -> dict[str, float]:
    """`diagnose` for `model` on a scenes split (e.g. `make_scenes(...)["test"]`), the images and captions encoded
    in batches of `batch_size` with `modeling_smartclip.retrieval`'s encoders, in eval mode.

    masks: whether to compute the mask diagnostics; default: when the model's mask head was trained
        (`config.mask_head_trained`), as `smartclip-eval` scores modularly only then.
    """
    masks = model.config.mask_head_trained if masks is None else masks
    eval_set = diagnostics_set(scenes)
    was_training = model.training
    model.eval()
    try:
        gallery = encode_gallery(model, list(eval_set.images), batch_size, processor=processor)
        masks_of = (lambda texts: encode_texts(model, texts, batch_size=batch_size, processor=processor).text_masks)
        return diagnose(gallery.image_embeds, masks_of if masks else None, eval_set, rotations, seed)
    finally:
        model.train(was_training)


__all__ = [
    "FACTORS", "FORMS", "MaskDiagnosticsSet", "concept_alignment", "density_ratio", "diagnose", "diagnostics_set",
    "jaccard", "mask_diagnostics", "random_rotations", "rotation_baseline", "variance_share",
]
