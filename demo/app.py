"""SmartCLIP demo: zero-shot classification, retrieval and mask inspection in a Gradio app.

Run `smartclip-demo --model PATH_OR_REPO_ID` (or `python app.py` in a Hugging Face Space). With the smartclip package
installed, the model loads with its classes (the checkpoint's code is never run) and must load exactly; in a Space,
where only this file is copied (by `smartclip_hub.space`), it loads with `trust_remote_code=True` and the encoders
and scoring come from the model repo's own code, so this file needs only torch, transformers, gradio, pillow, numpy
and matplotlib.

Nothing reaches out of the machine: the server binds 127.0.0.1 unless told otherwise, there is no share link, and
Gradio's analytics and version check are off (the environment variable must be set before gradio is imported).
"""

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # read once, when huggingface_hub is first imported

import argparse
import functools
import io
import json
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, UnidentifiedImageError
from transformers import (
    AutoModel,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    PretrainedConfig,
    pipeline,
)
from transformers.dynamic_module_utils import get_class_from_dynamic_module

# What the README's main job (`smartclip-compare`) saves.
DEFAULT_MODEL_DIR = "outputs/compare/smartclip"
MODEL_ENV_VAR = "SMARTCLIP_MODEL"
# Written next to app.py in a Space: {"model": "owner/repo"}.
SPACE_CONFIG_FILE = "space_config.json"
# In a gallery folder: the captions an image searches, one per line; or an imagefolder's captions per image.
CAPTIONS_FILE = "captions.txt"
METADATA_FILE = "metadata.jsonl"
BUILTIN_GALLERY_SIZE = 64
# Pixels an image may have; the size is read from the file's header, so a larger one is refused before decoding
# (a 450 KB PNG can hold 12,000 x 12,000 pixels, 430 MB decoded). 50 megapixels is a large camera's photo.
MAX_IMAGE_PIXELS = 50_000_000
# The one placeholder of a zero-shot template, substituted literally (never `str.format`).
LABEL_PLACEHOLDER = "{}"
# A caption this long is a paste accident, not a description: 248 tokens are roughly 1,000-1,500 characters.
MAX_CAPTION_CHARS = 5000
MAX_CAPTIONS = 16
MAX_LABELS = 50
MAX_TOP_K = 16
MAX_UPLOAD = "10mb"
# 32x32 scenes are unreadable at gallery size; upscale small images with nearest-neighbour for display only.
DISPLAY_MIN_SIZE = 128
ENCODE_BATCH = 64


@dataclass
class Gallery:
    """Images a caption searches and captions an image searches.

    `names[i]` describes `images[i]` in the results (a file name or a scene's caption); `skipped` lists the files
    of a gallery folder that could not be read as images.
    """

    source: str
    images: list[Image.Image]
    names: list[str]
    captions: list[str]
    skipped: list[str]

    def summary(self) -> str:
        text = f"{len(self.images)} images from {self.source}, {len(self.captions)} captions"
        if self.skipped:
            text += f"; {len(self.skipped)} unreadable file(s) skipped: {', '.join(self.skipped)}"
        return text


def open_image(path: str | os.PathLike, name: str | None = None) -> Image.Image:
    """The RGB image in the file at `path`, decoded now (a truncated file fails here, not later).

    Raises `ValueError` naming the file (`name`, default the path) when it is not an image that can be read, or when
    its header gives more than `MAX_IMAGE_PIXELS` pixels: then nothing is decoded.
    """
    name = name or str(path)
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ValueError(
                    f"{name} is {image.width:,} x {image.height:,} pixels; the limit is {MAX_IMAGE_PIXELS:,} pixels "
                    "(downscale it first)."
                )
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"{name} is not an image that can be read (PNG, JPEG, WebP, ...).") from error


def _read_imagefolder(folder: Path) -> tuple[list[Image.Image], list[str], list[str]]:
    """Images and captions of an imagefolder (`metadata.jsonl`), read the way training reads it:
    `(images, names, captions)` with each image's long caption then its short ones."""
    try:
        from smartclip_data.sources import DataArguments, DropCounter, load_split
    except ImportError as error:
        raise ValueError(
            f"--gallery {folder} has a {METADATA_FILE}: reading it needs the smartclip package (smartclip_data)."
        ) from error
    images, names, captions = [], [], []
    for row in load_split(DataArguments(dataset_name=str(folder)), "train", DropCounter()):
        path = Path(row["image"]["path"])
        try:
            images.append(open_image(path, path.name))
        except ValueError:
            continue  # too large: listed as skipped
        names.append(path.name)
        captions += [caption for caption in [row["long_caption"], *row["short_captions"]] if caption]
    return images, names, captions


