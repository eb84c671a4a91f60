"""The built-in dataset: procedurally generated compositional scenes, deterministic from a seed.

Each 32x32 image is a 2x2 grid of slots holding 2-4 objects; an object has a shape, a colour, a size and its slot.
Every object gets one short sentence ("a large red circle at the top left."); the long caption joins the sentences
of all objects in a shuffled order. The test split holds out some (shape, colour) pairs that never occur together
in training, so a model that entangles concepts (learns "red circle" instead of "red" and "circle") is caught by
the atomic-concept probe.

Why this design: a long caption that names every object is what makes CLIP entangle concepts, and one-object
sentences are the short captions whose concepts CLIP loses when it only sees some of them. The setting (32x32, 2x2
slots, 4 shapes x 4 colours) is the smallest where a CLIP fine-tuned on long captions alone measurably forgets
one-object concepts; we add size and small jitter in position, scale and shade so no two objects render alike.
`sizes=False, slot_order=True` gives the simpler scenes of the reference notes' own measurements (no size word, one
radius, long captions in slot order), kept so their settings can be rerun through this package.

`partial_captions=True` gives scenes the theory can identify (SmartCLIP's Thm 4.3: the blocks of the intersection of
captions' concepts are identifiable). With one sentence per object, every caption names all attributes of whole
objects, so at best per-object blocks are identifiable. The option adds, to the short captions only, attribute-level
captions of one object ("a red object at the top left.", "a circle at the top left.", "a large object at the top
left.") and two-object sentences, so that two captions can share exactly one concept (one attribute of one object,
or one object). It draws nothing at random: images, long captions and sentences are those of the option off.
"""

import itertools

import numpy as np
from datasets import Dataset, DatasetDict, Features, Image, Sequence, Value
from PIL import Image as PILImage
from PIL import ImageDraw

IMAGE_SIZE = 32
SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
SIZES = ("small", "large")
SLOTS = ("top left", "top right", "bottom left", "bottom right")
# The attributes an attribute-level caption names alone, in the order an object's partial captions are listed.
ATTRIBUTES = ("colour", "shape", "size")
# (shape, colour) pairs never drawn together in the training split.
HELD_OUT_PAIRS = (("circle", "green"), ("square", "yellow"), ("triangle", "blue"), ("cross", "red"))
VOCABULARY = (
    "a an the at and of in with photo picture image scene this is there are objects object".split()
    + list(SHAPES) + list(COLOURS) + list(SIZES) + "top bottom left right".split()
)


def describe(obj: dict) -> str:
    """The short caption of one object: 'a large red circle at the top left.' ('a red circle at the top left.' for
    an object without a size)."""
    size = f"{obj['size']} " if obj["size"] is not None else ""
    return f"a {size}{obj['colour']} {obj['shape']} at the {obj['slot']}."


