"""Embedding a pool of image-caption pairs with a teacher, once, into a resumable on-disk cache.

A cache is a folder named by a key (the teacher's config and weights, its processor, the data source and the
caption choice) holding `.npy` files that grow a block at a time, and `manifest.json`, which records how many rows
are done. Every row of the source gets a row in every array, so row `i` of the cache is row `i` of the source; a row
whose image cannot be read, or whose caption is empty or not text, gets zeros and its status (a `DECISIONS` code),
and is never scored. Each block is appended to the arrays before the manifest counts it, so a run killed at any point resumes
from the last counted block (bytes written after it are cut off) and ends with the same arrays as a run that was
never interrupted.

    pool_embeddings/
        manifest.json          {"key": ..., "rows_done": 4096, "complete": false, "dim": 512, ...}
        image_embeds.npy       (rows_done, D) float32, unit norm
        text_embeds.npy        (rows_done, D) float32, unit norm
        text_masks.npy         (rows_done, D) uint8, the caption masks of a teacher with a trained head
        status.npy             (rows_done,) uint8: 0 usable, else why the row was skipped (`DECISIONS`)
"""

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from modeling_smartclip import SmartCLIPModel, SmartCLIPProcessor
from modeling_smartclip.retrieval import encode_gallery, encode_texts
from smartclip_data.sources import clean_captions, load_image

from .selection import EMPTY_CAPTION, INVALID_CAPTION, UNREADABLE_IMAGE

CAPTIONS = ("long", "short")
_HEADER_BYTES = 128  # a v1.0 .npy header of any 1-D or 2-D shape, padded as numpy pads it


class GrowingArray:
    """A `.npy` file that grows by whole rows and is, after each `append`, a valid `.npy` of the rows so far.

    The header is rewritten in place after each append: numpy pads a 1-D or 2-D header to 128 bytes, so a larger
    row count never moves the data.
    """

    def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple[int, ...], rows: int = 0):
        self.path, self.dtype, self.row_shape = Path(path), np.dtype(dtype), tuple(row_shape)
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))
        if not self.path.exists():
            self.path.write_bytes(b"")
        # Bytes past `rows` belong to a block that the manifest never counted: cut them off.
        with open(self.path, "r+b") as file:
            file.truncate(_HEADER_BYTES + rows * self.row_bytes)
        self.rows = rows
        self._write_header()

    def _write_header(self) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.rows, *self.row_shape)}
        with open(self.path, "r+b") as file:
            np.lib.format.write_array_header_1_0(file, header)
            if file.tell() != _HEADER_BYTES:
                raise ValueError(f"{self.path}: a .npy header of {file.tell()} bytes; expected {_HEADER_BYTES}.")

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path}: rows of shape {rows.shape[1:]}; expected {self.row_shape}.")
        with open(self.path, "r+b") as file:
            file.seek(_HEADER_BYTES + self.rows * self.row_bytes)
            file.write(rows.tobytes())
        self.rows += len(rows)
        self._write_header()


