"""Identical towers for SmartCLIP and transformers' `CLIPModel`, and random inputs that fit them.

Sizes (text width x layers, vision width x layers, image / patch, projection):

- `tiny`:  32 x 1,   32 x 1,   32 / 8,    16  -- the smoke test's; measures nothing.
- `small`: 64 x 2,   64 x 2,   32 / 8,    64  -- the towers the built-in demo trains (`scratch_clip_config`).
- `mid`:   64 x 12,  96 x 12,  112 / 16, 128  -- the CPU default: ViT-B/32's depth (12 + 12 layers) and token
  counts (77 text, 50 image tokens) at 1/8 of its widths, so the mask head (one text block) is about the same
  share of the work as at ViT-B/32.
- `b32`:   512 x 12, 768 x 12, 224 / 32, 512  -- ViT-B/32 itself; for a GPU.

SmartCLIP is `SmartCLIPModel.from_clip(clip)`: every tower weight copied, a fresh mask head, 248 text positions
instead of CLIP's 77. The mask head has as many attention heads as the text tower (8 at ViT-B/32, the package
default), so its heads are as wide as the tower's: with the default 8 heads, the 64-wide `mid` head would run 8-wide
heads, which cost this CPU about 1.7x the time of 32-wide ones for the same FLOPs.
"""

import argparse
from dataclasses import dataclass

import torch
from transformers import CLIPModel, CLIPVisionConfig

from modeling_smartclip import SmartCLIPModel, SmartCLIPProcessor
from smartclip_data.scratch import scratch_clip_config, scratch_processor

CLIP_TEXT_POSITIONS = 77


@dataclass(frozen=True)
class TowerSize:
    text_width: int
    text_layers: int
    text_heads: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    image_size: int
    patch_size: int
    projection_dim: int

    def __str__(self) -> str:
        return (
            f"text {self.text_width} wide x {self.text_layers} layers, vision {self.vision_width} x "
            f"{self.vision_layers}, image {self.image_size} / patch {self.patch_size}, projection {self.projection_dim}"
        )


TOWER_SIZES = {
    "tiny": TowerSize(32, 1, 2, 32, 1, 2, 32, 8, 16),
    "small": TowerSize(64, 2, 4, 64, 2, 4, 32, 8, 64),
    "mid": TowerSize(64, 12, 2, 96, 12, 3, 112, 16, 128),
    "b32": TowerSize(512, 12, 8, 768, 12, 12, 224, 32, 512),
}


def tower_size(name: str) -> TowerSize:
    if name not in TOWER_SIZES:
        raise ValueError(f"size={name!r}; expected one of {sorted(TOWER_SIZES)}.")
    return TOWER_SIZES[name]


def add_tower_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`--size` and `--mask-heads`, for the benchmarks that build towers."""
    parser.add_argument("--size", default="mid", choices=sorted(TOWER_SIZES), help="tower size (CPU default: mid)")
    parser.add_argument("--mask-heads", type=int, help="mask head attention heads (default: the text tower's)")
    parser.add_argument("--mask-width", type=int, help="mask head width (default: the text tower's)")
    return parser


def build_processor(size: TowerSize) -> SmartCLIPProcessor:
    """The offline word-level processor, its images resized to the towers' input size."""
    return scratch_processor(image_size=size.image_size)


def build_models(
    size: TowerSize,
    processor: SmartCLIPProcessor,
    seed: int = 0,
    mask_heads: int | None = None,
    mask_width: int | None = None,
) -> tuple[CLIPModel, SmartCLIPModel]:
    """A random `CLIPModel` (77 text positions) and the SmartCLIP converted from it, same weights in both towers.

    `mask_heads` / `mask_width`: the mask head's attention heads and width; `None` means the text tower's.
    """
    config = scratch_clip_config(
        processor, hidden_size=size.text_width, num_layers=size.text_layers, num_heads=size.text_heads,
        projection_dim=size.projection_dim, max_position_embeddings=CLIP_TEXT_POSITIONS,
    )
    config.vision_config = CLIPVisionConfig(
        hidden_size=size.vision_width, intermediate_size=4 * size.vision_width, num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads, image_size=size.image_size, patch_size=size.patch_size,
    )
    torch.manual_seed(seed)
    clip = CLIPModel(config)
    smartclip = SmartCLIPModel.from_clip(
        clip, mask_num_attention_heads=mask_heads or size.text_heads, mask_hidden_size=mask_width
    )
    return clip, smartclip


def towers_from_arguments(args) -> tuple[str, TowerSize, SmartCLIPProcessor, CLIPModel, SmartCLIPModel]:
    """What `add_tower_arguments`' flags ask for (the `tiny` towers under `--quick`): `(size_name, size, processor,
    clip, smartclip)`."""
    size_name = "tiny" if args.quick else args.size
    size = tower_size(size_name)
    processor = build_processor(size)
    clip, smartclip = build_models(size, processor, mask_heads=args.mask_heads, mask_width=args.mask_width)
    return size_name, size, processor, clip, smartclip


def random_batch(
    size: TowerSize, processor: SmartCLIPProcessor, batch: int, text_len: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """`batch` random images and captions of exactly `text_len` tokens (start, words, end; no padding)."""
    tokenizer = processor.tokenizer
    generator = torch.Generator().manual_seed(seed)
    words = torch.tensor(sorted(set(tokenizer.get_vocab().values()) - set(tokenizer.all_special_ids)))
    input_ids = words[torch.randint(len(words), (batch, text_len), generator=generator)]
    input_ids[:, 0] = tokenizer.bos_token_id
    input_ids[:, -1] = tokenizer.eos_token_id
    pixel_values = torch.randn(batch, 3, size.image_size, size.image_size, generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values": pixel_values}


__all__ = [
    "CLIP_TEXT_POSITIONS", "TOWER_SIZES", "TowerSize", "add_tower_arguments", "build_models", "build_processor",
    "random_batch", "tower_size", "towers_from_arguments",
]
