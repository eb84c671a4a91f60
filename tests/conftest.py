"""Shared fixtures: tiny random CLIP checkpoints and processors built offline, a few images, the CLIP and its
SmartCLIP conversion in memory, and a batch of both. Shared helpers that are not fixtures live in `support.py`."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPModel

from modeling_smartclip import SmartCLIPModel, SmartCLIPProcessor
from smartclip_data.scratch import scratch_clip_config, scratch_processor
from tests.support import with_caption_specific_masks

torch.set_num_threads(1)  # 2 cores run pytest and the spawned processes of some tests


@pytest.fixture(scope="session")
def processor():
    return scratch_processor()


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory, processor):
    """A tiny random CLIP checkpoint with CLIP's original 77 text positions, saved with `save_pretrained`."""
    torch.manual_seed(0)
    config = scratch_clip_config(processor, hidden_size=32, projection_dim=16, max_position_embeddings=77)
    path = tmp_path_factory.mktemp("clip")
    CLIPModel(config).save_pretrained(path)
    processor.tokenizer.model_max_length = 77
    processor.save_pretrained(path)
    processor.tokenizer.model_max_length = 248
    return path


@pytest.fixture(scope="module")
def smartclip_dir(tmp_path_factory, clip_dir):
    """A SmartCLIP folder converted from `clip_dir`, as `save_pretrained` writes it."""
    path = tmp_path_factory.mktemp("smartclip")
    SmartCLIPModel.from_clip(clip_dir).save_pretrained(path)
    SmartCLIPProcessor.from_clip(clip_dir).save_pretrained(path)
    return path


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(3)]


@pytest.fixture(scope="module")
def clip(clip_dir):
    return CLIPModel.from_pretrained(clip_dir).eval()


@pytest.fixture(scope="module")
def smartclip(clip):
    """A converted SmartCLIP whose head gives caption-specific masks, as a trained head does (a fresh head is
    all-on, so its modular scores would equal the plain ones)."""
    torch.manual_seed(0)
    return with_caption_specific_masks(SmartCLIPModel.from_clip(clip).eval())


@pytest.fixture
def batch(processor, images):
    captions = ["a red circle at the top left.", "a small blue square.", "a large yellow cross at the bottom right."]
    return processor(text=captions, images=images, return_tensors="pt", padding=True)