def load_gallery_folder(folder: str | os.PathLike) -> Gallery:
    """Every readable image in `folder` (not recursive); other files are skipped and counted.

    An imagefolder (a `metadata.jsonl` naming each image's captions) is read by training's own reader
    (`smartclip_data.sources.load_split`), and its captions are the ones an image searches. Otherwise the captions
    come from `captions.txt` in the folder (one per line) when present, else from the built-in scenes.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--gallery {folder}: not a folder; expected a folder of images.")
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    files = [p for p in files if p.name not in (CAPTIONS_FILE, METADATA_FILE)]
    if (folder / METADATA_FILE).is_file():
        images, names, captions = _read_imagefolder(folder)
        skipped = [p.name for p in files if p.name not in set(names)]
        return Gallery(str(folder), images, names, list(dict.fromkeys(captions)), skipped)
    images, names, skipped = [], [], []
    for path in files:
        try:
            images.append(open_image(path, path.name))
            names.append(path.name)
        except ValueError:
            skipped.append(path.name)
    captions_path = folder / CAPTIONS_FILE
    if captions_path.is_file():
        captions = [line.strip() for line in captions_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        builtin = builtin_gallery()
        captions = builtin.captions if builtin else []
    return Gallery(str(folder), images, names, list(dict.fromkeys(captions)), skipped)


@functools.cache
def builtin_gallery() -> Gallery | None:
    """The built-in test scenes when the training package is installed (not in a Space), else `None`."""
    try:
        from smartclip_data.scenes import make_scenes
    except ImportError:
        return None
    scenes = make_scenes(num_train=0, num_test=BUILTIN_GALLERY_SIZE)["test"]  # the first scenes of the test split
    long_captions = list(scenes["long_caption"])
    short_captions = [caption for captions in scenes["short_captions"] for caption in captions]
    images = [image.convert("RGB") for image in scenes["image"]]
    captions = list(dict.fromkeys(long_captions + short_captions))
    return Gallery("the built-in test scenes", images, long_captions, captions, [])


def resolve_gallery(folder: str | None) -> Gallery | None:
    """`--gallery` if given, else the built-in scenes, else a `gallery/` folder shipped next to this file (Space)."""
    if folder:
        return load_gallery_folder(folder)
    shipped = Path(__file__).with_name("gallery")
    return builtin_gallery() or (load_gallery_folder(shipped) if shipped.is_dir() else None)


def default_model_source() -> str:
    """`$SMARTCLIP_MODEL`, else the repo id in a Space's `space_config.json`, else what `smartclip-compare` saves."""
    if os.environ.get(MODEL_ENV_VAR):
        return os.environ[MODEL_ENV_VAR]
    space_config = Path(__file__).with_name(SPACE_CONFIG_FILE)
    if space_config.is_file():
        return json.loads(space_config.read_text(encoding="utf-8"))["model"]
    return DEFAULT_MODEL_DIR


