"""The evaluation engine behind `smartclip-eval` (`cli.py`): retrieval, zero-shot, the atomic-concept probe and mask
statistics, under plain and modular scoring, side by side.

`evaluate_model` returns a dict keyed first by scoring, then by `"{set}/{metric}"`:

    {"plain":   {"scenes_long/image_retrieval_recall@1": 0.21, ..., "scenes_zeroshot/acc1": 0.4,
                 "scenes_atomic/acc": 0.53},
     "modular": {...same keys...},
     "mask_stats": {"scenes/density_long": 0.40, "scenes/density_sentence": 0.21, "scenes/sentence_in_long": 0.85,
                    "scenes/sentence_overlap": 0.30},
     "mask_diagnostics": {"scenes/density_ratio": 1.9, ..., "scenes/alignment_slot": 0.31,
                          "scenes/alignment_slot_rotated": 0.29, ...},
     "counts": {"scenes_long": {"images": 1000, "texts": 1000, "unreadable_images": 0}, ...}}

Retrieval and zero-shot metrics carry CLIP_benchmark's names (`image_retrieval_recall@k`: a caption finds its
image; `text_retrieval_recall@k`: an image finds one of its captions; `acc1`, `acc5`, `mean_per_class_recall`; see
`metrics.py`). A scoring that was not run has no key; mask statistics are computed only with modular scoring (a
model scored plainly never uses its masks), and so are the mask diagnostics of `mask_diagnostics.py` (defined in
docs/mask_diagnostics.md), but for the image embedding's alignment, computed under any scoring. The counts are of
what was scored: an image that cannot be decoded is skipped and counted, as training does, and so are the captions
left without an image. The command's JSON adds what was evaluated: `"model"` (its path and the sha256 of its
config.json), `"scorings"` and `"datasets"` (each set's source), with every number rounded to 4 decimals.

Images and captions are encoded by `modeling_smartclip.retrieval`'s encoders and every score comes from
`modeling_smartclip.masking.similarity`, the one scoring dispatch that `forward` and the loss also use.
"""

import logging
import math
from collections.abc import Iterable, Sequence

import torch
from tqdm.auto import tqdm
from transformers import CLIPModel

from modeling_smartclip import SmartCLIPModel, SmartCLIPProcessor
from modeling_smartclip.configuration_smartclip import SCORINGS
from modeling_smartclip.masking import similarity
from modeling_smartclip.retrieval import EncodedTexts, ImageGallery, encode_gallery, encode_texts
from smartclip_data.sources import load_image

from .image_retrieval import ImageRetrievalSet, evaluate_image_retrieval
from .mask_diagnostics import MaskDiagnosticsSet, diagnose
from .metrics import RECALL_KS, classification_metrics, retrieval_metrics
from .sets import PLACEHOLDER, AtomicProbeSet, ClassificationSet, EvalSet, MaskStatsSet, RetrievalSet

logger = logging.getLogger(__name__)

# Captions per block of the modular similarity: bounds its `(chunk, n_image)` temporaries on large galleries.
CHUNK_SIZE = 1024
_SHOWN_UNREADABLE = 3


def default_scorings(model: "SmartCLIPModel | CLIPModel") -> tuple[str, ...]:
    """Both scorings for a SmartCLIP whose mask head was trained; plain only for CLIP, a converted CLIP, the CLIP
    baseline and the random-mask control, whose heads were never trained."""
    if isinstance(model, CLIPModel) or not model.config.mask_head_trained:
        return ("plain",)
    return SCORINGS


