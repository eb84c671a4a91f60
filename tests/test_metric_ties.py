"""Retrieval and zero-shot metrics on tied scores (duplicate captions or images) equal CLIP_benchmark's own functions
on the same embeddings; the stricter rule (a tie counts against the model) is opt-in, as `ties="pessimistic"`."""

import pytest
import torch

from smartclip_eval.metrics import classification_metrics, retrieval_metrics
from tests.test_clip_benchmark import numpy_24_accuracy  # noqa: F401 (CLIP_benchmark's `accuracy` under NumPy 2.4)

zeroshot_retrieval = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")
zeroshot_classification = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")

# One-hot embeddings: every score is exactly 0 or 1, so the ties are exact whatever the order of the sums.
DIM = 4
# 16 images over 4 distinct embeddings (duplicate images); 2 captions per image over 3 distinct embeddings
# (duplicate captions, and captions that match no image of theirs).
IMAGE_EMBEDS = torch.eye(DIM)[torch.arange(16) % DIM]
TEXT_EMBEDS = torch.eye(DIM)[torch.tensor([0, 1, 1, 2] * 8)]
TEXT_TO_IMAGE = torch.arange(16).repeat_interleave(2)


class Lookup(torch.nn.Module):
    """A "model" for CLIP_benchmark's loops whose encoders return the stored embeddings of the given row indices."""

    def __init__(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor):
        super().__init__()
        self.image_embeds, self.text_embeds = image_embeds, text_embeds

    def encode_image(self, rows: torch.Tensor) -> torch.Tensor:
        return self.image_embeds[rows]

    def encode_text(self, rows: torch.Tensor) -> torch.Tensor:
        return self.text_embeds[rows]


def tokenize(texts: list[str]) -> torch.Tensor:
    return torch.tensor([int(text) for text in texts])


def clip_benchmark_retrieval(image_embeds, text_embeds, text_to_image, ks, batch_size=5) -> dict[str, float]:
    captions = [[] for _ in range(len(image_embeds))]
    for text, image in enumerate(text_to_image.tolist()):
        captions[image].append(str(text))
    rows = torch.arange(len(image_embeds))
    # CLIP_benchmark's retrieval loader yields (images, list of each image's captions) batches.
    loader = [(rows[start:start + batch_size], captions[start:start + batch_size])
              for start in range(0, len(rows), batch_size)]
    return zeroshot_retrieval.evaluate(
        Lookup(image_embeds, text_embeds), loader, tokenize, "cpu", amp=False, recall_k_list=list(ks)
    )


@pytest.mark.parametrize("ks", [(1, 5, 10), (2, 3)])
def test_retrieval_with_duplicate_captions_and_images_equals_clip_benchmark(ks):
    expected = clip_benchmark_retrieval(IMAGE_EMBEDS, TEXT_EMBEDS, TEXT_TO_IMAGE, ks)
    assert retrieval_metrics(TEXT_EMBEDS @ IMAGE_EMBEDS.T, TEXT_TO_IMAGE, ks=ks) == pytest.approx(expected)


def test_retrieval_with_every_score_tied_equals_clip_benchmark():
    # A model that scores everything alike (e.g. every caption's mask empty under modular scoring).
    image_embeds, text_embeds = torch.eye(DIM)[[0] * 12], torch.eye(DIM)[[0] * 12]
    text_to_image = torch.arange(12)
    expected = clip_benchmark_retrieval(image_embeds, text_embeds, text_to_image, (1, 5, 10))
    assert retrieval_metrics(text_embeds @ image_embeds.T, text_to_image, ks=(1, 5, 10)) == pytest.approx(expected)


@pytest.mark.usefixtures("numpy_24_accuracy")
def test_zeroshot_with_tied_classes_equals_clip_benchmark():
    # 7 class prompts over 3 distinct embeddings (tied classes), 20 images over 4 distinct embeddings.
    class_embeds = torch.eye(DIM)[torch.tensor([0, 1, 1, 2, 0, 2, 1])]
    image_embeds = torch.eye(DIM)[torch.arange(20) % DIM]
    labels = torch.tensor([0, 1, 3, 5, 4, 2, 6, 0, 1, 5] * 2)
    model = Lookup(image_embeds, class_embeds)
    loader = [(torch.arange(start, start + 5), labels[start:start + 5]) for start in range(0, 20, 5)]
    loader_with_classes = type("Loader", (list,), {})(loader)
    loader_with_classes.dataset = type("Dataset", (), {"classes": [str(c) for c in range(7)]})()
    expected = zeroshot_classification.evaluate(
        model, loader_with_classes, tokenize, [str(c) for c in range(7)], ["{c}"], "cpu", amp=False
    )
    assert classification_metrics(class_embeds @ image_embeds.T, labels) == pytest.approx(expected)


def test_pessimistic_ties_are_opt_in_and_count_ties_against_the_model():
    flat = torch.zeros(4, 3)
    text_to_image = torch.tensor([0, 0, 1, 2])
    default = retrieval_metrics(flat, text_to_image, ks=(1, 2, 3))
    pessimistic = retrieval_metrics(flat, text_to_image, ks=(1, 2, 3), ties="pessimistic")
    assert pessimistic["image_retrieval_recall@2"] == 0.0 and pessimistic["image_retrieval_recall@3"] == 1.0
    assert pessimistic["text_retrieval_recall@1"] == 0.0
    assert default["image_retrieval_recall@1"] > 0  # torch.topk's pick among equal scores hits some right images
    # The pessimistic rule never scores above CLIP_benchmark's.
    assert all(pessimistic[key] <= default[key] for key in default)
    with pytest.raises(ValueError, match="ties"):
        retrieval_metrics(flat, text_to_image, ties="optimistic")
