"""Retrieval and zero-shot metrics on a similarity matrix, with the definitions of LAION's CLIP_benchmark.

CLIP_benchmark (github.com/LAION-AI/CLIP_benchmark, `clip_benchmark/metrics/zeroshot_retrieval.py` and
`zeroshot_classification.py`) defines:
- `image_retrieval_recall@k`: the share of texts whose image is among the k best-scoring images;
- `text_retrieval_recall@k`: the share of images for which ANY of their texts is among the k best-scoring texts;
- `acc1`, `acc5`: the share of images whose class is among the 1 (5) best-scoring classes (`acc5` is NaN with fewer
  than 5 classes);
- `mean_per_class_recall`: top-1 recall of each class that has images, averaged over those classes (sklearn's
  `balanced_accuracy_score`).

Ties are CLIP_benchmark's too: the k candidates `torch.topk(scores, k)` picks are the top k, whichever of several
equal scores it picks (its order among them is not documented, and not by index: on CPU it may differ between k),
and `mean_per_class_recall` takes `argmax`'s pick (the first maximal class). So a result equals CLIP_benchmark's on
the same scores and device. `ties="pessimistic"` is the stricter, opt-in variant: a right candidate tied with wrong
ones ranks after them (`positive_ranks`), so a model that scores everything alike (e.g. a caption whose mask is empty
under modular scoring) cannot score above chance by luck.

A score computed from NaN or infinite numbers is an error, never a result: with NaN every comparison is false, so a
model with one NaN weight would otherwise rank every right candidate first.

Every function is vectorised; all inputs may live on any device.
"""

import torch

TIES = ("topk", "pessimistic")
# The k of `image_retrieval_recall@k` / `text_retrieval_recall@k` that the evaluation and the trainer report.
RECALL_KS = (1, 5, 10)


def check_finite(scores: torch.Tensor) -> None:
    """Raises a `ValueError` if any of `scores` is NaN or infinite."""
    bad = (~scores.isfinite()).sum().item()
    if bad:
        raise ValueError(
            f"{bad} of the {scores.numel()} similarity scores are NaN or infinite; a score computed from non-finite "
            "numbers is not a result (check the model's weights and inputs)."
        )


def _check_ties(ties: str) -> None:
    if ties not in TIES:
        raise ValueError(f"ties={ties!r}; expected one of {TIES}.")


def topk_hits(scores: torch.Tensor, positives: torch.Tensor, k: int) -> torch.Tensor:
    """Whether a right candidate is among the k that `torch.topk` picks, CLIP_benchmark's `recall_at_k(...) > 0`.

    Args:
        scores: `(n_query, n_candidate)` scores, higher is better.
        positives: `(n_query, n_candidate)` bool, True where the candidate is right for the query.

    Returns:
        `(n_query,)` bool. With k at least `n_candidate` every query with a right candidate is a hit.
    """
    # topk(k) itself, as CLIP_benchmark calls it: a slice of a larger k's picks may differ among equal scores.
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices  # (n_query, k)
    return positives.gather(1, top).any(dim=1)


def _check_positives(positives: torch.Tensor, queries: str) -> None:
    no_positive = ~positives.any(dim=1)
    if no_positive.any():
        raise ValueError(
            f"{queries} {no_positive.nonzero().flatten().tolist()[:10]} have no right candidate; every query needs one."
        )