class _Encoder:
    """Encodes each image sequence and each distinct caption once per evaluation (the built-in sets share their
    images, and the mask statistics reuse the retrieval captions), with `modeling_smartclip.retrieval`'s encoders."""

    def __init__(self, model: SmartCLIPModel, processor: SmartCLIPProcessor, batch_size: int, progress: bool = False):
        self.model, self.processor, self.batch_size, self.progress = model, processor, batch_size, progress
        self._galleries: dict[int, tuple[ImageGallery, torch.Tensor]] = {}
        self._texts: dict[tuple[str, ...], EncodedTexts] = {}
        self._unreadable_shown = 0

    def images(self, images: Sequence, name: str) -> tuple[ImageGallery, torch.Tensor]:
        """The gallery of the readable images of set `name`, and `(n_image,)` bool: which images were readable.

        Images are decoded one batch at a time; one that cannot be decoded is skipped and counted (a few are logged),
        as training drops it.
        """
        # Keyed by identity: the sets are alive for the whole evaluation, so an id is never reused meanwhile.
        if id(images) not in self._galleries:
            embeds, readable = [], []
            starts = range(0, len(images), self.batch_size)
            for start in tqdm(starts, desc=f"{name} images", unit="batch", disable=not self.progress):
                values = images[start : start + self.batch_size]
                batch = [self._read(value, f"{name} image {index}") for index, value in enumerate(values, start)]
                readable += [image is not None for image in batch]
                batch = [image for image in batch if image is not None]
                if batch:
                    embeds.append(encode_gallery(self.model, batch, len(batch), processor=self.processor).image_embeds)
            if not embeds:
                raise ValueError(f"{name}: none of its {len(images)} images could be read; expected decodable images.")
            if not all(readable):
                logger.warning("%s: skipped %d unreadable images of %d.", name, readable.count(False), len(images))
            self._galleries[id(images)] = (ImageGallery.from_embeddings(torch.cat(embeds)), torch.tensor(readable))
        return self._galleries[id(images)]

    def _read(self, value, where: str):
        """`value` as an RGB PIL image, or `None` when it cannot be decoded (the first few are logged)."""
        try:
            return load_image(value)
        except Exception as error:  # decoders raise many types (OSError, SyntaxError, DecompressionBombError...)
            if self._unreadable_shown < _SHOWN_UNREADABLE:
                self._unreadable_shown += 1
                logger.warning("skipping unreadable %s: %s: %s", where, type(error).__name__, error)
            return None

    def texts(self, texts: list[str]) -> EncodedTexts:
        """`(n_text, D)` embeddings and masks; a caption repeated in `texts` is encoded once."""
        unique = tuple(dict.fromkeys(texts))
        if unique not in self._texts:
            self._texts[unique] = encode_texts(
                self.model, list(unique), batch_size=self.batch_size, processor=self.processor, progress=self.progress
            )
        encoded = self._texts[unique]
        if len(unique) == len(texts):
            return encoded
        position = {text: i for i, text in enumerate(unique)}
        rows = torch.tensor([position[text] for text in texts], device=encoded.text_embeds.device)
        return EncodedTexts(encoded.text_embeds[rows], encoded.text_masks[rows])


def _scores(texts: EncodedTexts, gallery: ImageGallery, scoring: str) -> torch.Tensor:
    """`(n_text, n_image)` unscaled similarities under `scoring`."""
    return similarity(
        texts.text_embeds, gallery.image_embeds, texts.text_masks, scoring, CHUNK_SIZE, gallery.image_embeds_squared
    )


def class_prompts(encoder: _Encoder, eval_set: ClassificationSet) -> EncodedTexts:
    """One embedding and one mask per class from its template prompts.

    Embedding: the mean of the templates' unit-norm embeddings, renormalised (CLIP's prompt ensemble).
    Mask: the union (element-wise max) of the templates' binary masks, so the class is compared through every
    dimension any of its phrasings talks about; an intersection would drop a concept that one template's wording
    happens not to switch on, and the union matches how the `"union"` head builds a caption's mask from its words.
    """
    prompts = [template.replace(PLACEHOLDER, name) for name in eval_set.class_names for template in eval_set.templates]
    encoded = encoder.texts(prompts)
    shape = (len(eval_set.class_names), len(eval_set.templates), -1)
    embeds = encoded.text_embeds.reshape(shape).mean(dim=1)  # (n_class, D)
    masks = encoded.text_masks.reshape(shape).amax(dim=1)  # (n_class, D)
    return EncodedTexts(embeds / embeds.norm(dim=-1, keepdim=True), masks)


