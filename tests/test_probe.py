"""The linear probe of image embeddings: right where the answer is in the embedding, at chance where it is not."""

import pytest
import torch

from smartclip_experiments.probe import PROBE_ATTRIBUTES, linear_probe, scene_slot_labels


def test_slot_labels_name_each_slots_shape_and_colour_or_empty():
    objects = [[{"shape": "cross", "colour": "blue", "size": "small", "slot": "bottom left"}], []]
    labels = scene_slot_labels(objects)
    assert labels.shape == (2, 4, 2)
    shape, colour = PROBE_ATTRIBUTES["shape"].index("cross"), PROBE_ATTRIBUTES["colour"].index("blue")
    assert labels[0, 2].tolist() == [shape, colour]
    assert labels[0, [0, 1, 3]].eq(0).all() and labels[1].eq(0).all()


def _labels(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 5, (n, 8), generator=generator)  # 4 slots x (shape, colour), 5 classes each


def test_probe_reads_attributes_that_are_linearly_in_the_embedding_and_not_others():
    generator = torch.Generator().manual_seed(0)
    train_labels, test_labels = _labels(2000, generator), _labels(500, generator)
    mixing = torch.randn(40, 64, generator=generator)  # each task's one-hot code, spread over 64 dimensions

    def embed(labels):
        one_hot = torch.nn.functional.one_hot(labels, 5).flatten(1).float()  # (n, 40)
        return one_hot @ mixing + 0.1 * torch.randn(len(labels), 64, generator=generator)

    accuracy = linear_probe(embed(train_labels), train_labels, embed(test_labels), test_labels, num_classes=5)
    assert accuracy.shape == (8,) and accuracy.min() > 0.97

    # Hide slot 0's colour (task 1): its code is zeroed, so only chance is left for it; the other tasks keep theirs.
    mixing[5:10] = 0
    accuracy = linear_probe(embed(train_labels), train_labels, embed(test_labels), test_labels, num_classes=5)
    assert accuracy[1] == pytest.approx(0.2, abs=0.07)
    assert accuracy[[0, *range(2, 8)]].min() > 0.97


def test_probe_labels_of_different_tasks_are_an_error():
    embeds = torch.randn(10, 4)
    with pytest.raises(ValueError, match="same tasks"):
        linear_probe(embeds, torch.zeros(10, 8, dtype=torch.long), embeds, torch.zeros(10, 6, dtype=torch.long), 5)
