"""Small towers and an offline processor, for training from scratch on the built-in scenes (and for the tests).

The defaults (hidden 64, 2 layers, 4 heads, patch 8, projection 64) are the smallest towers that learned the scenes'
concepts in our CPU runs, and they train in minutes on 2 CPU cores.
"""

from transformers import CLIPConfig, CLIPImageProcessorPil

from modeling_smartclip import SmartCLIPProcessor

from .scenes import IMAGE_SIZE, VOCABULARY
from .tokenizer import build_word_tokenizer


def scratch_processor(image_size: int = IMAGE_SIZE, words=VOCABULARY, model_max_length: int = 248) -> SmartCLIPProcessor:
    """A processor with a word-level CLIP tokenizer over `words` and a CLIP image processor at `image_size`."""
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return SmartCLIPProcessor(image_processor=image_processor, tokenizer=build_word_tokenizer(words, model_max_length))


def scratch_clip_config(
    processor: SmartCLIPProcessor,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    patch_size: int = 8,
    projection_dim: int = 64,
    max_position_embeddings: int = 248,
) -> CLIPConfig:
    """A small `CLIPConfig` whose text tower fits `processor`'s tokenizer and whose vision tower fits its images."""
    tokenizer = processor.tokenizer
    tower = dict(
        hidden_size=hidden_size, intermediate_size=4 * hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
    )
    return CLIPConfig(
        text_config=dict(
            tower, vocab_size=len(tokenizer), max_position_embeddings=max_position_embeddings,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(tower, image_size=processor.image_processor.crop_size["height"], patch_size=patch_size),
        projection_dim=projection_dim,
    )


__all__ = ["scratch_clip_config", "scratch_processor"]