def _retrieval(encoder: _Encoder, eval_set: RetrievalSet, scoring: str) -> tuple[dict, dict]:
    gallery, readable = encoder.images(eval_set.images, eval_set.name)
    positives = eval_set.text_to_image
    if positives.dtype != torch.bool:
        positives = positives[:, None] == torch.arange(len(readable))  # (n_text, n_image)
    positives = positives[:, readable]  # (n_text, n_readable)
    # A caption whose only images were unreadable has nothing right to find: it goes with them.
    kept = positives.any(dim=1)
    texts = [text for text, keep in zip(eval_set.texts, kept.tolist()) if keep]
    metrics = retrieval_metrics(_scores(encoder.texts(texts), gallery, scoring), positives[kept], RECALL_KS)
    return metrics, {"images": len(gallery), "texts": len(texts), "unreadable_images": int((~readable).sum())}


def _zeroshot(encoder: _Encoder, eval_set: ClassificationSet, scoring: str) -> tuple[dict, dict]:
    gallery, readable = encoder.images(eval_set.images, eval_set.name)
    scores = _scores(class_prompts(encoder, eval_set), gallery, scoring)  # (n_class, n_readable)
    metrics = classification_metrics(scores, eval_set.labels[readable])
    counts = {"images": len(gallery), "classes": len(eval_set.class_names), "templates": len(eval_set.templates)}
    return metrics, counts | {"unreadable_images": int((~readable).sum())}


def _atomic(encoder: _Encoder, eval_set: AtomicProbeSet, scoring: str) -> tuple[dict, dict]:
    gallery, readable = encoder.images(eval_set.images, eval_set.name)
    column = readable.long().cumsum(0) - 1  # (n_image,): each readable image's column in the gallery
    objects = readable[eval_set.object_image]  # (n_object,): the objects whose image was read
    scores = _scores(encoder.texts(eval_set.prompts), gallery, scoring)  # (n_prompt, n_readable)
    device = scores.device
    candidates = eval_set.candidates[objects].to(device)  # (n_object, n_candidate)
    scores = scores[candidates, column[eval_set.object_image[objects]].to(device)[:, None]]  # (n_object, n_candidate)
    target, held = eval_set.target[objects].to(device), eval_set.held_out[objects].to(device)
    # Each object is a one-image classification among its candidate prompts.
    metrics = {
        "acc": classification_metrics(scores.T, target)["acc1"],
        "acc_held_out": classification_metrics(scores[held].T, target[held])["acc1"] if held.any() else math.nan,
    }
    counts = {"images": len(gallery), "objects": len(target), "held_out_objects": int(held.sum())}
    return metrics, counts | {"unreadable_images": int((~readable).sum())}


def _mask_stats(encoder: _Encoder, eval_set: MaskStatsSet) -> dict[str, float]:
    long_masks = encoder.texts(eval_set.long_captions).text_masks  # (n_long, D)
    sentence_masks = encoder.texts(eval_set.sentences).text_masks  # (n_sentence, D)
    inside = (sentence_masks * long_masks[eval_set.sentence_to_long.to(long_masks.device)]).sum(dim=1)
    size = sentence_masks.sum(dim=1)
    # A sentence with an empty mask has no share to measure; it is left out of the mean.
    nonempty = size > 0
    return {
        "density_long": long_masks.mean().item(),
        "density_sentence": sentence_masks.mean().item(),
        "sentence_in_long": (inside[nonempty] / size[nonempty]).mean().item() if nonempty.any() else math.nan,
        "sentence_overlap": _mean_overlap(sentence_masks[_first_occurrences(eval_set.sentences)]),
    }