def to_display(image: Image.Image) -> Image.Image:
    if min(image.size) >= DISPLAY_MIN_SIZE:
        return image
    factor = -(-DISPLAY_MIN_SIZE // min(image.size))  # ceiling division
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def mask_figure(masks: np.ndarray, overlap: np.ndarray) -> Image.Image:
    """A PNG-ready image of `masks` `(n_caption, D)` as a heatmap beside their `(n_caption, n_caption)` overlap."""
    n, dims = masks.shape
    fig = Figure(figsize=(11, 1.6 + 0.4 * n), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    # Titles go below the axes: the top of the image is where Gradio draws its buttons.
    fig.suptitle("Which embedding dimensions each caption's mask keeps", x=0.01, ha="left", fontsize=11)
    mask_ax, overlap_ax = fig.subplots(1, 2, width_ratios=[4, 1])
    mask_ax.imshow(masks, aspect="auto", cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    mask_ax.set_yticks(range(n), [f"caption {i + 1}" for i in range(n)])
    mask_ax.set_xlabel(f"embedding dimension (of {dims}); dark = kept")
    overlap_ax.imshow(overlap, cmap="Oranges", vmin=0, vmax=1)
    overlap_ax.set_xticks(range(n), [str(i + 1) for i in range(n)])
    overlap_ax.set_yticks(range(n), [str(i + 1) for i in range(n)])
    overlap_ax.set_xlabel("mask overlap (IoU)")
    if n <= 8:
        for i in range(n):
            for j in range(n):
                colour = "white" if overlap[i, j] > 0.6 else "black"
                overlap_ax.text(j, i, f"{overlap[i, j]:.2f}", ha="center", va="center", fontsize=8, color=colour)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def ranking_table(name: str, items: list[str], scores: dict[str, torch.Tensor]) -> dict:
    """A Gradio table of ranked `items`, best first, with one column of cosines per scoring."""
    rows = [
        [rank + 1, item, *(round(float(values[rank]), 4) for values in scores.values())]
        for rank, item in enumerate(items)
    ]
    return {"headers": ["rank", name, *(f"{s} cos" for s in scores)], "data": rows}


def mask_overlap(masks: torch.Tensor) -> torch.Tensor:
    """Intersection over union of binary masks `(n, D)` -> `(n, n)`; two empty masks overlap fully."""
    intersection = masks @ masks.T  # (n, n)
    sizes = masks.sum(dim=-1)  # (n,)
    union = sizes[:, None] + sizes[None, :] - intersection
    return torch.where(union > 0, intersection / union.clamp_min(1), torch.ones_like(union))


def fill_template(template: str | None, labels: list[str]) -> dict[str, str]:
    """`{prompt: label}`: each label put where the template's `{}` is, by literal substitution.

    A template is text with one or more `{}` and no other braces, so that no input is ever a Python format string
    (`{0.__class__}` would read attributes, `{0:>300000000}` allocate 300 MB). An empty template means `{}`.
    """
    template = (template or "").strip() or LABEL_PLACEHOLDER
    rest = template.replace(LABEL_PLACEHOLDER, "")
    if "{" in rest or "}" in rest:
        raise ValueError(
            f"The prompt template {template!r} has braces other than '{{}}'; '{{}}' (where the label goes) is the "
            "only placeholder, with nothing inside it."
        )
    if LABEL_PLACEHOLDER not in template:
        raise ValueError(f"The prompt template {template!r} has no '{{}}' where the label goes.")
    return {template.replace(LABEL_PLACEHOLDER, label): label for label in labels}


@dataclass
class SmartCLIPCode:
    """What the demo uses of the model's package: the scorings, the scoring dispatch and the retrieval encoders."""

    scorings: tuple[str, ...]
    similarity: Callable
    encode_gallery: Callable
    encode_texts: Callable

    @classmethod
    def installed(cls) -> "SmartCLIPCode | None":
        """The installed smartclip package's, or `None` where it is not installed (a Space)."""
        try:
            from modeling_smartclip import encode_gallery, encode_texts, similarity
            from modeling_smartclip.configuration_smartclip import SCORINGS
        except ImportError:
            return None
        return cls(SCORINGS, similarity, encode_gallery, encode_texts)

    @classmethod
    def of_repo(cls, source: str) -> "SmartCLIPCode":
        """The same functions from the code files of the model repo `source` (which `smartclip-push` ships)."""

        def get(reference: str):
            return get_class_from_dynamic_module(reference, source)

        return cls(
            get("configuration_smartclip.SCORINGS"), get("masking.similarity"), get("retrieval.encode_gallery"),
            get("retrieval.encode_texts"),
        )


def load_model(source: str):
    """`(model, processor, code)` of a SmartCLIP folder or Hub id.

    With the package installed, its classes load the checkpoint, which must hold exactly the model's weights (no
    missing, unexpected or non-finite ones). In a Space, the repo's code loads it, and still no weight may be missing
    or unexpected.
    """
    model_type = PretrainedConfig.get_config_dict(source)[0].get("model_type")
    if model_type != "smartclip":
        raise ValueError(f"{source} is a {model_type!r} model; expected a SmartCLIP ('smartclip').")
    code = SmartCLIPCode.installed()
    if code is not None:
        from modeling_smartclip.loading import load_model_and_processor

        model, processor = load_model_and_processor(source, strict=True)
        return model, processor, code
    model, info = AutoModel.from_pretrained(source, trust_remote_code=True, output_loading_info=True)
    wrong = {key: sorted(names) for key, names in info.items() if key != "error_msgs" and names}
    if wrong:
        raise ValueError(f"{source}: the checkpoint's weights do not fit the model: {wrong}.")
    return model, AutoProcessor.from_pretrained(source, trust_remote_code=True), SmartCLIPCode.of_repo(source)


class SmartCLIPDemo:
    """A loaded SmartCLIP model, its zero-shot pipeline and an encoded gallery; one method per tab.

    The methods raise `ValueError` with a message for the user on bad input; `build_app` shows it in the UI.
    """

    def __init__(
        self, model, processor, gallery: Gallery | None = None, source: str = "", code: SmartCLIPCode | None = None
    ):
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.source = source
        self.gallery = gallery
        self.code = code or SmartCLIPCode.installed()
        if self.code is None:
            raise ValueError("SmartCLIPDemo needs the smartclip package, or `code=SmartCLIPCode.of_repo(repo_id)`.")
        # The processor truncates at the tokenizer's length and the model at its position table: the smaller wins.
        self.max_tokens = min(self.tokenizer.model_max_length, model.config.text_config.max_position_embeddings)
        # Registering the remote class tells the pipeline that it supports the task (else it logs an error).
        AutoModelForZeroShotImageClassification.register(type(model.config), type(model), exist_ok=True)
        self.classifier = pipeline(
            "zero-shot-image-classification", model=model, tokenizer=self.tokenizer,
            image_processor=processor.image_processor, device=model.device,
        )
        self.gallery_encoded = self.encode_images(gallery.images) if gallery and gallery.images else None
        self.captions_encoded = self.encode_captions(gallery.captions) if gallery and gallery.captions else None
        # Images go out as files in a folder Gradio serves as it is. Returned as PIL images, Gradio would write each
        # into its cache at a path named by the content's hash, once per request: concurrent requests for the same
        # image rewrite the file while another response streams it ("Too little data for declared Content-Length").
        self.output_folder = Path(tempfile.mkdtemp(prefix="smartclip-demo-"))
        gr.set_static_paths([str(self.output_folder)])
        self.gallery_files = [self.write_image(to_display(image)) for image in (gallery.images if gallery else [])]

    def write_image(self, image: Image.Image) -> str:
        """Saves `image` as a new PNG in the served folder; returns its path."""
        handle, path = tempfile.mkstemp(suffix=".png", dir=self.output_folder)
        with os.fdopen(handle, "wb") as file:
            image.save(file, format="PNG")
        return path

    @classmethod
    def from_pretrained(cls, source: str, gallery: Gallery | None = None) -> "SmartCLIPDemo":
        """Loads a SmartCLIP folder or Hub id (`load_model`), on the GPU when there is one."""
        model, processor, code = load_model(source)
        return cls(model.to("cuda" if torch.cuda.is_available() else "cpu"), processor, gallery, source, code)

    # ----- encoders: the package's retrieval helpers -----------------------------------------------------------------

    def encode_images(self, images: list[Image.Image]):
        """An `ImageGallery`: unit-norm image embeddings `(n_image, D)` and their squares."""
        return self.code.encode_gallery(self.model, images, processor=self.processor)

    def encode_captions(self, captions: list[str]):
        """`EncodedTexts`: unit-norm caption embeddings and binary masks, both `(n_caption, D)`; long captions are
        truncated (the caller reports it)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the processor's truncation warning; the UI shows a note
            return self.code.encode_texts(self.model, captions, processor=self.processor)

    def cosines(self, texts, images) -> dict[str, torch.Tensor]:
        """`(n_text, n_image)` cosine similarities under every scoring, through the package's one dispatch."""
        return {
            scoring: self.code.similarity(
                texts.text_embeds, images.image_embeds, texts.text_masks, scoring,
                image_embeds_squared=images.image_embeds_squared,
            ).cpu()
            for scoring in self.code.scorings
        }

    # ----- input checks -------------------------------------------------------------------------------------------

    def count_tokens(self, captions: list[str], what: str = "caption") -> list[int]:
        """Each caption's token count (special tokens included); raises on no caption or an absurdly long one."""
        if not captions:
            raise ValueError(f"Enter a {what}: the text box is empty.")
        for i, caption in enumerate(captions):
            if len(caption) > MAX_CAPTION_CHARS:
                raise ValueError(
                    f"{what.capitalize()} {i + 1} is {len(caption):,} characters long; the limit is "
                    f"{MAX_CAPTION_CHARS:,} (the model reads at most {self.max_tokens} tokens)."
                )
        return [len(ids) for ids in self.tokenizer(captions)["input_ids"]]

    def truncation_note(self, lengths: list[int], what: str = "caption") -> str:
        """Names the captions longer than the model reads, or says nothing."""
        cut = [f"{what} {i + 1} ({length} tokens)" for i, length in enumerate(lengths) if length > self.max_tokens]
        if not cut:
            return ""
        return f"**Truncated** to the model's {self.max_tokens} tokens (the rest was not read): {', '.join(cut)}."

    @staticmethod
    def check_image(image: Image.Image | None, what: str = "an image") -> Image.Image:
        if image is None:
            raise ValueError(f"Upload {what} first.")
        return image.convert("RGB")

    def check_ranking(self, scoring: str, k: int | float) -> int:
        """Validates the ranking choices (an API caller is not held to the radio buttons and the slider)."""
        if scoring not in self.code.scorings:
            raise ValueError(f"scoring={scoring!r}; expected one of {self.code.scorings}.")
        if not 1 <= int(k) <= MAX_TOP_K:
            raise ValueError(f"top k={k}; expected a number from 1 to {MAX_TOP_K}.")
        return int(k)

    def check_gallery(self) -> Gallery:
        if self.gallery is None or not self.gallery.images:
            raise ValueError("No gallery images to search: start the demo with --gallery FOLDER_OF_IMAGES.")
        return self.gallery

    # ----- the three tabs -----------------------------------------------------------------------------------------

    def zero_shot(self, image: Image.Image | None, labels: str, template: str) -> tuple[dict[str, float], str]:
        """Scores of `labels` (comma-separated) for `image` through the zero-shot pipeline, and a note."""
        image = self.check_image(image)
        names = list(dict.fromkeys(label.strip() for label in (labels or "").split(",") if label.strip()))
        if not names:
            raise ValueError("Enter at least one label, separated by commas (e.g. 'red circle, blue square').")
        if len(names) > MAX_LABELS:
            raise ValueError(f"{len(names)} labels given; the limit is {MAX_LABELS}.")
        prompts = fill_template(template, names)
        note = self.truncation_note(self.count_tokens(list(prompts), "prompt"), "prompt")
        # The prompts are the pipeline's labels and "{}" its template, so the pipeline's own `str.format` only ever
        # inserts a finished prompt: nothing the user typed is a format string.
        results = self.classifier(image, candidate_labels=list(prompts), hypothesis_template=LABEL_PLACEHOLDER)
        scoring = f"Scored with **{self.model.config.scoring}** scoring (the model's `config.scoring`)."
        scores = {prompts[result["label"]]: result["score"] for result in results}
        return scores, " ".join(filter(None, [scoring, note]))

    def search_images(self, caption: str, scoring: str, k: int) -> tuple[list, dict, str]:
        """The `k` gallery images best matching `caption` under `scoring`: gallery items, a table and a note."""
        gallery = self.check_gallery()
        k = self.check_ranking(scoring, k)
        caption = (caption or "").strip()
        note = self.truncation_note(self.count_tokens([caption] if caption else []))
        scores = self.cosines(self.encode_captions([caption]), self.gallery_encoded)
        scores = {s: values[0] for s, values in scores.items()}
        top = scores[scoring].topk(min(k, len(gallery.images))).indices.tolist()
        items = [(self.gallery_files[i], f"#{n + 1}  {scores[scoring][i]:.3f}") for n, i in enumerate(top)]
        table = ranking_table("image", [gallery.names[i] for i in top], {s: v[top] for s, v in scores.items()})
        summary = f"Ranked by **{scoring}** scoring. Gallery: {gallery.summary()}."
        return items, table, " ".join(filter(None, [summary, note]))

    def search_captions(self, image: Image.Image | None, scoring: str, k: int) -> tuple[dict, str]:
        """The `k` gallery captions best matching `image` under `scoring`: a table and a note."""
        image = self.check_image(image, "an image to search the captions with")
        k = self.check_ranking(scoring, k)
        if self.captions_encoded is None:
            raise ValueError(
                f"No captions to search: put a {CAPTIONS_FILE} (one caption per line) or an imagefolder "
                f"{METADATA_FILE} in the gallery."
            )
        scores = self.cosines(self.captions_encoded, self.encode_images([image]))
        scores = {s: values[:, 0] for s, values in scores.items()}
        top = scores[scoring].topk(min(k, len(self.gallery.captions))).indices.tolist()
        captions = [self.gallery.captions[i] for i in top]
        table = ranking_table("caption", captions, {s: values[top] for s, values in scores.items()})
        return table, f"Ranked by **{scoring}** scoring among {len(self.gallery.captions)} captions."

    def inspect_masks(self, text: str, image: Image.Image | None) -> tuple[Image.Image, dict, dict, str]:
        """Masks of the captions in `text` (one per line): heatmap, overlap table, per-caption table, note."""
        captions = [line.strip() for line in (text or "").splitlines() if line.strip()]
        if len(captions) > MAX_CAPTIONS:
            raise ValueError(f"{len(captions)} captions given; the limit is {MAX_CAPTIONS}, one per line.")
        lengths = self.count_tokens(captions)
        texts = self.encode_captions(captions)
        masks = texts.text_masks.float().cpu()
        overlap = mask_overlap(masks)
        heatmap = self.write_image(mask_figure(masks.numpy(), overlap.numpy()))
        names = [str(i + 1) for i in range(len(captions))]
        overlap_rows = [
            [name, *(round(float(value), 3) for value in row)] for name, row in zip(names, overlap, strict=True)
        ]
        headers = ["#", "caption", "tokens", "dims kept"]
        shown_lengths = [f"{n} (cut to {self.max_tokens})" if n > self.max_tokens else str(n) for n in lengths]
        rows = [
            [i + 1, caption, length, int(mask.sum())]
            for i, (caption, length, mask) in enumerate(zip(captions, shown_lengths, masks, strict=True))
        ]
        if image is not None:
            scores = self.cosines(texts, self.encode_images([self.check_image(image)]))
            headers += [f"{s} cos" for s in scores]
            for row, *values in zip(rows, *(values[:, 0] for values in scores.values()), strict=True):
                row += [round(float(v), 4) for v in values]
        summary = f"{len(captions)} caption(s), {masks.shape[1]} embedding dimensions."
        if image is None:
            summary += " Upload an image to compare the plain and the modular score per caption."
        overlap_table = {"headers": ["caption", *names], "data": overlap_rows}
        note = self.truncation_note(lengths)
        return heatmap, overlap_table, {"headers": headers, "data": rows}, " ".join(filter(None, [summary, note]))


def read_upload(payload: dict | None) -> Image.Image | None:
    """An uploaded file (Gradio's file payload, `{"path": ..., "orig_name": ...}`) as an RGB image."""
    if payload is None:
        return None
    name = payload.get("orig_name") or "The uploaded file"
    if not isinstance(payload.get("path"), str):
        raise ValueError(f"{name} is not an image that can be read (PNG, JPEG, WebP, ...).")
    return open_image(payload["path"], name)


def for_ui(method):
    """Adapts a `SmartCLIPDemo` method to an event that runs with `preprocess=False`.

    Gradio's own image decoding fails with a generic server error on a file that is not an image, so the events
    take the raw upload payloads and `read_upload` reads them here; a `ValueError` becomes a message in the UI.
    """

    @functools.wraps(method)
    def handler(*args):
        try:
            return method(*(read_upload(arg) if isinstance(arg, dict) else arg for arg in args))
        except ValueError as error:
            raise gr.Error(str(error), print_exception=False) from error

    return handler


ZERO_SHOT_LABELS = "red circle, blue square, green triangle"
TEMPLATE = "a photo of a {}."
RETRIEVAL_CAPTION = "a large red circle at the top left."
MASK_EXAMPLE = (
    "a large red circle at the top left.\n"
    "a small blue square at the bottom right.\n"
    "a large red circle at the top left. a small blue square at the bottom right."
)
# Every model call takes the one queue slot: the model is shared and CPU threads are better spent on one request.
RUN = dict(concurrency_id="model", concurrency_limit=1, preprocess=False)


# Small uploads (the 32x32 scenes) are shown filling their box, with visible pixels rather than a blur.
CSS = ".image-input img { object-fit: contain !important; image-rendering: pixelated; }"


def image_input(label: str, elem_id: str, height: int) -> gr.Image:
    return gr.Image(
        type="filepath", sources=["upload", "clipboard"], label=label, elem_id=elem_id, height=height,
        elem_classes=["image-input"],
    )


def example_images(demo: SmartCLIPDemo, inputs: gr.Image) -> None:
    """A few gallery images to click on, so that a visitor can try a tab without an image of their own."""
    if demo.gallery and demo.gallery.images:
        gr.Examples([[to_display(image)] for image in demo.gallery.images[:4]], inputs=[inputs], label="examples")


def zero_shot_tab(demo: SmartCLIPDemo) -> None:
    with gr.Row():
        with gr.Column():
            image = image_input("image", "zs-image", 260)
            example_images(demo, image)
            labels = gr.Textbox(label="labels (comma-separated)", value=ZERO_SHOT_LABELS, elem_id="zs-labels")
            template = gr.Textbox(label="prompt template ({} is the label)", value=TEMPLATE, elem_id="zs-template")
            button = gr.Button("Classify", variant="primary", elem_id="zs-run")
        with gr.Column():
            scores = gr.Label(label="scores", elem_id="zs-result")
            note = gr.Markdown(elem_id="zs-note")
    button.click(for_ui(demo.zero_shot), [image, labels, template], [scores, note], api_name="zero_shot", **RUN)


def retrieval_tab(demo: SmartCLIPDemo) -> None:
    widths = ["8%", "62%", "15%", "15%"]  # rank, item, and one cosine per scoring
    with gr.Row():
        with gr.Column():
            caption = gr.Textbox(label="caption", lines=2, value=RETRIEVAL_CAPTION, elem_id="rt-caption")
            scoring = gr.Radio(
                list(demo.code.scorings), value=demo.model.config.scoring, label="rank by", elem_id="rt-scoring"
            )
            k = gr.Slider(1, MAX_TOP_K, value=6, step=1, label="top k", elem_id="rt-k")
            search_images = gr.Button("Search images", variant="primary", elem_id="rt-run")
        with gr.Column():
            found = gr.Gallery(label="top images", columns=3, height="auto", object_fit="contain", elem_id="rt-gallery")
            images_table = gr.Dataframe(
                label="scores under both scorings", wrap=True, column_widths=widths, elem_id="rt-table"
            )
            images_note = gr.Markdown(elem_id="rt-note")
    with gr.Row():
        with gr.Column():
            image = image_input("an image, to search the captions", "rt-image", 220)
            search_captions = gr.Button("Search captions", variant="primary", elem_id="rt-run-image")
        with gr.Column():
            captions_table = gr.Dataframe(
                label="top captions, scores under both scorings", wrap=True, column_widths=widths, elem_id="rt-captions"
            )
            captions_note = gr.Markdown(elem_id="rt-captions-note")
    search_images.click(
        for_ui(demo.search_images), [caption, scoring, k], [found, images_table, images_note],
        api_name="search_images", **RUN,
    )
    search_captions.click(
        for_ui(demo.search_captions), [image, scoring, k], [captions_table, captions_note],
        api_name="search_captions", **RUN,
    )


def mask_tab(demo: SmartCLIPDemo) -> None:
    with gr.Row():
        with gr.Column(scale=3):
            captions = gr.Textbox(label="captions, one per line", lines=4, value=MASK_EXAMPLE, elem_id="mk-captions")
            button = gr.Button("Show masks", variant="primary", elem_id="mk-run")
        with gr.Column(scale=1):
            image = image_input("image (optional)", "mk-image", 240)
    heatmap = gr.Image(format="png", interactive=False, show_label=False, buttons=["download"], elem_id="mk-heatmap")
    note = gr.Markdown(elem_id="mk-note")
    per_caption = gr.Dataframe(label="per caption", wrap=True, elem_id="mk-scores")
    overlap = gr.Dataframe(label="mask overlap (intersection over union)", elem_id="mk-overlap")
    button.click(
        for_ui(demo.inspect_masks), [captions, image], [heatmap, overlap, per_caption, note], api_name="inspect_masks",
        **RUN,
    )


def build_app(demo: SmartCLIPDemo) -> gr.Blocks:
    """The three-tab Gradio app around `demo`; each tab's button is also an API endpoint (`gradio_client`)."""
    config = demo.model.config
    gallery = demo.gallery.summary() if demo.gallery else "none (start with --gallery FOLDER)"
    with gr.Blocks(title="SmartCLIP demo", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(
            f"# SmartCLIP\n**Model** `{demo.source}` · default scoring `{config.scoring}` · "
            f"{config.projection_dim} embedding dimensions · {demo.max_tokens} text tokens  \n**Gallery** {gallery}",
            elem_id="header",
        )
        with gr.Tab("Zero-shot", id="zero-shot"):
            zero_shot_tab(demo)
        with gr.Tab("Retrieval", id="retrieval"):
            retrieval_tab(demo)
        with gr.Tab("Mask inspection", id="masks"):
            mask_tab(demo)
    return app


def serve(app: gr.Blocks, host: str, port: int | None, prevent_thread_lock: bool = False):
    """Starts the server: no share link, no telemetry, uploads capped. Returns `(app, local_url, share_url)`."""
    return app.launch(
        server_name=host, server_port=port, share=False, prevent_thread_lock=prevent_thread_lock,
        max_file_size=MAX_UPLOAD, run_history=False, theme=gr.themes.Default(), css=CSS,
    )


def port_number(text: str) -> int:
    """`--port`'s type: a TCP port, 1 to 65535."""
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port; expected 1 to 65535")
    return port


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="smartclip-demo",
        description="Gradio demo of a SmartCLIP model: zero-shot classification, retrieval, and the caption masks.",
    )
    parser.add_argument(
        "--model", metavar="PATH_OR_REPO_ID", default=None,
        help=f"SmartCLIP folder or Hugging Face Hub id, loaded with trust_remote_code=True (default: ${MODEL_ENV_VAR}, "
        f"else {DEFAULT_MODEL_DIR}, which `smartclip-compare` saves).",
    )
    parser.add_argument(
        "--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to bind (default: $GRADIO_SERVER_NAME, else 127.0.0.1: this machine only).",
    )
    parser.add_argument(
        "--port", type=port_number, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
        help="port to serve on (default: $GRADIO_SERVER_PORT, else 7860).",
    )
    parser.add_argument(
        "--gallery", metavar="DIR", default=None,
        help=f"folder of images for retrieval; unreadable files are skipped and counted; the captions an image "
        f"searches come from an imagefolder {METADATA_FILE} (read as training reads it) or a {CAPTIONS_FILE}, one per "
        "line (default: the built-in test scenes).",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Console script `smartclip-demo`: loads the model and the gallery, then serves until interrupted. A user error
    is one line on stderr and exit status 2, as `smartclip_train.cli.user_errors` makes it for the other commands
    (this file runs alone in a Space, without the package)."""
    args = parse_args(argv)
    try:
        source = args.model or default_model_source()
        if source == DEFAULT_MODEL_DIR and not Path(source).is_dir():
            raise ValueError(
                f"no model at {DEFAULT_MODEL_DIR}. Make it with `smartclip-compare` (trains CLIP and SmartCLIP on the "
                "built-in scenes and saves it there), or pass --model PATH_OR_REPO_ID."
            )
        gallery = resolve_gallery(args.gallery)
        try:
            demo = SmartCLIPDemo.from_pretrained(source, gallery)
        except (OSError, ValueError) as error:
            raise ValueError(f"could not load the model {source}: {error}") from error
        print(f"smartclip-demo: model {source}; gallery: {gallery.summary() if gallery else 'none'}")
        try:
            serve(build_app(demo), args.host, args.port)
        except OSError as error:  # the port is taken or the address is not this machine's
            raise OSError(f"cannot serve on {args.host}:{args.port}: {error}") from error
    except (OSError, ValueError) as error:
        print(f"smartclip-demo: error: {' '.join(str(error).split())}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