def fingerprint(*parts) -> str:
    """A hex digest of JSON-able parts and tensors (hashed by their bytes)."""
    hasher = hashlib.blake2b(digest_size=16)
    for part in parts:
        if isinstance(part, torch.Tensor):
            hasher.update(part.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        else:
            hasher.update(json.dumps(part, sort_keys=True, default=str).encode())
    return hasher.hexdigest()


def teacher_fingerprint(model: SmartCLIPModel, processor: SmartCLIPProcessor) -> str:
    """The teacher's config, weights and processor settings: two checkpoints with one config differ here.

    An untrained mask head (a converted CLIP gets a fresh random one at each load) is left out: its masks are
    never used.
    """
    config = {k: v for k, v in model.config.to_dict().items() if not k.startswith("_") and k != "transformers_version"}
    state = model.state_dict()
    if not model.config.mask_head_trained:
        state = {name: tensor for name, tensor in state.items() if not name.startswith("mask_head.")}
    processor_settings = {
        "image_processor": processor.image_processor.to_dict(),
        "model_max_length": processor.tokenizer.model_max_length,
        "vocab": len(processor.tokenizer),
    }
    return fingerprint(config, processor_settings, *sorted(state), *(state[name] for name in sorted(state)))


def pair_caption(long_caption, short_captions, caption: str = "long") -> str | None:
    """The caption scored with the image: `"long"` (the long caption, else the first short one) or `"short"` (the
    first short caption, else the long one); `""` when the row has none, None when a caption is not text."""
    try:
        long_caption, short_captions = clean_captions(long_caption, short_captions)
    except ValueError:  # e.g. a number in a caption column
        return None
    first_short = short_captions[0] if short_captions else ""
    return (long_caption or first_short) if caption == "long" else (first_short or long_caption)


class EmbeddingCache:
    """The cache folder of one (teacher, data, caption) key: see the module docstring."""

    def __init__(self, folder: Path, key: str, dim: int, with_text: bool = True, with_masks: bool = False,
                 description: dict | None = None):
        self.folder, self.key, self.dim, self.with_text = Path(folder), key, dim, with_text
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest = self._read_manifest()
        if manifest is not None and (manifest["key"] != key or manifest["dim"] != dim):
            raise ValueError(f"{self.folder} holds the embeddings of another teacher or source (key mismatch).")
        self.rows_done = manifest["rows_done"] if manifest else 0
        self.complete = manifest["complete"] if manifest else False
        self.description = description or {}
        self.arrays = {"image_embeds": GrowingArray(self.folder / "image_embeds.npy", np.float32, (dim,), self.rows_done),
                       "status": GrowingArray(self.folder / "status.npy", np.uint8, (), self.rows_done)}
        if with_text:
            self.arrays["text_embeds"] = GrowingArray(self.folder / "text_embeds.npy", np.float32, (dim,), self.rows_done)
        if with_masks:
            self.arrays["text_masks"] = GrowingArray(self.folder / "text_masks.npy", np.uint8, (dim,), self.rows_done)

    @property
    def manifest_path(self) -> Path:
        return self.folder / "manifest.json"

    def _read_manifest(self) -> dict | None:
        return json.loads(self.manifest_path.read_text()) if self.manifest_path.is_file() else None

    def _write_manifest(self) -> None:
        manifest = {"key": self.key, "dim": self.dim, "rows_done": self.rows_done, "complete": self.complete,
                    "with_text": self.with_text, "source": self.description}
        temporary = self.manifest_path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(temporary, self.manifest_path)  # atomic: a kill leaves the old manifest or the new one

    def append(self, block: dict[str, np.ndarray]) -> None:
        """Appends one block of rows to every array (`block` may hold more), then counts it in the manifest."""
        for name, array in self.arrays.items():
            array.append(block[name])
        self.rows_done += len(block["status"])
        self._write_manifest()

    def finish(self) -> None:
        self.complete = True
        self._write_manifest()

    def load(self, name: str) -> np.ndarray:
        """A read-only memory map of one array."""
        array = self.arrays[name]
        if not self.rows_done:  # numpy cannot memory-map an empty array
            return np.zeros((0, *array.row_shape), array.dtype)
        return np.load(array.path, mmap_mode="r")


@torch.no_grad()
def embed_block(
    model: SmartCLIPModel,
    processor: SmartCLIPProcessor,
    images: list,
    captions: list[str] | None,
) -> dict[str, np.ndarray]:
    """One block of rows as cache arrays; a row whose image fails to decode, or without a usable caption, is zeros.

    Args:
        images: undecoded image values (anything `load_image` reads).
        captions: one caption per image (`""`: none, None: not text), or None for images only (a target set).
    """
    size, dim = len(images), model.config.projection_dim
    status = np.zeros(size, dtype=np.uint8)
    decoded = {}
    for i, value in enumerate(images):
        if captions is not None and not captions[i]:
            status[i] = EMPTY_CAPTION if captions[i] == "" else INVALID_CAPTION
            continue
        try:
            decoded[i] = load_image(value)
        except Exception:  # image decoders raise many types (OSError, SyntaxError, DecompressionBombError...)
            status[i] = UNREADABLE_IMAGE
    block = {"status": status, "image_embeds": np.zeros((size, dim), np.float32)}
    if captions is not None:
        block["text_embeds"] = np.zeros((size, dim), np.float32)
        block["text_masks"] = np.zeros((size, dim), np.uint8)
    usable = list(decoded)
    if not usable:
        return block
    gallery = encode_gallery(model, [decoded[i] for i in usable], batch_size=len(usable), processor=processor)
    block["image_embeds"][usable] = gallery.image_embeds.cpu().numpy()
    if captions is not None:
        texts = encode_texts(model, [captions[i] for i in usable], batch_size=len(usable), processor=processor)
        block["text_embeds"][usable] = texts.text_embeds.cpu().numpy()
        block["text_masks"][usable] = texts.text_masks.cpu().numpy().astype(np.uint8)
    return block


def embed_rows(
    model: SmartCLIPModel,
    processor: SmartCLIPProcessor,
    batches: Iterable[dict[str, list]],
    cache: EmbeddingCache,
    image_column: str,
    caption_of: Callable[[dict[str, list], int], str] | None = None,
    on_block: Callable[[int], None] | None = None,
) -> EmbeddingCache:
    """Embeds `batches` (dicts of columns, as `Dataset.iter` yields them, starting at `cache.rows_done`) into
    `cache`, one block per batch, and marks it complete at the end.

    Args:
        caption_of: `(batch, i) -> caption` of row i; None embeds images only.
        on_block: called with the rows done after each block is counted (a progress bar).
    """
    model.eval()
    for batch in batches:
        images = batch[image_column]
        captions = None if caption_of is None else [caption_of(batch, i) for i in range(len(images))]
        cache.append(embed_block(model, processor, images, captions))
        if on_block is not None:
            on_block(cache.rows_done)
    cache.finish()
    return cache


__all__ = [
    "CAPTIONS", "EmbeddingCache", "GrowingArray", "embed_block", "embed_rows", "fingerprint",
    "pair_caption", "teacher_fingerprint",
]