def _first_occurrences(texts: list[str]) -> list[int]:
    """The index of each distinct text's first occurrence in `texts`."""
    first = {}
    for index, text in enumerate(texts):
        first.setdefault(text, index)
    return list(first.values())


def _mean_overlap(masks: torch.Tensor) -> float:
    """Mean Jaccard index of the masks of two different captions, `masks` `(n, D)` in {0, 1}: 1 when every caption
    switches on the same dimensions, lower the more caption-specific the masks are. Two empty masks count as 1."""
    if len(masks) < 2:
        return math.nan
    both = masks @ masks.T  # (n, n)
    either = masks.sum(dim=1, keepdim=True) + masks.sum(dim=1) - both
    jaccard = torch.where(either > 0, both / either.clamp_min(1), 1.0)
    pairs = ~torch.eye(len(masks), dtype=torch.bool, device=masks.device)
    return jaccard[pairs].mean().item()


@torch.no_grad()
def evaluate_model(
    model: "SmartCLIPModel | CLIPModel",
    processor: SmartCLIPProcessor,
    eval_sets: Iterable[EvalSet],
    scorings: Sequence[str] | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> dict:
    """Every metric of every set under every scoring in `scorings` (default: `default_scorings(model)`).

    A transformers `CLIPModel` is converted with `SmartCLIPModel.from_clip` and scored plainly. Encoding runs in
    batches of `batch_size` on `model.device`, with tqdm progress bars if `progress`. Returns the dict described in
    this module's docstring.
    """
    if isinstance(model, CLIPModel):
        model = SmartCLIPModel.from_clip(model).to(model.device)
        scorings = scorings or ("plain",)
    scorings = tuple(scorings or default_scorings(model))
    unknown = [s for s in scorings if s not in SCORINGS]
    if unknown or not scorings:
        raise ValueError(f"scorings={scorings}; expected a non-empty subset of {SCORINGS}.")

    was_training = model.training
    model.eval()
    try:
        results = _evaluate(_Encoder(model, processor, batch_size, progress), eval_sets, scorings)
    finally:
        model.train(was_training)
    return results


def _evaluate(encoder: _Encoder, eval_sets: Iterable[EvalSet], scorings: tuple[str, ...]) -> dict:
    results: dict[str, dict] = {scoring: {} for scoring in scorings}
    counts: dict[str, dict[str, int]] = {}
    for eval_set in eval_sets:
        if isinstance(eval_set, MaskStatsSet):
            if "modular" in scorings:
                stats = _mask_stats(encoder, eval_set)
                results.setdefault("mask_stats", {}).update({f"{eval_set.name}/{k}": v for k, v in stats.items()})
            continue
        if isinstance(eval_set, MaskDiagnosticsSet):  # the mask diagnostics only with modular scoring, as above
            masks_of = (lambda texts: encoder.texts(texts).text_masks) if "modular" in scorings else None
            stats = diagnose(encoder.images(eval_set.images, eval_set.name)[0].image_embeds, masks_of, eval_set)
            results.setdefault("mask_diagnostics", {}).update({f"{eval_set.name}/{k}": v for k, v in stats.items()})
            continue
        task = {RetrievalSet: _retrieval, ClassificationSet: _zeroshot, AtomicProbeSet: _atomic,
                ImageRetrievalSet: evaluate_image_retrieval}.get(type(eval_set))
        if task is None:
            raise ValueError(f"cannot evaluate a {type(eval_set).__name__}; expected one of the sets in eval.sets.")
        for scoring in scorings:
            metrics, counts[eval_set.name] = task(encoder, eval_set, scoring)
            results[scoring].update({f"{eval_set.name}/{k}": v for k, v in metrics.items()})
    results["counts"] = counts
    return results


__all__ = ["class_prompts", "default_scorings", "evaluate_model"]