def describe_attribute(obj: dict, attribute: str) -> str:
    """The caption naming one attribute of one object and its slot: 'a red object at the top left.' (colour),
    'a circle at the top left.' (shape), 'a large object at the top left.' (size). Reads only that attribute and the
    slot of `obj`."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute={attribute!r}; expected one of {ATTRIBUTES}.")
    noun = obj["shape"] if attribute == "shape" else f"{obj[attribute]} object"
    return f"a {noun} at the {obj['slot']}."


def describe_pair(first: dict, second: dict) -> str:
    """The caption of two objects: 'a large red circle at the top left and a small blue cross at the bottom right.'"""
    return f"{describe(first)[:-1]} and {describe(second)}"


def partial_captions_of(objects: list[dict]) -> list[str]:
    """The theory scenes' extra captions of one image: each object's attribute-level captions (`ATTRIBUTES` order,
    size only for objects with one), objects in the order given, then one two-object sentence per pair of objects."""
    attributes = [describe_attribute(obj, attribute) for obj in objects for attribute in ATTRIBUTES
                  if attribute != "size" or obj["size"] is not None]
    return attributes + [describe_pair(first, second) for first, second in itertools.combinations(objects, 2)]


def _draw(draw: ImageDraw.ImageDraw, obj: dict, rng: np.random.Generator) -> None:
    half = IMAGE_SIZE // 2
    slot = SLOTS.index(obj["slot"])
    radius = {"large": 6.5, "small": 3.5, None: 5.0}[obj["size"]] + rng.uniform(-0.5, 0.5)
    cx = (slot % 2) * half + half / 2 + rng.uniform(-1.5, 1.5)
    cy = (slot // 2) * half + half / 2 + rng.uniform(-1.5, 1.5)
    shade = rng.uniform(0.8, 1.0)
    fill = tuple(int(c * shade) for c in COLOURS[obj["colour"]])
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if obj["shape"] == "circle":
        draw.ellipse(box, fill=fill)
    elif obj["shape"] == "square":
        draw.rectangle(box, fill=fill)
    elif obj["shape"] == "triangle":
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    else:
        bar = max(radius / 2.5, 1.0)
        draw.rectangle((cx - radius, cy - bar, cx + radius, cy + bar), fill=fill)
        draw.rectangle((cx - bar, cy - radius, cx + bar, cy + radius), fill=fill)


def make_scene(
    rng: np.random.Generator, allowed_pairs: list[tuple[str, str]], sizes: bool = True, slot_order: bool = False,
    partial: bool = False,
) -> dict:
    """One example: image, long caption, short captions and the objects' attributes. `sizes=False`: every object
    has size None (one radius, no size word); `slot_order=True`: the long caption lists the objects in slot order;
    `partial=True`: the short captions are the sentences followed by `partial_captions_of(objects)`."""
    slots = rng.choice(len(SLOTS), size=rng.integers(2, 5), replace=False)
    objects = []
    for slot in sorted(slots):
        shape, colour = allowed_pairs[rng.integers(len(allowed_pairs))]
        size = SIZES[rng.integers(2)] if sizes else None
        objects.append({"shape": shape, "colour": colour, "size": size, "slot": SLOTS[slot]})
    image = PILImage.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), tuple(int(v) for v in rng.integers(0, 40, size=3)))
    draw = ImageDraw.Draw(image)
    for obj in objects:
        _draw(draw, obj, rng)
    sentences = [describe(obj) for obj in objects]
    order = np.arange(len(sentences)) if slot_order else rng.permutation(len(sentences))
    return {
        "image": image,
        "long_caption": " ".join(sentences[i] for i in order),
        "short_captions": sentences + partial_captions_of(objects) if partial else sentences,
        "objects": objects,
    }


FEATURES = Features(
    {
        "image": Image(),
        "long_caption": Value("string"),
        "short_captions": Sequence(Value("string")),
        "objects": [{"shape": Value("string"), "colour": Value("string"), "size": Value("string"), "slot": Value("string")}],
    }
)


def make_scenes(
    num_train: int = 20000, num_test: int = 1000, seed: int = 0, sizes: bool = True, slot_order: bool = False,
    partial_captions: bool = False,
) -> DatasetDict:
    """The built-in `DatasetDict` with `train` and `test` splits (columns: see `FEATURES`); `sizes`, `slot_order`
    and `partial_captions` (`make_scene`'s `partial`) as in `make_scene`."""
    all_pairs = list(itertools.product(SHAPES, COLOURS))
    train_pairs = [pair for pair in all_pairs if pair not in HELD_OUT_PAIRS]
    # One random stream per split, so the test split does not depend on how many training scenes were drawn.
    splits = {
        "train": [make_scene(np.random.default_rng([seed, 0, i]), train_pairs, sizes, slot_order, partial_captions)
                  for i in range(num_train)],
        "test": [make_scene(np.random.default_rng([seed, 1, i]), all_pairs, sizes, slot_order, partial_captions)
                 for i in range(num_test)],
    }
    return DatasetDict(
        {name: Dataset.from_dict({k: [row[k] for row in rows] for k in FEATURES}, features=FEATURES) for name, rows in splits.items()}
    )


__all__ = [
    "make_scenes", "make_scene", "describe", "describe_attribute", "describe_pair", "partial_captions_of", "ATTRIBUTES",
    "SHAPES", "COLOURS", "SIZES", "SLOTS", "HELD_OUT_PAIRS", "VOCABULARY",
]