def positive_ranks(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """0-based rank of each query's best right candidate, with ties counted against it.

    Args:
        scores: `(n_query, n_candidate)` scores, higher is better.
        positives: `(n_query, n_candidate)` bool, True where the candidate is right for the query.

    Returns:
        `(n_query,)` long: how many wrong candidates score at least as high as the query's best right candidate.
        The query is a hit at k when its rank is below k.
    """
    if scores.shape != positives.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and positives {tuple(positives.shape)} must have one shape.")
    _check_positives(positives, "queries")
    best_positive = scores.masked_fill(~positives, float("-inf")).amax(dim=1, keepdim=True)  # (n_query, 1)
    return ((scores >= best_positive) & ~positives).sum(dim=1)


def _one_hot(index: torch.Tensor, num_columns: int) -> torch.Tensor:
    """`(len(index), num_columns)` bool, True at `[i, index[i]]`."""
    if index.dim() != 1:
        raise ValueError(f"expected a 1-D index tensor, got shape {tuple(index.shape)}.")
    if len(index) and (index.min() < 0 or index.max() >= num_columns):
        raise ValueError(f"index values must lie in [0, {num_columns}); got min {index.min()}, max {index.max()}.")
    return index[:, None] == torch.arange(num_columns, device=index.device)


def retrieval_metrics(
    similarity: torch.Tensor, text_to_image: torch.Tensor, ks: tuple[int, ...] = RECALL_KS, ties: str = "topk"
) -> dict[str, float]:
    """CLIP_benchmark's `image_retrieval_recall@k` and `text_retrieval_recall@k` for each k in `ks`.

    Args:
        similarity: `(n_text, n_image)` scores.
        text_to_image: `(n_text,)` long, the index of each text's image (several texts may share an image); or,
            for texts that each describe several images, `(n_text, n_image)` bool, True where the text describes
            the image (CLIP_benchmark's `positive_pairs`). Every text and every image needs a right partner.
        ties: `"topk"` (CLIP_benchmark's) or `"pessimistic"` (a tie counts against the model); see the module.

    Returns:
        `{"image_retrieval_recall@k": ..., "text_retrieval_recall@k": ...}` as Python floats in [0, 1]; with
        several right images, a text is a hit when any of them is in its top k.
    """
    _check_ties(ties)
    check_finite(similarity)
    n_text, n_image = similarity.shape
    text_to_image = text_to_image.to(similarity.device)
    if text_to_image.dtype == torch.bool and text_to_image.shape == (n_text, n_image):
        positives = text_to_image
    elif text_to_image.dtype != torch.bool and text_to_image.shape == (n_text,):
        positives = _one_hot(text_to_image, n_image)  # (n_text, n_image)
    else:
        raise ValueError(
            f"text_to_image is {text_to_image.dtype} of shape {tuple(text_to_image.shape)}; expected ({n_text},) "
            f"image indices, one per text, or a ({n_text}, {n_image}) bool matrix."
        )
    _check_positives(positives, "texts")
    _check_positives(positives.T, "images")
    if ties == "pessimistic":
        image_ranks = positive_ranks(similarity, positives)  # (n_text,): rank of each text's image
        text_ranks = positive_ranks(similarity.T, positives.T)  # (n_image,): rank of each image's best text
        image_hits = {k: image_ranks < k for k in ks}
        text_hits = {k: text_ranks < k for k in ks}
    else:
        image_hits = {k: topk_hits(similarity, positives, k) for k in ks}  # (n_text,) each
        text_hits = {k: topk_hits(similarity.T, positives.T, k) for k in ks}  # (n_image,) each
    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = image_hits[k].float().mean().item()
        metrics[f"text_retrieval_recall@{k}"] = text_hits[k].float().mean().item()
    return metrics


def classification_metrics(similarity: torch.Tensor, labels: torch.Tensor, ties: str = "topk") -> dict[str, float]:
    """CLIP_benchmark's zero-shot `acc1`, `acc5` and `mean_per_class_recall`.

    Args:
        similarity: `(n_class, n_image)` scores of each class prompt against each image (texts first, as in
            `retrieval_metrics`).
        labels: `(n_image,)` long, each image's class index.
        ties: `"topk"` (CLIP_benchmark's) or `"pessimistic"` (a tie counts against the model); see the module.

    Returns:
        `{"acc1", "acc5", "mean_per_class_recall"}` as Python floats; `acc5` is NaN when there are fewer than 5
        classes, as in CLIP_benchmark.
    """
    _check_ties(ties)
    check_finite(similarity)
    n_class, n_image = similarity.shape
    if labels.shape != (n_image,):
        raise ValueError(f"labels has shape {tuple(labels.shape)}; expected ({n_image},), one per image.")
    labels = labels.to(similarity.device)
    right = _one_hot(labels, n_class)  # (n_image, n_class)
    if ties == "pessimistic":
        ranks = positive_ranks(similarity.T, right)  # (n_image,)
        top1, top5 = ranks == 0, ranks < 5
        predicted_right = top1
    else:
        # CLIP_benchmark: acc1 and acc5 from one topk(5) (topk(1) below 5 classes), the per-class recall from argmax.
        picks = similarity.T.topk(5 if n_class >= 5 else 1, dim=1).indices  # (n_image, 5 or 1)
        hits = picks == labels[:, None]
        top1, top5 = hits[:, 0], hits.any(dim=1)
        predicted_right = similarity.argmax(dim=0) == labels
    images_per_class = torch.bincount(labels, minlength=n_class)
    hits_per_class = torch.bincount(labels, weights=predicted_right.float(), minlength=n_class)
    present = images_per_class > 0
    return {
        "acc1": top1.float().mean().item(),
        "acc5": top5.float().mean().item() if n_class >= 5 else float("nan"),
        "mean_per_class_recall": (hits_per_class[present] / images_per_class[present]).mean().item(),
    }


__all__ = [
    "RECALL_KS", "TIES", "check_finite", "classification_metrics", "positive_ranks", "retrieval_metrics", "topk_hits",
]
