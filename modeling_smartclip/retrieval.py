"""Retrieval with either scoring: encode a gallery once, then rank captions against images and images against captions.

Plain scoring is CLIP's cosine; modular scoring is `cos(image * mask(caption), caption)` through
`masked_similarity`, for which the gallery keeps the squared image embeddings the masked norm needs.
"""

from dataclasses import dataclass

import torch

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


@torch.no_grad()
def encode_gallery(model: SmartCLIPModel, pixel_values: torch.Tensor, batch_size: int = 64) -> ImageGallery:
    """Encodes `(n_image, 3, H, W)` images in batches into an `ImageGallery`."""
    features = [
        model.get_image_features(pixel_values[i : i + batch_size].to(model.device, model.dtype))
        for i in range(0, len(pixel_values), batch_size)
    ]
    return ImageGallery.from_embeddings(torch.cat(features).float())


@torch.no_grad()
def encode_texts(
    model: SmartCLIPModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, batch_size: int = 256
) -> EncodedTexts:
    """Encodes `(n_text, seq_len)` token ids in batches: embeddings and masks from one pass of the text tower."""
    embeds, masks = [], []
    for i in range(0, len(input_ids), batch_size):
        rows = slice(i, i + batch_size)
        batch_mask = None if attention_mask is None else attention_mask[rows].to(model.device)
        text_embeds, text_masks = model.encode_text(input_ids[rows].to(model.device), batch_mask)
        embeds.append(text_embeds.float())
        masks.append(text_masks.float())
    return EncodedTexts(torch.cat(embeds), torch.cat(masks))


def text_image_similarity(
    texts: EncodedTexts, gallery: ImageGallery, scoring: str = "modular", chunk_size: int = 1024
) -> torch.Tensor:
    """`(n_text, n_image)` similarities (unscaled cosines) under `scoring`: `"plain"` or `"modular"`."""
    return similarity(
        texts.text_embeds, gallery.image_embeds, texts.text_masks, scoring, chunk_size, gallery.image_embeds_squared
    )


def search_images(
    texts: EncodedTexts, gallery: ImageGallery, k: int = 10, scoring: str = "modular", chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k images for each caption: `(scores, indices)`, both `(n_text, k)`, best first."""
    similarity = text_image_similarity(texts, gallery, scoring, chunk_size)
    return similarity.topk(min(k, len(gallery)), dim=1)


def search_texts(
    texts: EncodedTexts, gallery: ImageGallery, k: int = 10, scoring: str = "modular", chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k captions for each image: `(scores, indices)`, both `(n_image, k)`, best first.

    Each caption keeps its own mask, so an image is compared with every caption through that caption's mask.
    """
    similarity = text_image_similarity(texts, gallery, scoring, chunk_size)
    return similarity.T.topk(min(k, len(texts.text_embeds)), dim=1)


__all__ = ["EncodedTexts", "ImageGallery", "encode_gallery", "encode_texts", "search_images", "search_texts", "text_image_similarity"]
