"""Scenes the theory can identify (`make_scenes(partial_captions=True)`): the default stream is unchanged, every
caption is true of its image, and the attribute-level probe."""

import hashlib
import itertools
import json
import re

import numpy as np
import pytest
import torch

from modeling_smartclip import SmartCLIPModel
from smartclip_data.scenes import COLOURS, IMAGE_SIZE, SLOTS, describe, describe_attribute, make_scenes
from smartclip_data.sources import DataArguments, DropCounter, load_split
from smartclip_eval.evaluate import evaluate_model
from smartclip_eval.sets import MaskStatsSet, attribute_probe_set, scene_eval_sets

# A caption's grammar, written independently of the generator: "a [size] [colour] <shape | object> at the <slot>",
# one phrase or two joined by "and", ending with a period.
_PHRASE = (r"a (?:(small|large) )?(?:(red|green|blue|yellow) )?(circle|square|triangle|cross|object) "
           r"at the (top left|top right|bottom left|bottom right)")
_CAPTION = re.compile(rf"{_PHRASE}(?: and {_PHRASE})?\.")


def claims(caption: str) -> list[dict]:
    """The objects a caption asserts: `{"slot", "size", "colour", "shape"}`, None for what it leaves unsaid."""
    match = _CAPTION.fullmatch(caption)
    assert match, f"not a scenes caption: {caption!r}"
    groups = match.groups()
    phrases = [groups[:4], groups[4:]] if groups[4] else [groups[:4]]
    return [{"size": size, "colour": colour, "shape": None if shape == "object" else shape, "slot": slot}
            for size, colour, shape, slot in phrases]


def slot_colours(image) -> dict[str, str | None]:
    """For each slot, the colour (nearest of `COLOURS` in direction) of most non-background pixels in the centre of
    its quadrant, or None when the centre is all background."""
    pixels = np.asarray(image.convert("RGB")).astype(float)
    values, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
    background = values[counts.argmax()]
    reference = np.array(list(COLOURS.values()), dtype=float)
    colours = {}
    for slot in SLOTS:
        half, row, column = IMAGE_SIZE // 2, *divmod(SLOTS.index(slot), 2)
        centre = pixels[row * half + 4 : row * half + 12, column * half + 4 : column * half + 12].reshape(-1, 3)
        drawn = centre[(centre != background).any(axis=1)]
        colours[slot] = None
        if len(drawn):
            values, counts = np.unique(drawn, axis=0, return_counts=True)
            pixel = values[counts.argmax()]
            cosine = reference @ pixel / np.linalg.norm(reference, axis=1) / np.linalg.norm(pixel)
            colours[slot] = list(COLOURS)[cosine.argmax()]
    return colours


def fingerprint(splits) -> str:
    digest = hashlib.sha256()
    for split in ("train", "test"):
        for row in splits[split]:
            digest.update(row["image"].tobytes())
            digest.update(json.dumps([row["long_caption"], row["short_captions"], row["objects"]]).encode())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def theory():
    return make_scenes(num_train=30, num_test=30, seed=1, partial_captions=True)


def test_default_scenes_are_the_stream_of_before_the_option():
    # Digests of `make_scenes(6, 6, seed=3, ...)` recorded on the generator before `partial_captions` existed.
    assert fingerprint(make_scenes(6, 6, seed=3)) == "c4e1f35ea7128ed4501ec566b129a6834fd38b9a7f3064d5240da06adc69c48e"
    simple = make_scenes(6, 6, seed=3, sizes=False, slot_order=True)
    assert fingerprint(simple) == "042a281a24211758eb467db371664f20702a383fb153dfe686ebe2c05e8e5b55"


def test_the_option_adds_captions_and_changes_nothing_else(theory):
    default = make_scenes(num_train=30, num_test=30, seed=1)
    for split in ("train", "test"):
        for plain, partial in zip(default[split], theory[split]):
            assert plain["image"].tobytes() == partial["image"].tobytes()
            assert (plain["long_caption"], plain["objects"]) == (partial["long_caption"], partial["objects"])
            assert partial["short_captions"][: len(plain["short_captions"])] == plain["short_captions"]
            assert len(partial["short_captions"]) > len(plain["short_captions"])


