"""`smartclip-export-text-encoder`: a diffusers-layout folder of a CLIP text encoder and tokenizer that are
SmartCLIP's text tower, with its 248 positions."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

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


def _tokens(out):
    tokenizer = AutoTokenizer.from_pretrained(out, subfolder="tokenizer")
    assert tokenizer.model_max_length == 248
    config = json.loads((out / "tokenizer" / "tokenizer_config.json").read_text())
    assert "processor_class" not in config and "auto_map" not in config  # a plain tokenizer: no SmartCLIP code
    inputs = tokenizer([SHORT, LONG], padding=True, truncation=True, return_tensors="pt")
    assert 77 < inputs["input_ids"].shape[1] <= 248
    return inputs


def test_exported_text_encoder_is_smartclips_text_tower(smartclip_dir, tmp_path, capsys):
    out = tmp_path / "export"
    assert main([str(smartclip_dir), str(out)]) == 0
    assert str(out) in capsys.readouterr().out

    encoder, info = CLIPTextModel.from_pretrained(out, subfolder="text_encoder", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert encoder.config.max_position_embeddings == 248
    inputs = _tokens(out)
    smartclip = SmartCLIPModel.from_pretrained(smartclip_dir).eval()
    with torch.no_grad():
        hidden = encoder.eval()(**inputs).last_hidden_state
        expected = smartclip.text_model(**inputs).last_hidden_state
    torch.testing.assert_close(hidden, expected, rtol=0, atol=1e-5)


def test_export_with_projection_gives_smartclips_text_features(smartclip_dir, tmp_path):
    out = tmp_path / "export"
    assert main([str(smartclip_dir), str(out), "--with_projection"]) == 0

    encoder, info = CLIPTextModelWithProjection.from_pretrained(out, subfolder="text_encoder", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    inputs = _tokens(out)
    smartclip = SmartCLIPModel.from_pretrained(smartclip_dir).eval()
    with torch.no_grad():
        text_embeds = encoder.eval()(**inputs).text_embeds
        features = smartclip.get_text_features(**inputs).pooler_output
    assert text_embeds.shape == (2, smartclip.config.projection_dim)
    torch.testing.assert_close(text_embeds, features, rtol=0, atol=1e-5)


def test_export_of_a_folder_that_is_not_a_model_fails_clearly(tmp_path, capsys):
    assert main([str(tmp_path), str(tmp_path / "out")]) == 2
    assert "smartclip-export-text-encoder:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_checkpoint_with_missing_weights(smartclip_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(smartclip_dir, broken)
    state = load_file(broken / "model.safetensors")
    del state["logit_scale"], state["mask_head.norm.weight"]
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})

    assert main([str(broken), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "missing (would be freshly initialised): logit_scale, mask_head.norm.weight" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore:.*(credentials|code pointers)")
def test_export_copies_neither_credentials_nor_foreign_code_pointers(smartclip_dir, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(smartclip_dir, source)
    secrets = {"token": "hf_" + "ExportMustNotCopyThisToken1", "use_auth_token": "hf_" + "NorThisOneEither22222",
               "wandb_api_key": "fedcba9876543210" * 2}
    pipelines = {"zero-shot-image-classification": {"impl": "evil/code--x.P", "pt": ["AutoModel"]}}
    for name, extra in (("config.json", {"custom_pipelines": pipelines}), ("tokenizer_config.json", {})):
        config = json.loads((source / name).read_text())
        config.update(**secrets, **extra)
        (source / name).write_text(json.dumps(config))

    assert main([str(source), str(tmp_path / "out")]) == 0

    written = b"".join(path.read_bytes() for path in (tmp_path / "out").rglob("*") if path.is_file())
    assert [name for name, value in secrets.items() if value.encode() in written] == []
    assert b"evil/code" not in written
    CLIPTextModel.from_pretrained(tmp_path / "out", subfolder="text_encoder")
    AutoTokenizer.from_pretrained(tmp_path / "out", subfolder="tokenizer")
