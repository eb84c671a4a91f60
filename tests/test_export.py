"""`smartclip-export-text-encoder`: a CLIPTextModelWithProjection folder whose text_embeds are SmartCLIP's features."""

import json

import pytest
import torch
from transformers import AutoTokenizer, CLIPTextModelWithProjection

from modeling_smartclip import SmartCLIPModel
from smartclip_hub.export import main

SHORT = "a red circle"
LONG = " ".join(["a large blue square at the top left ."] * 12)  # over 77 tokens: uses the stretched positions


@pytest.fixture(scope="module")
def smartclip_dir(tmp_path_factory, clip_dir, processor):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("smartclip")
    SmartCLIPModel.from_clip(clip_dir).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_exported_text_encoder_loads_as_clip_and_matches_smartclip(smartclip_dir, tmp_path, capsys):
    out = tmp_path / "text_encoder"
    assert main([str(smartclip_dir), str(out)]) == 0
    assert str(out) in capsys.readouterr().out

    encoder, info = CLIPTextModelWithProjection.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert encoder.config.max_position_embeddings == 248
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.model_max_length == 248
    assert "processor_class" not in json.loads((out / "tokenizer_config.json").read_text())

    smartclip = SmartCLIPModel.from_pretrained(smartclip_dir).eval()
    inputs = tokenizer([SHORT, LONG], padding=True, truncation=True, return_tensors="pt")
    assert 77 < inputs["input_ids"].shape[1] <= 248
    with torch.no_grad():
        text_embeds = encoder.eval()(**inputs).text_embeds
        features = smartclip.get_text_features(**inputs).pooler_output
    assert text_embeds.shape == (2, smartclip.config.projection_dim)
    torch.testing.assert_close(text_embeds, features, rtol=0, atol=1e-5)


def test_export_of_a_folder_that_is_not_a_model_fails_clearly(tmp_path, capsys):
    assert main([str(tmp_path), str(tmp_path / "out")]) == 2
    assert "smartclip-export-text-encoder:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