@pytest.mark.parametrize("sizes", [True, False])
def test_every_caption_is_true_of_its_image(sizes):
    splits = make_scenes(num_train=40, num_test=40, seed=2, sizes=sizes, partial_captions=True)
    for row in itertools.chain(splits["train"], splits["test"]):
        objects = {obj["slot"]: obj for obj in row["objects"]}
        drawn = slot_colours(row["image"])
        captions = row["short_captions"] + row["long_caption"].replace(". ", ".\n").split("\n")
        for caption in captions:
            for claim in claims(caption):
                assert claim["slot"] in objects, (caption, row["objects"])
                obj = objects[claim["slot"]]
                assert all(claim[k] in (None, obj[k]) for k in ("size", "colour", "shape")), (caption, obj)
                assert drawn[claim["slot"]] == obj["colour"], (caption, obj)
        # and nothing is drawn where no caption can speak of an object
        assert [slot for slot, colour in drawn.items() if colour is not None] == [o["slot"] for o in row["objects"]]


def test_captions_share_exactly_one_concept(theory):
    for row in theory["train"]:
        objects = row["objects"]
        said = [claims(caption) for caption in row["short_captions"]]
        singles = [c[0] for c in said if len(c) == 1 and None in (c[0]["colour"], c[0]["shape"], c[0]["size"])]
        pairs = [c for c in said if len(c) == 2]
        # Per object: its sentence and one caption per attribute naming that attribute alone.
        assert len(singles) == 3 * len(objects)
        for claim in singles:
            assert sum(claim[k] is not None for k in ("size", "colour", "shape")) == 1, claim
        # One two-object sentence per pair of objects, so two of them share exactly one object.
        assert sorted(tuple(c["slot"] for c in pair) for pair in pairs) == sorted(
            itertools.combinations([obj["slot"] for obj in objects], 2)
        )


def test_the_flag_reaches_the_training_rows():
    rows = load_split(DataArguments(num_train_scenes=5, num_test_scenes=2, scenes_seed=4, scenes_partial_captions=True),
                      "train", DropCounter())
    default = load_split(DataArguments(num_train_scenes=5, num_test_scenes=2, scenes_seed=4), "train", DropCounter())
    for partial, plain, scene in zip(rows, default, make_scenes(5, 0, seed=4, partial_captions=True)["train"]):
        assert partial["short_captions"] == scene["short_captions"] != plain["short_captions"]
        assert partial["long_caption"] == plain["long_caption"]


@pytest.mark.parametrize("attribute", ["colour", "shape"])
def test_attribute_probe_asks_for_the_attribute_alone_at_the_objects_slot(theory, attribute):
    test = theory["test"]
    probe = attribute_probe_set(test, attribute)
    assert probe.name == f"scenes_{attribute}" and len(probe.prompts) == 16
    objects = [obj for scene in test["objects"] for obj in scene]
    for i, obj in enumerate(objects):
        candidates = [probe.prompts[j] for j in probe.candidates[i]]
        assert candidates[probe.target[i]] == describe_attribute(obj, attribute)
        assert len(set(candidates)) == 4 and all(f"at the {obj['slot']}." in c for c in candidates)
        # The right prompt is one of the image's own captions in the theory scenes.
        assert candidates[probe.target[i]] in test[int(probe.object_image[i])]["short_captions"]
    with pytest.raises(ValueError, match="attribute='size'; expected 'colour' or 'shape'"):
        attribute_probe_set(test, "size")


def test_scene_sets_read_the_sentences_also_from_theory_scenes(theory):
    default = make_scenes(num_train=0, num_test=30, seed=1)["test"]
    for plain, partial in zip(scene_eval_sets(default), scene_eval_sets(theory["test"])):
        if isinstance(plain, MaskStatsSet):
            assert plain.sentences == partial.sentences
            assert plain.sentences == [describe(obj) for scene in default["objects"] for obj in scene]
        elif hasattr(plain, "texts"):
            assert plain.texts == partial.texts


def test_attribute_probes_are_scored_plain_and_modular(clip_dir, processor, theory):
    torch.manual_seed(0)
    model = SmartCLIPModel.from_clip(clip_dir).eval()
    results = evaluate_model(model, processor, scene_eval_sets(theory["test"]), scorings=("plain", "modular"))
    for scoring in ("plain", "modular"):
        for attribute in ("colour", "shape"):
            assert 0 <= results[scoring][f"scenes_{attribute}/acc"] <= 1
            assert f"scenes_{attribute}/acc_held_out" in results[scoring]
