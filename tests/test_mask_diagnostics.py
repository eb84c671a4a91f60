"""The concept-level mask diagnostics (docs/mask_diagnostics.md) on constructed masks and embeddings with known
answers, and their place in every evaluation of the built-in scenes."""

import itertools
import math
import re

import pytest
import torch

from modeling_smartclip import SmartCLIPModel
from smartclip_data.scenes import ATTRIBUTES, COLOURS, SHAPES, SIZES, SLOTS, make_scenes
from smartclip_eval.evaluate import evaluate_model
from smartclip_eval.mask_diagnostics import (
    MaskDiagnosticsSet,
    concept_alignment,
    density_ratio,
    diagnose,
    diagnostics_set,
    jaccard,
    mask_diagnostics,
    random_rotations,
    rotation_baseline,
    variance_share,
)
from smartclip_eval.sets import scene_eval_sets
from smartclip_eval.tables import format_table

MASK_KEYS = {
    "density_ratio", "jaccard_same_object", "jaccard_different_object", "jaccard_shared_slot_only",
    "variance_share_slot", "variance_share_shape", "variance_share_colour", "variance_share_size",
}
ALIGNMENT_KEYS = {f"alignment_{factor}{suffix}" for factor in ("slot", "colour", "shape") for suffix in ("", "_rotated")}
_PHRASE = re.compile(r"(?:^|\band |\. )a ([a-z ]+?) at the (top left|top right|bottom left|bottom right)\b")


def ideal_masks(captions: list[str]) -> torch.Tensor:
    """The masks of a model that has learnt the scenes' concepts: one dimension per (slot, attribute), switched on
    for each attribute a caption names of the object at a slot (its sentence names all three)."""
    masks = torch.zeros(len(captions), len(SLOTS) * len(ATTRIBUTES))
    words = {"colour": set(COLOURS), "shape": set(SHAPES), "size": set(SIZES)}
    for row, caption in enumerate(captions):
        for phrase, slot in _PHRASE.findall(caption):
            for a, attribute in enumerate(ATTRIBUTES):
                if words[attribute] & set(phrase.split()):
                    masks[row, SLOTS.index(slot) * len(ATTRIBUTES) + a] = 1
    return masks


def slot_masks(captions: list[str]) -> torch.Tensor:
    """Masks that are exactly slot indicators: two dimensions per slot a caption mentions."""
    masks = torch.zeros(len(captions), 2 * len(SLOTS))
    for row, caption in enumerate(captions):
        for _, slot in _PHRASE.findall(caption):
            masks[row, 2 * SLOTS.index(slot) : 2 * SLOTS.index(slot) + 2] = 1
    return masks


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(num_train=0, num_test=40)["test"]


def test_density_ratio_of_unions_of_slot_blocks_is_the_number_of_objects():
    sentences = torch.eye(4).repeat_interleave(2, dim=1)  # (4, 8): each sentence one slot's two dimensions
    long_masks = torch.stack([sentences[:3].amax(0), sentences[1:].amax(0)])  # two images of three objects
    assert density_ratio(long_masks, sentences) == pytest.approx(3.0)
    assert math.isnan(density_ratio(long_masks, torch.zeros(4, 8)))


