"""SmartCLIP: modular vision-language alignment (Xie et al., CVPR 2025) as a Hugging Face model package."""

from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification, AutoProcessor

from .configuration_smartclip import SmartCLIPConfig
from .losses import clip_loss, contrastive_loss, modular_loss
from .masking import SmartCLIPMaskHead, masked_similarity, similarity
from .modeling_smartclip import SmartCLIPModel, SmartCLIPOutput, stretch_position_embedding
from .processing_smartclip import SmartCLIPProcessor
from .retrieval import (
    EncodedTexts,
    ImageGallery,
    encode_gallery,
    encode_texts,
    search_images,
    search_texts,
)

# With the package installed, the Auto classes and the zero-shot pipeline know SmartCLIP without remote code.
AutoConfig.register(SmartCLIPConfig.model_type, SmartCLIPConfig, exist_ok=True)
AutoModel.register(SmartCLIPConfig, SmartCLIPModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(SmartCLIPConfig, SmartCLIPModel, exist_ok=True)
AutoProcessor.register(SmartCLIPConfig, SmartCLIPProcessor, exist_ok=True)

__all__ = [
    "EncodedTexts",
    "ImageGallery",
    "encode_gallery",
    "encode_texts",
    "search_images",
    "search_texts",
    "similarity",
    "SmartCLIPConfig",
    "SmartCLIPMaskHead",
    "SmartCLIPModel",
    "SmartCLIPOutput",
    "SmartCLIPProcessor",
    "clip_loss",
    "contrastive_loss",
    "masked_similarity",
    "modular_loss",
    "stretch_position_embedding",
]
