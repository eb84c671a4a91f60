"""Image-to-image retrieval on a labelled gallery, GPR1200-style (Schall et al., arXiv 2111.13122): every image is
a query against all the others, and the images of its class are the ones to find; mAP and R@1.

Ties: a gallery image scoring exactly as high as a relevant one is ranked before it when it is irrelevant
(pessimistic tie-breaking), so the numbers never depend on the gallery's order and a model whose embeddings
collapse to one point scores the chance level, not a perfect R@1. A query whose class has no other image has
nothing to find: it is left out of both means and counted (`queries` is the number that count).

The built-in scenes' classes (`scene_class`) are the ones MCIP's class loss trains on (`methods/mcip/`). In
`evaluate_model`'s results the set's metrics sit under every scoring (`"{set}/mAP"`, `"{set}/R@1"`, beside the
text-to-image ones): they read image embeddings only, so they are the same under each.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from datasets import Dataset

from smartclip_data.scenes import COLOURS, SHAPES, SLOTS

from .sets import _undecoded

# (shape, colour) pairs in the order of the class index within a slot.
SCENE_PAIRS = [(shape, colour) for shape in SHAPES for colour in COLOURS]
SCENE_CLASSES = len(SLOTS) * len(SCENE_PAIRS)


def scene_class(objects: Sequence[dict]) -> int:
    """A scene's class: the slot, shape and colour of its first object in reading order (top left, top right,
    bottom left, bottom right), one of `SCENE_CLASSES` (64). Two scenes of a class show the same coloured shape at
    the same place; their other 1-3 objects and every size differ freely."""
    first = min(objects, key=lambda obj: SLOTS.index(obj["slot"]))
    return SLOTS.index(first["slot"]) * len(SCENE_PAIRS) + SCENE_PAIRS.index((first["shape"], first["colour"]))


def image_retrieval_metrics(image_embeds: torch.Tensor, labels: torch.Tensor, chunk_size: int = 1024) -> dict:
    """`{"mAP", "R@1", "queries"}` of every image as a query against all the others, by cosine similarity.

    Args:
        image_embeds: `(N, D)` image embeddings (normalised here).
        labels: `(N,)` int class of each image.
        chunk_size: queries scored at a time: bounds the `(chunk, N)` temporaries.
    """
    if image_embeds.ndim != 2 or labels.shape != (len(image_embeds),):
        raise ValueError(
            f"image_retrieval_metrics: image_embeds {tuple(image_embeds.shape)} and labels {tuple(labels.shape)}; "
            "expected (N, D) and (N,)."
        )
    embeds = F.normalize(image_embeds.float(), dim=-1)
    n = len(embeds)
    ap_sum, hits, queries = 0.0, 0, 0
    for start in range(0, n, chunk_size):
        rows = torch.arange(start, min(start + chunk_size, n), device=embeds.device)
        scores = embeds[rows] @ embeds.T  # (chunk, N)
        relevant = labels[rows, None] == labels[None, :]  # (chunk, N)
        relevant[torch.arange(len(rows)), rows] = False
        scores[torch.arange(len(rows)), rows] = float("-inf")  # the query itself comes last, as irrelevant
        # Irrelevant before relevant, then a stable sort by score: within a tie the irrelevant images rank first.
        by_relevance = torch.argsort(relevant.to(torch.int8), dim=1, stable=True)
        order = torch.gather(by_relevance, 1, torch.argsort(torch.gather(scores, 1, by_relevance), dim=1,
                                                            descending=True, stable=True))
        ranked = torch.gather(relevant, 1, order).float()  # (chunk, N): 1 where the image at rank r is relevant
        counts = ranked.sum(dim=1)  # (chunk,)
        found = ranked.cumsum(dim=1)  # relevant images at or above each rank
        precision = found / torch.arange(1, n + 1, device=embeds.device)
        average_precision = (precision * ranked).sum(dim=1) / counts.clamp(min=1)
        has_relevant = counts > 0
        ap_sum += average_precision[has_relevant].sum().item()
        hits += int(ranked[has_relevant, 0].sum().item())
        queries += int(has_relevant.sum().item())
    if queries == 0:
        raise ValueError("image_retrieval_metrics: no image shares its class with another; nothing to retrieve.")
    return {"mAP": ap_sum / queries, "R@1": hits / queries, "queries": queries}


@dataclass
class ImageRetrievalSet:
    """A labelled gallery: `images` (anything `load_image` reads) and `labels` `(n_image,)` long, one class each."""

    name: str
    images: Sequence
    labels: torch.Tensor

    def counts(self) -> dict[str, int]:
        return {"images": len(self.images), "classes": len(self.labels.unique())}


def scene_image_retrieval_set(test_split: Dataset, name: str = "scenes_i2i", images: Sequence | None = None):
    """The scenes' gallery with `scene_class` labels; `images` may pass the split's image column already in use
    by other sets, so it is encoded once."""
    labels = torch.tensor([scene_class(objects) for objects in test_split["objects"]])
    return ImageRetrievalSet(name, test_split["image"] if images is None else images, labels)


def image_retrieval_set_from_dataset(dataset: Dataset, image_column: str, label_column: str, name: str):
    """A gallery from a `datasets` split with integer (or `ClassLabel`) labels in `label_column`."""
    for column in (image_column, label_column):
        if column not in dataset.column_names:
            raise ValueError(f"column {column!r} is not in the dataset; its columns are {dataset.column_names}.")
    labels = list(dataset[label_column])
    if not all(isinstance(label, int) and not isinstance(label, bool) for label in labels):
        raise ValueError(f"label column {label_column!r} holds {dataset.features[label_column]}, not integer class "
                         f"labels; its columns are {dataset.column_names}.")
    return ImageRetrievalSet(name, _undecoded(dataset, image_column), torch.tensor(labels, dtype=torch.long))


def evaluate_image_retrieval(encoder, eval_set: ImageRetrievalSet, scoring: str) -> tuple[dict, dict]:
    """`(metrics, counts)` of `eval_set` as `evaluate.py` calls a task: `encoder.images` gives the gallery and which
    images were readable (an unreadable one is left out). `scoring` is not used: only images are compared."""
    gallery, readable = encoder.images(eval_set.images, eval_set.name)
    metrics = image_retrieval_metrics(gallery.image_embeds, eval_set.labels[readable].to(gallery.image_embeds.device))
    queries = metrics.pop("queries")
    return metrics, {"images": int(readable.sum()), "queries": queries, "unreadable_images": int((~readable).sum())}


__all__ = [
    "ImageRetrievalSet", "SCENE_CLASSES", "SCENE_PAIRS", "evaluate_image_retrieval", "image_retrieval_metrics",
    "image_retrieval_set_from_dataset", "scene_class", "scene_image_retrieval_set",
]