def test_jaccard_of_identical_disjoint_and_empty_masks():
    masks = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert jaccard(masks, masks).tolist() == [1.0, 1.0, 1.0]
    assert jaccard(masks, torch.tensor([[0, 0, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])).tolist() == [0.0, 0.5, 0.0]


def test_variance_shares_of_slot_indicator_masks_on_a_full_factorial():
    rows = list(itertools.product(range(4), range(4), range(3)))  # (slot, shape, colour), each combination once
    slot, shape, colour = (torch.tensor(column) for column in zip(*rows))
    masks = torch.eye(4)[slot].repeat_interleave(3, dim=1)  # (48, 12): the slot's three dimensions
    assert variance_share(masks, slot) == pytest.approx(1.0)
    assert variance_share(masks, shape) == pytest.approx(0.0, abs=1e-12)
    assert variance_share(masks, colour) == pytest.approx(0.0, abs=1e-12)
    # The share is weighted by each dimension's variance: a constant dimension adds nothing.
    assert variance_share(torch.cat([masks, torch.ones(48, 5)], dim=1), slot) == pytest.approx(1.0)
    # Half of the variance from the slot, half from an independent factor with its own dimensions.
    mixed = torch.cat([masks, torch.eye(4)[shape].repeat_interleave(3, dim=1)], dim=1)
    assert variance_share(mixed, slot) == pytest.approx(0.5)
    assert math.isnan(variance_share(masks, torch.zeros(48, dtype=torch.long)))  # one level explains nothing
    assert math.isnan(variance_share(torch.ones(48, 12), slot))  # no bit varies


def test_alignment_of_slot_indicator_coordinates_beats_its_rotation_baseline(scenes):
    eval_set = diagnostics_set(scenes)
    present = torch.tensor([[float(any(obj["slot"] == slot for obj in objects)) for slot in SLOTS]
                            for objects in eval_set.objects])  # (n_image, 4)
    assert concept_alignment(present, present) == pytest.approx(1.0)
    assert rotation_baseline(present, present) < 0.85
    results = diagnose(present, None, eval_set)
    assert set(results) == ALIGNMENT_KEYS
    assert results["alignment_slot"] == pytest.approx(1.0)
    assert results["alignment_slot"] - results["alignment_slot_rotated"] > 0.15


def test_alignment_of_isotropic_noise_equals_its_rotation_baseline():
    generator = torch.Generator().manual_seed(0)
    embeds = torch.randn(2000, 32, generator=generator)
    indicators = (torch.rand(2000, 16, generator=generator) < 0.5).float()
    assert concept_alignment(embeds, indicators) == pytest.approx(rotation_baseline(embeds, indicators), abs=0.01)
    # A constant coordinate correlates with nothing.
    assert concept_alignment(torch.ones(2000, 3), indicators) == 0.0


def test_random_rotations_are_orthogonal_and_seeded():
    rotations = random_rotations(6, 3, seed=1)
    assert torch.allclose(rotations @ rotations.transpose(1, 2), torch.eye(6, dtype=torch.float64).expand(3, 6, 6))
    assert torch.equal(rotations, random_rotations(6, 3, seed=1))
    assert not torch.equal(rotations, random_rotations(6, 3, seed=2))


def test_identical_masks_give_jaccard_one_and_no_explained_variance(scenes):
    results = diagnose(torch.randn(len(scenes), 8), lambda captions: torch.ones(len(captions), 8), diagnostics_set(scenes))
    assert set(results) == MASK_KEYS | ALIGNMENT_KEYS
    assert results["jaccard_same_object"] == results["jaccard_different_object"] == 1.0
    assert results["jaccard_shared_slot_only"] == 1.0
    assert results["density_ratio"] == 1.0
    assert all(math.isnan(results[f"variance_share_{factor}"]) for factor in ("slot", "shape", "colour", "size"))


def test_slot_indicator_masks_are_all_slot_and_as_dense_as_the_objects(scenes):
    eval_set = diagnostics_set(scenes)
    results = diagnose(torch.randn(len(scenes), 8), slot_masks, eval_set)
    mean_objects = sum(map(len, eval_set.objects)) / len(eval_set.objects)
    assert results["density_ratio"] == pytest.approx(mean_objects)
    assert results["variance_share_slot"] == pytest.approx(1.0)
    # Two captions of one object share their slot; of two objects, nothing.
    assert results["jaccard_same_object"] == results["jaccard_shared_slot_only"] == 1.0
    assert results["jaccard_different_object"] == 0.0


def test_concept_masks_overlap_only_within_an_object(scenes):
    results = diagnose(torch.randn(len(scenes), 8), ideal_masks, diagnostics_set(scenes))
    # One object's four captions: its sentence against each attribute 1/3, two attributes 0, over six pairs.
    assert results["jaccard_same_object"] == pytest.approx(1 / 6)
    assert results["jaccard_shared_slot_only"] == 0.0
    assert results["jaccard_different_object"] == 0.0
    assert results["variance_share_slot"] == pytest.approx(1.0)  # a sentence's mask is its slot's blocks


def test_scenes_without_sizes_leave_size_out():
    simple = make_scenes(num_train=0, num_test=10, sizes=False)["test"]
    results = diagnose(torch.randn(10, 8), ideal_masks, diagnostics_set(simple))
    assert math.isnan(results["variance_share_size"])
    # Without a size caption: the sentence against colour and shape 1/2 each, colour against shape 0.
    assert results["jaccard_same_object"] == pytest.approx(1 / 3)


def test_diagnose_needs_one_embedding_per_scene(scenes):
    with pytest.raises(ValueError, match="39 image embeddings for 40 scenes"):
        diagnose(torch.randn(39, 8), None, diagnostics_set(scenes))
    with pytest.raises(ValueError, match="no image holds two objects"):
        one = MaskDiagnosticsSet("one", [None], ["a red circle at the top left."],
                                 [[{"shape": "circle", "colour": "red", "size": "small", "slot": "top left"}]])
        diagnose(torch.randn(1, 8), slot_masks, one)


def test_every_scenes_evaluation_reports_the_diagnostics(clip_dir, processor, scenes):
    torch.manual_seed(0)
    model = SmartCLIPModel.from_clip(clip_dir, mask_pooling="union").eval()
    torch.nn.init.normal_(model.mask_head.to_logits.weight, std=0.5)  # masks that differ between captions
    torch.nn.init.constant_(model.mask_head.to_logits.bias, -1.0)
    sets = scene_eval_sets(scenes)
    both = evaluate_model(model, processor, sets, scorings=("plain", "modular"), batch_size=16)
    plain = evaluate_model(model, processor, sets, scorings=("plain",), batch_size=16)
    assert set(both["mask_diagnostics"]) == {f"scenes/{key}" for key in MASK_KEYS | ALIGNMENT_KEYS}
    assert set(plain["mask_diagnostics"]) == {f"scenes/{key}" for key in ALIGNMENT_KEYS}
    # The function the experiments call gives the same numbers as the evaluation.
    direct = mask_diagnostics(model, processor, scenes, batch_size=16, masks=True)
    expected = {key.split("/")[1]: value for key, value in both["mask_diagnostics"].items()}
    assert direct == pytest.approx(expected)
    assert 0 < direct["jaccard_different_object"] < 1 and 0 < direct["variance_share_slot"] < 1
    assert set(mask_diagnostics(model, processor, scenes, batch_size=16)) == ALIGNMENT_KEYS  # head never trained
    table = format_table({"tiny": both})
    assert "| mask diagnostic | tiny |" in table and "| scenes/alignment_slot_rotated |" in table
