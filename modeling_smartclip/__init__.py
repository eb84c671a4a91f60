"""SmartCLIP: modular vision-language alignment (Xie et al., CVPR 2025) as a Hugging Face model package."""

from .configuration_smartclip import SmartCLIPConfig
from .losses import clip_loss, contrastive_loss, modular_loss
from .masking import SmartCLIPMaskHead, masked_similarity
from .modeling_smartclip import SmartCLIPModel, SmartCLIPOutput, stretch_position_embedding
from .processing_smartclip import SmartCLIPProcessor

__all__ = [
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
