"""Evaluation sets in one shape each, whatever their source: Urban1k-style folders, COCO captions JSON, `datasets`
splits, class-subfolder trees, and the built-in scenes.

Images are kept as a sequence of anything `smartclip_data.sources.load_image` reads (PIL images, file paths, a
`datasets` image column left undecoded) and are opened batch by batch when encoded, so a 5,000-image COCO set is
never decoded all at once, and an unreadable image is skipped and counted rather than fatal.
"""

import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import ClassLabel, Dataset
from datasets import Image as ImageFeature
from PIL import Image

from smartclip_data.scenes import COLOURS, HELD_OUT_PAIRS, IMAGE_SIZE, SHAPES, SIZES, SLOTS, describe, describe_attribute

from .mask_diagnostics import MaskDiagnosticsSet, diagnostics_set

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

PLACEHOLDER = "{}"


def _read_list(path: "str | os.PathLike", key: str) -> list[str]:
    """Strings from a JSON list, a JSON object holding the list under `key`, or a text file with one per line."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".json":
        return [line.strip() for line in text.splitlines() if line.strip()]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if isinstance(data, dict):
        data = data.get(key)
    if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
        raise ValueError(f"{path}: expected a JSON list of strings, or an object with a {key!r} list of strings.")
    return data


def read_templates(path: "str | os.PathLike") -> tuple[str, ...]:
    """Zero-shot prompt templates from a file (see `_read_list`; JSON key `"templates"`), each with one `{}` where
    the class name goes; CLIP_benchmark's `{c}` is read as `{}`. Templates are filled by plain substitution, never
    `str.format`, so a template cannot reach Python objects."""
    templates = tuple(template.replace("{c}", PLACEHOLDER) for template in _read_list(path, "templates"))
    bad = [t for t in templates if t.count(PLACEHOLDER) != 1 or {"{", "}"} & set(t.replace(PLACEHOLDER, ""))]
    if bad or not templates:
        raise ValueError(
            f"{path}: {len(templates)} templates, {len(bad)} without exactly one '{{}}' placeholder (e.g. {bad[:3]}); "
            "expected templates such as 'a photo of a {}.'"
        )
    return templates


def read_classnames(path: "str | os.PathLike") -> list[str]:
    """Class names in label order from a file (see `_read_list`; JSON key `"classnames"`)."""
    names = _read_list(path, "classnames")
    if not names:
        raise ValueError(f"{path} holds no class names; expected one per line or a JSON list.")
    return names


# CLIP's 80 ImageNet prompt templates, shipped as data with their source; a class embedding is their average.
OPENAI_IMAGENET_TEMPLATES = read_templates(Path(__file__).with_name("imagenet_templates.json"))
# The same idea in the built-in scenes' vocabulary (the scratch tokenizer knows only those words).
SCENE_TEMPLATES = (
    "a {}.",
    "a photo of a {}.",
    "a picture of a {}.",
    "an image with a {}.",
    "there is a {} in the image.",
)


@dataclass
class RetrievalSet:
    """Images and captions; a caption is right for exactly one image, an image may have several captions.

    images: `n_image` images (see the module docstring).
    texts: `n_text` captions.
    text_to_image: `(n_text,)` long, the index of each caption's image; or `(n_text, n_image)` bool when a caption
        describes several images (the built-in scenes, where the same sentence occurs in many scenes).
    """

    name: str
    images: Sequence
    texts: list[str]
    text_to_image: torch.Tensor

    def counts(self) -> dict[str, int]:
        return {"images": len(self.images), "texts": len(self.texts)}


@dataclass
class ClassificationSet:
    """Zero-shot classification: each image has one class; each class is scored through `templates`.

    images: `n_image` images (see the module docstring).
    labels: `(n_image,)` long, each image's index into `class_names`.
    templates: prompt templates with one `{}` for the class name (see `read_templates`).
    """

    name: str
    images: Sequence
    labels: torch.Tensor
    class_names: list[str]
    templates: tuple[str, ...] = OPENAI_IMAGENET_TEMPLATES

    def counts(self) -> dict[str, int]:
        return {"images": len(self.images), "classes": len(self.class_names), "templates": len(self.templates)}


@dataclass
class AtomicProbeSet:
    """For each object in an image, the right one-object prompt among candidates that differ only in attributes.

    images: `n_image` PIL images.
    prompts: every candidate prompt, each encoded once.
    object_image: `(n_object,)` long, the image each object is in.
    candidates: `(n_object, n_candidate)` long, indices into `prompts` competing for the object.
    target: `(n_object,)` long, the column of `candidates` holding the right prompt.
    held_out: `(n_object,)` bool, True for objects whose (shape, colour) pair never occurs in training.
    """

    name: str
    images: Sequence
    prompts: list[str]
    object_image: torch.Tensor
    candidates: torch.Tensor
    target: torch.Tensor
    held_out: torch.Tensor

    def counts(self) -> dict[str, int]:
        return {"images": len(self.images), "objects": len(self.target), "held_out_objects": int(self.held_out.sum())}


@dataclass
class MaskStatsSet:
    """Long captions and the single sentences they are made of, for the mask statistics.

    sentence_to_long: `(n_sentence,)` long, the index of each sentence's long caption.
    """

    name: str
    long_captions: list[str]
    sentences: list[str]
    sentence_to_long: torch.Tensor


EvalSet = RetrievalSet | ClassificationSet | AtomicProbeSet | MaskStatsSet | MaskDiagnosticsSet


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def _undecoded(dataset: Dataset, image_column: str) -> Sequence:
    """The image column, left undecoded when it is an `Image` feature, so a corrupt image is caught (and counted) by
    the evaluation rather than raised by `datasets` on access."""
    if isinstance(dataset.features.get(image_column), ImageFeature):
        dataset = dataset.cast_column(image_column, ImageFeature(decode=False))
    return dataset[image_column]


# ----- retrieval sets -------------------------------------------------------------------------------------------


def _retrieval_set(name: str, images: Sequence, captions_per_image: list[list[str]]) -> RetrievalSet:
    texts = [text for captions in captions_per_image for text in captions]
    text_to_image = torch.tensor([i for i, captions in enumerate(captions_per_image) for _ in captions], dtype=torch.long)
    return RetrievalSet(name, images, texts, text_to_image)


def _merged_retrieval_set(name: str, images: Sequence, captions_per_image: list[list[str]]) -> RetrievalSet:
    """Like `_retrieval_set`, but identical captions become one text that is right for every image it describes.

    In the scenes one sentence ("a large red circle at the top left.") occurs in about one image in 130: counted
    right only for its own image, a perfect model could not tell its copies apart and would score near zero.
    """
    texts = list(dict.fromkeys(text for captions in captions_per_image for text in captions))
    index = {text: i for i, text in enumerate(texts)}
    positives = torch.zeros(len(texts), len(captions_per_image), dtype=torch.bool)
    for image, captions in enumerate(captions_per_image):
        positives[[index[text] for text in captions], image] = True
    return RetrievalSet(name, images, texts, positives)


def load_urban1k(root: "str | os.PathLike", name: str = "urban1k") -> RetrievalSet:
    """Urban1k layout: `root/image/<stem>.jpg` and `root/caption/<stem>.txt`; one caption per image.

    Only the first line of each caption file is read, as Long-CLIP's `eval/retrieval/Urban1k.py` does.
    """
    root = Path(root)
    image_dir, caption_dir = root / "image", root / "caption"
    for folder in (image_dir, caption_dir):
        if not folder.is_dir():
            raise ValueError(f"Urban1k folder {root} has no '{folder.name}/' subfolder; expected image/ and caption/.")
    images = _image_files(image_dir)
    captions = {path.stem: path for path in caption_dir.glob("*.txt")}
    missing = [path.name for path in images if path.stem not in captions]
    if missing or not images:
        raise ValueError(
            f"Urban1k folder {root}: {len(images)} images; images without a caption file of the same name: {missing[:5]}."
        )
    first_lines = []
    for path in images:
        lines = captions[path.stem].read_text(encoding="utf-8").splitlines()
        if not lines or not lines[0].strip():
            raise ValueError(f"Urban1k caption file {captions[path.stem]} has an empty first line.")
        first_lines.append([lines[0].strip()])
    return _retrieval_set(name, images, first_lines)


def load_coco_captions(
    annotations_file: "str | os.PathLike", images_dir: "str | os.PathLike", captions_per_image: int = 5, name: str = "coco"
) -> RetrievalSet:
    """A COCO captions JSON (`annotations/captions_val2017.json`) and its image folder.

    Images come in the file's `images` order; each keeps its first `captions_per_image` captions in the file's
    `annotations` order (Long-CLIP's `coco.py` takes the first 5). Images with no caption are left out.
    """
    coco = json.loads(Path(annotations_file).read_text(encoding="utf-8"))
    if "images" not in coco or "annotations" not in coco:
        raise ValueError(f"{annotations_file} is not a COCO captions file: expected 'images' and 'annotations' keys.")
    captions: dict[int, list[str]] = {}
    for annotation in coco["annotations"]:
        caption = annotation["caption"].strip()
        if caption:
            captions.setdefault(annotation["image_id"], []).append(caption)
    kept = [image for image in coco["images"] if image["id"] in captions]
    paths = [Path(images_dir) / image["file_name"] for image in kept]
    absent = [str(path) for path in paths if not path.is_file()]
    if absent:
        raise ValueError(f"{len(absent)} images named in {annotations_file} are not in {images_dir}, e.g. {absent[:3]}.")
    return _retrieval_set(name, paths, [captions[image["id"]][:captions_per_image] for image in kept])


def retrieval_set_from_dataset(
    dataset: Dataset,
    image_column: str,
    caption_columns: "str | Sequence[str]",
    name: str,
    captions_per_image: int | None = None,
) -> RetrievalSet:
    """A retrieval set from a `datasets` split: each row is an image with the captions of `caption_columns`.

    A caption column holds a string or a list of strings. Empty captions are skipped, and a row left with none is
    left out. `captions_per_image` keeps the first n of each row (all by default).
    """
    caption_columns = [caption_columns] if isinstance(caption_columns, str) else list(caption_columns)
    for column in [image_column, *caption_columns]:
        if column not in dataset.column_names:
            raise ValueError(f"column {column!r} is not in the dataset; its columns are {dataset.column_names}.")
    rows = zip(*(dataset[column] for column in caption_columns))
    captions_per_row = []
    for row in rows:
        captions = [c for value in row for c in ([value] if isinstance(value, str) else value or []) if c and c.strip()]
        captions_per_row.append(captions[:captions_per_image])
    keep = [i for i, captions in enumerate(captions_per_row) if captions]
    if len(keep) < len(dataset):
        dataset = dataset.select(keep)
    return _retrieval_set(name, _undecoded(dataset, image_column), [captions_per_row[i] for i in keep])


# ----- zero-shot classification sets ------------------------------------------------------------------------------


def classification_set_from_folder(
    root: "str | os.PathLike",
    templates: tuple[str, ...] = OPENAI_IMAGENET_TEMPLATES,
    name: str | None = None,
    class_names: list[str] | None = None,
) -> ClassificationSet:
    """A zero-shot set from `root/<class folder>/<image>`; labels follow the sorted subfolder names.

    Class names are the subfolder names with '_' read as a space, unless `class_names` gives one per subfolder in
    that sorted order (e.g. ImageNet's synset folders `n01440764/...` with readable names).
    """
    root = Path(root)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = _image_files(class_dir)
        images += files
        labels += [label] * len(files)
    if len(class_dirs) < 2 or not images:
        raise ValueError(
            f"zero-shot folder {root}: found {len(class_dirs)} class subfolders and {len(images)} images; expected "
            "at least 2 subfolders holding images."
        )
    if class_names is None:
        class_names = [d.name.replace("_", " ") for d in class_dirs]
    elif len(class_names) != len(class_dirs):
        raise ValueError(
            f"zero-shot folder {root} has {len(class_dirs)} class subfolders but {len(class_names)} class names were "
            "given; expected one name per subfolder, in sorted subfolder order."
        )
    return ClassificationSet(name or root.name, images, torch.tensor(labels), list(class_names), tuple(templates))


def classification_set_from_dataset(
    dataset: Dataset,
    image_column: str,
    label_column: str,
    name: str,
    templates: tuple[str, ...] = OPENAI_IMAGENET_TEMPLATES,
    class_names: list[str] | None = None,
) -> ClassificationSet:
    """A zero-shot set from a `datasets` split with integer labels; class names come from the label column's
    `ClassLabel` feature ('_' read as a space) unless `class_names` gives them in label order."""
    for column in (image_column, label_column):
        if column not in dataset.column_names:
            raise ValueError(f"column {column!r} is not in the dataset; its columns are {dataset.column_names}.")
    if class_names is None:
        feature = dataset.features[label_column]
        if not isinstance(feature, ClassLabel):
            raise ValueError(
                f"label column {label_column!r} is {feature}, not a ClassLabel; pass class_names to name its classes."
            )
        class_names = [c.replace("_", " ") for c in feature.names]
    labels = torch.tensor(list(dataset[label_column]), dtype=torch.long)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(
            f"label column {label_column!r} holds labels from {labels.min().item()} to {labels.max().item()}, and "
            f"there are {len(class_names)} class names; expected labels in [0, {len(class_names)})."
        )
    return ClassificationSet(name, _undecoded(dataset, image_column), labels, list(class_names), tuple(templates))


# ----- the built-in scenes ----------------------------------------------------------------------------------------

SCENE_CLASSES = [f"{colour} {shape}" for shape in SHAPES for colour in COLOURS]


def _isolate(image: Image.Image, slot: str) -> Image.Image:
    """`image` with every slot but `slot` painted in the background colour (the image's most common pixel).

    Relies on the scenes' layout: slot i is the quadrant at row i // 2, column i % 2.
    """
    pixels = np.asarray(image.convert("RGB"))
    colours, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
    isolated = np.empty_like(pixels)
    isolated[:] = colours[counts.argmax()]
    half = IMAGE_SIZE // 2
    row, column = divmod(SLOTS.index(slot), 2)
    rows, columns = slice(row * half, (row + 1) * half), slice(column * half, (column + 1) * half)
    isolated[rows, columns] = pixels[rows, columns]
    return Image.fromarray(isolated)


def scene_zeroshot_set(test_split: Dataset, name: str = "scenes_zeroshot") -> ClassificationSet:
    """Zero-shot on the scenes: every test object alone in its scene (the other slots painted over), classified
    among the 16 two-word classes "{colour} {shape}" (held-out pairs included) through `SCENE_TEMPLATES`.

    The prompts name neither size nor position, unlike any training caption, and every class name has two words,
    so a class embedding must combine two concepts.
    """
    images, labels = [], []
    for image, objects in zip(test_split["image"], test_split["objects"]):
        for obj in objects:
            images.append(_isolate(image, obj["slot"]))
            labels.append(SCENE_CLASSES.index(f"{obj['colour']} {obj['shape']}"))
    return ClassificationSet(name, images, torch.tensor(labels), SCENE_CLASSES, SCENE_TEMPLATES)


def _slot_probe_set(test_split: Dataset, name: str, images: Sequence | None, values: list, value_of, prompt):
    """Each test object against one prompt per value at its slot: `values` in candidate order, `value_of(obj)` the
    object's value, `prompt(slot, value)` the prompt."""
    prompts = [prompt(slot, value) for slot in SLOTS for value in values]
    object_image, slot_index, target, held_out = [], [], [], []
    for i, objects in enumerate(test_split["objects"]):
        for obj in objects:
            object_image.append(i)
            slot_index.append(SLOTS.index(obj["slot"]))
            target.append(values.index(value_of(obj)))
            held_out.append((obj["shape"], obj["colour"]) in HELD_OUT_PAIRS)
    candidates = torch.tensor(slot_index)[:, None] * len(values) + torch.arange(len(values))  # (n_object, n_value)
    return AtomicProbeSet(
        name, test_split["image"] if images is None else images, prompts, torch.tensor(object_image), candidates,
        torch.tensor(target), torch.tensor(held_out),
    )


def atomic_probe_set(test_split: Dataset, name: str = "scenes_atomic", images: Sequence | None = None) -> AtomicProbeSet:
    """The atomic-concept probe: each test object against all 32 "a {size} {colour} {shape} at the {slot}." prompts
    at its slot (16 "a {colour} {shape} at the {slot}." for scenes without sizes). `images` may pass the split's
    image column already in use, so it is encoded once."""
    sizes = SIZES if any(obj["size"] is not None for scene in test_split["objects"] for obj in scene) else (None,)
    # Every (size, colour, shape) combination, in the order the candidates at one slot are listed.
    combinations = list(itertools.product(sizes, COLOURS, SHAPES))
    return _slot_probe_set(
        test_split, name, images, combinations, lambda obj: (obj["size"], obj["colour"], obj["shape"]),
        lambda slot, value: describe(dict(zip(("size", "colour", "shape"), value), slot=slot)),
    )


def attribute_probe_set(
    test_split: Dataset, attribute: str, name: str | None = None, images: Sequence | None = None
) -> AtomicProbeSet:
    """The attribute-level probe: each test object's `attribute` ("colour" or "shape") alone, against one prompt per
    value at its slot: the 4 "a {colour} object at the {slot}." or the 4 "a {shape} at the {slot}." (the
    attribute-level captions of `make_scenes(partial_captions=True)`). Named `scenes_{attribute}` by default."""
    values = {"colour": list(COLOURS), "shape": list(SHAPES)}.get(attribute)
    if values is None:
        raise ValueError(f"attribute={attribute!r}; expected 'colour' or 'shape'.")
    return _slot_probe_set(
        test_split, name or f"scenes_{attribute}", images, values, lambda obj: obj[attribute],
        lambda slot, value: describe_attribute({attribute: value, "slot": slot}, attribute),
    )


def scene_eval_sets(test_split: Dataset, prefix: str = "scenes") -> list[EvalSet]:
    """Every built-in evaluation on a scenes split (from `make_scenes`):

    - `{prefix}_long`: long-caption retrieval, one long caption per image;
    - `{prefix}_multi`: multi-caption retrieval with the one-object sentences (2-4 per image);
    - `{prefix}_zeroshot`: `scene_zeroshot_set`;
    - `{prefix}_atomic`: `atomic_probe_set`;
    - `{prefix}`: mask statistics of the long captions and their sentences;
    - `{prefix}_colour`, `{prefix}_shape`: `attribute_probe_set`;
    - `{prefix}`: the mask diagnostics (`mask_diagnostics.diagnostics_set`).

    In both retrieval sets identical captions are merged, each right for every image it describes (see
    `_merged_retrieval_set`): sentences repeat across scenes, and so, rarely, do long captions. The sentences are
    each object's (`describe`), the short captions of the default scenes, also in scenes with partial captions.
    """
    images = test_split["image"]  # one object for all sets, so the images are encoded once
    long_captions = list(test_split["long_caption"])
    sentences = [[describe(obj) for obj in objects] for objects in test_split["objects"]]
    sentence_to_long = torch.tensor([i for i, captions in enumerate(sentences) for _ in captions])
    return [
        _merged_retrieval_set(f"{prefix}_long", images, [[caption] for caption in long_captions]),
        _merged_retrieval_set(f"{prefix}_multi", images, sentences),
        scene_zeroshot_set(test_split, f"{prefix}_zeroshot"),
        atomic_probe_set(test_split, f"{prefix}_atomic", images),
        MaskStatsSet(prefix, long_captions, [s for captions in sentences for s in captions], sentence_to_long),
        attribute_probe_set(test_split, "colour", f"{prefix}_colour", images),
        attribute_probe_set(test_split, "shape", f"{prefix}_shape", images),
        diagnostics_set(test_split, prefix, images),
    ]


__all__ = [
    "AtomicProbeSet", "ClassificationSet", "EvalSet", "MaskStatsSet", "OPENAI_IMAGENET_TEMPLATES", "RetrievalSet",
    "SCENE_CLASSES", "SCENE_TEMPLATES", "atomic_probe_set", "attribute_probe_set", "classification_set_from_dataset",
    "classification_set_from_folder", "load_coco_captions", "load_urban1k", "read_classnames", "read_templates",
    "retrieval_set_from_dataset", "scene_eval_sets", "scene_zeroshot_set",
]
