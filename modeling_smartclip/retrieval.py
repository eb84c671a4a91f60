"""Retrieval with either scoring: encode a gallery once, then rank captions against images and images against captions.

Plain scoring is CLIP's cosine; modular scoring is `cos(image * mask(caption), caption)` through
`masked_similarity`, for which the gallery keeps the squared image embeddings the masked norm needs.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike

import torch
from PIL import Image
from tqdm.auto import tqdm

from .masking import similarity
from .modeling_smartclip import SmartCLIPModel


@dataclass
class ImageGallery:
    """Unit-norm image embeddings `(n_image, D)` and their squares (the modular denominator's input)."""

    image_embeds: torch.Tensor
    image_embeds_squared: torch.Tensor

    @classmethod
    def from_embeddings(cls, image_embeds: torch.Tensor) -> "ImageGallery":
        image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
        return cls(image_embeds, image_embeds.square())

    def __len__(self) -> int:
        return len(self.image_embeds)


@dataclass
class EncodedTexts:
    """Unit-norm caption embeddings `(n_text, D)` and their binary masks `(n_text, D)`."""

    text_embeds: torch.Tensor
    text_masks: torch.Tensor


def _finite(embeds: torch.Tensor, what: str) -> torch.Tensor:
    """`embeds` `(n, D)`, or a `ValueError` naming the rows that hold a NaN or an infinity: every score of such a row
    is NaN, and a search over NaN scores returns arbitrary results with no sign of it."""
    bad = (~embeds.isfinite().all(dim=1)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"the model gave NaN or infinite embeddings for {len(bad)} {what} (rows {bad[:10]}); check "
                         "its weights.")
    return embeds


def _batches(items, batch_size: int, progress: bool, description: str):
    """`items` (a tensor or a list) in slices of `batch_size`, with a tqdm bar if `progress`."""
    starts = range(0, len(items), batch_size)
    if progress:
        starts = tqdm(starts, desc=description, unit="batch")
    return (items[start : start + batch_size] for start in starts)


def _open_image(image):
    """A PIL image from a PIL image or a path."""
    if isinstance(image, (str, PathLike)):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    return image


@torch.no_grad()
def encode_gallery(
    model: SmartCLIPModel,
    images: "torch.Tensor | Sequence[Image.Image | str | PathLike]",
    batch_size: int = 64,
    processor=None,
    progress: bool = False,
) -> ImageGallery:
    """Encodes images in batches into an `ImageGallery` of `n_image` unit-norm embeddings.

    Args:
        images: `(n_image, 3, H, W)` pixel values, or (with `processor`) PIL images or image paths, which are opened
            and processed one batch at a time (a 100k-image gallery never holds all its pixels).
        processor: a `SmartCLIPProcessor` (or CLIP's) for raw images.
        progress: show a tqdm progress bar.
    """
    if not torch.is_tensor(images):
        if processor is None:
            raise ValueError("encode_gallery got raw images (not a pixel_values tensor); pass `processor=` too.")
        images = list(images)
    features = []
    for batch in _batches(images, batch_size, progress, "images"):
        if not torch.is_tensor(batch):
            batch = processor(images=[_open_image(image) for image in batch], return_tensors="pt")["pixel_values"]
        features.append(model.get_image_features(batch.to(model.device, model.dtype)).pooler_output.float())
    if not features:
        raise ValueError("encode_gallery got no images.")
    return ImageGallery.from_embeddings(_finite(torch.cat(features), "images"))  # (n_image, D)


@torch.no_grad()
def encode_texts(
    model: SmartCLIPModel,
    texts: "torch.Tensor | Sequence[str]",
    attention_mask: torch.Tensor | None = None,
    batch_size: int = 256,
    processor=None,
    progress: bool = False,
) -> EncodedTexts:
    """Encodes captions in batches: embeddings and masks from one pass of the text tower each.

    Args:
        texts: `(n_text, seq_len)` token ids (with `attention_mask`), or (with `processor`) a list of captions,
            tokenized one batch at a time.
        processor: a `SmartCLIPProcessor` for raw captions.
        progress: show a tqdm progress bar.
    """
    if not torch.is_tensor(texts):
        if processor is None:
            raise ValueError("encode_texts got raw captions (not an input_ids tensor); pass `processor=` too.")
        texts = [texts] if isinstance(texts, str) else list(texts)
    embeds, masks = [], []
    for start, batch in enumerate(_batches(texts, batch_size, progress, "captions")):
        if torch.is_tensor(batch):
            rows = slice(start * batch_size, (start + 1) * batch_size)
            batch_mask = None if attention_mask is None else attention_mask[rows].to(model.device)
        else:
            tokens = processor(text=batch, return_tensors="pt", padding=True)
            batch, batch_mask = tokens["input_ids"], tokens["attention_mask"].to(model.device)
        text_embeds, text_masks = model.encode_text_and_masks(batch.to(model.device), batch_mask)  # (b, D), (b, D)
        embeds.append(text_embeds.float())
        masks.append(text_masks.float())
    if not embeds:
        raise ValueError("encode_texts got no captions.")
    return EncodedTexts(_finite(torch.cat(embeds), "captions"), torch.cat(masks))


def search_images(
    texts: EncodedTexts, gallery: ImageGallery, k: int = 10, scoring: str = "modular", chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k images for each caption: `(scores, indices)`, both `(n_text, k)`, best first."""
    scores = similarity(
        texts.text_embeds, gallery.image_embeds, texts.text_masks, scoring, chunk_size, gallery.image_embeds_squared
    )  # (n_text, n_image)
    return scores.topk(min(k, len(gallery)), dim=1)


def search_texts(
    texts: EncodedTexts, gallery: ImageGallery, k: int = 10, scoring: str = "modular", chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k captions for each image: `(scores, indices)`, both `(n_image, k)`, best first.

    Each caption keeps its own mask, so an image is compared with every caption through that caption's mask.
    """
    scores = similarity(
        texts.text_embeds, gallery.image_embeds, texts.text_masks, scoring, chunk_size, gallery.image_embeds_squared
    )  # (n_text, n_image)
    return scores.T.topk(min(k, len(texts.text_embeds)), dim=1)


__all__ = [
    "EncodedTexts", "ImageGallery", "encode_gallery", "encode_texts", "search_images", "search_texts",
]
