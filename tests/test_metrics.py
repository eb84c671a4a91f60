"""The evaluation metrics against hand-computed values and against CLIP_benchmark's top-k definition."""

import math

import pytest
import torch

from smartclip_eval.metrics import classification_metrics, positive_ranks, retrieval_metrics

# 4 captions x 3 images; captions 0 and 1 describe image 0, caption 2 image 1, caption 3 image 2.
SIMILARITY = torch.tensor(
    [
        [0.3, 0.5, 0.4],  # image 0 ranked 3rd
        [0.9, 0.1, 0.2],  # image 0 ranked 1st
        [0.6, 0.6, 0.1],  # image 1 tied with image 0: counts as 2nd (pessimistic ties)
        [0.2, 0.7, 0.1],  # image 2 ranked 3rd
    ]
)
TEXT_TO_IMAGE = torch.tensor([0, 0, 1, 2])


def test_retrieval_recall_matches_hand_computed_values():
    metrics = retrieval_metrics(SIMILARITY, TEXT_TO_IMAGE, ks=(1, 2, 3, 5), ties="pessimistic")
    # Texts -> images: ranks 2, 0, 1, 2.
    assert metrics["image_retrieval_recall@1"] == pytest.approx(1 / 4)
    assert metrics["image_retrieval_recall@2"] == pytest.approx(2 / 4)
    assert metrics["image_retrieval_recall@3"] == pytest.approx(1.0)
    # Images -> texts. Image 0: its caption 1 (0.9) beats every other caption although caption 0 (0.3) is 3rd,
    # so it is a hit at 1 ("any of its captions"). Image 1: caption 3 (0.7) beats its caption 2 (0.6): rank 1.
    # Image 2: its caption 3 (0.1) is beaten by 0.4 and 0.2 and tied with caption 2's 0.1: rank 3.
    assert metrics["text_retrieval_recall@1"] == pytest.approx(1 / 3)
    assert metrics["text_retrieval_recall@2"] == pytest.approx(2 / 3)
    assert metrics["text_retrieval_recall@3"] == pytest.approx(2 / 3)
    assert metrics["text_retrieval_recall@5"] == pytest.approx(1.0)


def test_a_text_may_describe_several_images():
    similarity = torch.tensor([[0.1, 0.5, 0.6], [0.2, 0.3, 0.9]])
    describes = torch.tensor([[True, False, True], [False, True, False]])  # text 0 fits images 0 and 2
    metrics = retrieval_metrics(similarity, describes, ks=(1, 2))
    assert metrics["image_retrieval_recall@1"] == pytest.approx(1 / 2)  # text 0 finds image 2 first: a hit
    assert metrics["image_retrieval_recall@2"] == 1.0
    assert metrics["text_retrieval_recall@1"] == 0.0  # every image prefers the other text
    assert metrics["text_retrieval_recall@2"] == 1.0


def test_pessimistic_ties_count_against_the_model():
    flat = torch.zeros(4, 3)  # e.g. every caption's mask empty under modular scoring
    metrics = retrieval_metrics(flat, TEXT_TO_IMAGE, ks=(1, 2, 3), ties="pessimistic")
    assert metrics["image_retrieval_recall@1"] == 0.0
    assert metrics["image_retrieval_recall@2"] == 0.0
    assert metrics["image_retrieval_recall@3"] == 1.0
    # Tied right captions do not push each other down: image 0's two captions tie with two wrong ones.
    assert positive_ranks(flat.T, (TEXT_TO_IMAGE[None, :] == torch.arange(3)[:, None])).tolist() == [2, 3, 3]


def test_retrieval_equals_clip_benchmark_topk_definition_without_ties():
    generator = torch.Generator().manual_seed(0)
    text_to_image = torch.cat([torch.arange(7), torch.randint(0, 7, (13,), generator=generator)])
    similarity = torch.rand(20, 7, generator=generator)
    metrics = retrieval_metrics(similarity, text_to_image, ks=(1, 3, 5))
    for k in (1, 3, 5):
        top_images = similarity.topk(k, dim=1).indices
        text_hits = [text_to_image[t].item() in top_images[t].tolist() for t in range(20)]
        top_texts = similarity.T.topk(k, dim=1).indices
        image_hits = [any(text_to_image[t] == i for t in top_texts[i]) for i in range(7)]
        assert metrics[f"image_retrieval_recall@{k}"] == pytest.approx(sum(text_hits) / 20)
        assert metrics[f"text_retrieval_recall@{k}"] == pytest.approx(sum(image_hits) / 7)


def test_classification_metrics_match_hand_computed_values():
    scores_per_image = torch.tensor(
        [
            [0.9, 0.1, 0.2, 0.3, 0.4, 0.5],  # class 0: rank 0
            [0.1, 0.9, 0.8, 0.7, 0.6, 0.5],  # class 0: rank 5, outside the top 5
            [0.2, 0.5, 0.9, 0.8, 0.7, 0.6],  # class 1: rank 4, inside the top 5
            [0.1, 0.2, 0.9, 0.0, 0.0, 0.0],  # class 2: rank 0
            [0.0, 0.0, 0.3, 0.2, 0.1, 0.0],  # class 2: rank 0
        ]
    )
    labels = torch.tensor([0, 0, 1, 2, 2])
    metrics = classification_metrics(scores_per_image.T, labels)
    assert metrics["acc1"] == pytest.approx(3 / 5)
    assert metrics["acc5"] == pytest.approx(4 / 5)
    # Recall per class with images: class 0 1/2, class 1 0, class 2 1; classes 3-5 have no image.
    assert metrics["mean_per_class_recall"] == pytest.approx(0.5)


def test_acc5_is_nan_with_fewer_than_five_classes():
    metrics = classification_metrics(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    assert metrics["acc1"] == 0.5 and math.isnan(metrics["acc5"])


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="no right candidate"):
        retrieval_metrics(torch.rand(2, 3), torch.tensor([0, 1]))  # image 2 has no caption
    with pytest.raises(ValueError, match="one per text"):
        retrieval_metrics(torch.rand(2, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\(2, 3\) bool"):
        retrieval_metrics(torch.rand(2, 3), torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        classification_metrics(torch.rand(3, 2), torch.tensor([0, 3]))


def test_equal_to_clip_benchmarks_own_functions_without_ties():
    zeroshot_retrieval = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(1)
    text_to_image = torch.cat([torch.arange(9), torch.randint(0, 9, (11,), generator=generator)])
    similarity = torch.rand(20, 9, generator=generator)
    positives = torch.zeros(20, 9, dtype=torch.bool)
    positives[torch.arange(20), text_to_image] = True
    metrics = retrieval_metrics(similarity, text_to_image, ks=(1, 5))
    for k in (1, 5):
        image_hits = zeroshot_retrieval.recall_at_k(similarity, positives, k) > 0
        text_hits = zeroshot_retrieval.recall_at_k(similarity.T, positives.T, k) > 0
        assert metrics[f"image_retrieval_recall@{k}"] == pytest.approx(image_hits.float().mean().item())
        assert metrics[f"text_retrieval_recall@{k}"] == pytest.approx(text_hits.float().mean().item())

    labels = torch.randint(0, 6, (30,), generator=generator)
    scores = torch.rand(6, 30, generator=generator)  # (n_class, n_image)
    expected = sklearn_metrics.balanced_accuracy_score(labels, scores.argmax(dim=0))
    assert classification_metrics(scores, labels)["mean_per_class_recall"] == pytest.approx(expected)
