"""The model package: conversion from CLIP, the mask head, the modular loss, inputs, saving (issues 3, 10, 11)."""

import json

import pytest
import torch
from transformers import CLIPModel
from transformers.models.clip.modeling_clip import image_text_contrastive_loss

from modeling_smartclip import (
    SmartCLIPConfig,
    SmartCLIPModel,
    masked_similarity,
    stretch_position_embedding,
)
from tests.fresh_process import run_without_package


@pytest.fixture(scope="module")
def clip(clip_dir):
    return CLIPModel.from_pretrained(clip_dir).eval()


@pytest.fixture(scope="module")
def smartclip(clip):
    torch.manual_seed(0)
    return SmartCLIPModel.from_clip(clip).eval()


@pytest.fixture
def batch(processor, images):
    captions = ["a red circle at the top left.", "a small blue square.", "a large yellow cross at the bottom right."]
    return processor(text=captions, images=images, return_tensors="pt", padding=True)


# ----- conversion --------------------------------------------------------------------------------------------------


def test_stretch_matches_long_clip_formula():
    pe = torch.randn(77, 8, dtype=torch.float64)
    new = stretch_position_embedding(pe)
    assert new.shape == (248, 8)
    torch.testing.assert_close(new[:20], pe[:20])
    for i in range(56):
        for k in range(4):
            torch.testing.assert_close(new[20 + 4 * i + k], (4 - k) / 4 * pe[20 + i] + k / 4 * pe[21 + i])
    for k in range(4):
        torch.testing.assert_close(new[244 + k], pe[76] + k * (pe[76] - pe[75]) / 4)


def test_conversion_keeps_clip_features_and_logits(clip, smartclip, batch):
    assert batch["input_ids"].shape[1] <= 20
    assert smartclip.config.text_config.max_position_embeddings == 248
    assert smartclip.config.scoring == "plain"
    with torch.no_grad():
        reference = clip(**batch)
        ours = smartclip(**batch)
        torch.testing.assert_close(
            smartclip.get_text_features(batch["input_ids"], batch["attention_mask"]).pooler_output,
            clip.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output,
            atol=1e-5, rtol=0,
        )
        torch.testing.assert_close(
            smartclip.get_image_features(batch["pixel_values"]).pooler_output,
            clip.get_image_features(pixel_values=batch["pixel_values"]).pooler_output,
            atol=1e-5, rtol=0,
        )
    torch.testing.assert_close(ours.logits_per_image, reference.logits_per_image, atol=1e-5, rtol=0)


def test_long_clip_checkpoint_with_248_positions_loads_as_is(clip):
    config = clip.config.to_dict()
    config["text_config"]["max_position_embeddings"] = 248
    long_clip = CLIPModel(type(clip.config).from_dict(config))
    converted = SmartCLIPModel.from_clip(long_clip)
    torch.testing.assert_close(
        converted.text_model.embeddings.position_embedding.weight,
        long_clip.text_model.embeddings.position_embedding.weight,
    )


def test_conversion_rejects_other_architectures(tmp_path, clip_dir):
    SmartCLIPModel.from_clip(clip_dir).save_pretrained(tmp_path / "smart")
    with pytest.raises(ValueError, match="model_type 'smartclip'.*from_pretrained"):
        SmartCLIPModel.from_clip(tmp_path / "smart")
    with pytest.raises(ValueError, match="`clip` model, not `smartclip`.*from_clip"):
        SmartCLIPModel.from_pretrained(clip_dir)
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert'"):
        SmartCLIPModel.from_clip(tmp_path / "bert")


# ----- masked similarity and loss ----------------------------------------------------------------------------------


def naive_masked_similarity(text, image, masks):
    """cos(image_b * mask_a, text_a), one pair at a time."""
    out = torch.empty(len(text), len(image), dtype=text.dtype)
    for a in range(len(text)):
        for b in range(len(image)):
            out[a, b] = torch.nn.functional.cosine_similarity(image[b] * masks[a], text[a], dim=0)
    return out


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 64])
def test_masked_similarity_equals_naive_reference(chunk_size):
    generator = torch.Generator().manual_seed(0)
    text, image = torch.randn(7, 16, generator=generator, dtype=torch.float64), torch.randn(5, 16, dtype=torch.float64)
    masks = (torch.rand(7, 16, generator=generator) > 0.5).double()
    expected = naive_masked_similarity(text, image, masks)
    torch.testing.assert_close(masked_similarity(text, image, masks, chunk_size), expected)
    # The image-to-text direction is the transpose: image b against every caption, each through its own mask.
    torch.testing.assert_close(masked_similarity(text, image, masks, chunk_size).T, naive_masked_similarity(text, image, masks).T)
    squared = image.square()
    torch.testing.assert_close(masked_similarity(text, image, masks, chunk_size, squared), expected)
    # The training path (inputs that need gradients) computes the same values.
    torch.testing.assert_close(masked_similarity(text.requires_grad_(), image, masks, chunk_size).detach(), expected)


def test_modular_logits_and_loss_come_from_the_masked_similarity(smartclip, batch):
    with torch.no_grad():
        out = smartclip(**batch, return_loss=True)
    scale = smartclip.logit_scale.exp()
    logits = scale * masked_similarity(out.text_embeds, out.image_embeds, out.text_masks)
    labels = torch.arange(len(logits))
    expected_loss = (
        (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
        + smartclip.config.lambda_sparsity * out.text_mask_probs.mean()
    )
    torch.testing.assert_close(out.loss, expected_loss)

    smartclip.config.scoring = "modular"
    try:
        with torch.no_grad():
            modular = smartclip(**batch)
    finally:
        smartclip.config.scoring = "plain"
    torch.testing.assert_close(modular.logits_per_text, logits)
    assert not torch.allclose(modular.logits_per_text, out.logits_per_text)


def test_clip_loss_type_equals_transformers_clip_loss(clip, clip_dir, batch):
    model = SmartCLIPModel.from_clip(clip, loss_type="clip").eval()
    with torch.no_grad():
        ours = model(**batch, return_loss=True).loss
        reference = image_text_contrastive_loss(clip(**batch).logits_per_text)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("pooling", ["attention", "union"])
def test_gradients_reach_mask_head_through_straight_through_estimator(clip, batch, pooling):
    model = SmartCLIPModel.from_clip(clip, mask_pooling=pooling)
    out = model(**batch, return_loss=True)
    assert set(out.text_masks.unique().tolist()) <= {0.0, 1.0}
    # Only the masked contrastive term: the sparsity term alone would also reach the head, without the estimator.
    model.config.lambda_sparsity = 0.0
    model(**batch, return_loss=True).loss.backward()
    for name, parameter in model.mask_head.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


# ----- union pooling -----------------------------------------------------------------------------------------------


def test_union_mask_ignores_padding_and_is_the_max_over_tokens(clip, processor):
    model = SmartCLIPModel.from_clip(clip, mask_pooling="union").eval()
    tokens = processor.tokenizer(["a red circle at the top left."], return_tensors="pt")
    padded = processor.tokenizer(["a red circle at the top left."], return_tensors="pt", padding="max_length", max_length=30)
    with torch.no_grad():
        mask = model.get_text_masks(tokens["input_ids"], tokens["attention_mask"])
        torch.testing.assert_close(model.get_text_masks(padded["input_ids"], padded["attention_mask"]), mask)
        hidden = model.text_model(**tokens).last_hidden_state
        head = model.mask_head
        per_token = head.to_logits(head.norm(head.block(head.input_projection(hidden), None)))[0]  # (T, D)
        one_by_one = torch.stack([(torch.sigmoid(logits) > head.threshold).float() for logits in per_token])
    torch.testing.assert_close(mask[0], one_by_one.amax(dim=0))


# ----- inputs ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mask_num_attention_heads": 5}, "width 512 is not divisible by 5 attention heads"),
        ({"scoring": "masked"}, r"scoring='masked'; expected one of \('plain', 'modular'\)"),
        ({"mask_pooling": "mean"}, r"mask_pooling='mean'; expected one of \('attention', 'union'\)"),
        ({"loss_type": "siglip"}, "loss_type='siglip'"),
        ({"mask_threshold": 1.5}, "mask_threshold=1.5"),
    ],
)
def test_bad_config_is_a_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        SmartCLIPConfig(**overrides)


def test_bad_tower_config_is_a_clear_error():
    # transformers' own validation of the towers, surfaced unchanged.
    with pytest.raises(Exception, match=r"hidden size \(30\) is not a multiple of the number of attention heads \(4\)"):
        SmartCLIPConfig(text_config={"hidden_size": 30, "num_attention_heads": 4})


def test_missing_inputs_are_named(smartclip, batch):
    with pytest.raises(ValueError, match="needs both `input_ids`.*pixel_values=None"):
        smartclip(input_ids=batch["input_ids"])
    with pytest.raises(ValueError, match="input_ids=None"):
        smartclip(pixel_values=batch["pixel_values"])


def test_over_long_text_is_truncated_keeping_end_of_text(smartclip, processor):
    tokenizer = processor.tokenizer
    long_caption = " ".join(["a red circle at the top left."] * 40)  # 320 tokens
    raw = tokenizer([long_caption], return_tensors="pt")  # what the pipeline sends: no truncation
    assert raw["input_ids"].shape[1] > 248
    with pytest.warns(UserWarning, match="longer than the model's 248 positions"):
        features = smartclip.get_text_features(raw["input_ids"], raw["attention_mask"]).pooler_output
    kept = raw["input_ids"][:, :248].clone()
    kept[0, -1] = tokenizer.eos_token_id
    torch.testing.assert_close(features, smartclip.get_text_features(kept, raw["attention_mask"][:, :248]).pooler_output)
    with pytest.warns(UserWarning, match=r"captions at positions \[0\] are longer than 248 tokens"):
        processed = processor(text=[long_caption], return_tensors="pt")
    assert processed["input_ids"].shape[1] == 248 and processed["input_ids"][0, -1] == tokenizer.eos_token_id


def test_empty_caption_is_a_clear_error(processor):
    with pytest.raises(ValueError, match=r"captions at positions \[1\] are empty"):
        processor(text=["a red circle.", "  "], return_tensors="pt")


# ----- saving and loading in a process without this package ----------------------------------------------------------

FRESH_LOAD = """
import json, torch
from PIL import Image
from transformers import AutoConfig, AutoModel, AutoProcessor, pipeline
out = {}
for name in NAMES:
    path = ROOT + "/" + name
    config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    images = [Image.open(ROOT + f"/image{i}.png") for i in range(3)]
    inputs = processor(text=CAPTIONS, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**inputs).logits_per_image
    classifier = pipeline("zero-shot-image-classification", model=path, trust_remote_code=True)
    out[name] = {
        "class": type(model).__name__, "scoring": config.scoring, "pooling": config.mask_pooling,
        "logits": logits.tolist(), "pipeline": classifier(images[0], candidate_labels=LABELS),
    }
print(json.dumps(out))
"""


def test_save_load_in_fresh_process_keeps_outputs_fields_and_pipeline(tmp_path, clip, processor, images, batch):
    captions = ["a red circle at the top left.", "a small blue square.", "a large yellow cross at the bottom right."]
    labels = ["red circle", "blue square", "yellow cross", "green triangle"]
    variants = {"plain": {}, "modular": {"scoring": "modular"}, "union": {"mask_pooling": "union", "scoring": "modular"}}
    expected = {}
    for name, overrides in variants.items():
        torch.manual_seed(1)
        model = SmartCLIPModel.from_clip(clip, **overrides).eval()
        model.save_pretrained(tmp_path / name)
        processor.save_pretrained(tmp_path / name)
        with torch.no_grad():
            expected[name] = model(**batch).logits_per_image
    for i, image in enumerate(images):
        image.save(tmp_path / f"image{i}.png")

    code = f"NAMES, ROOT, CAPTIONS, LABELS = {list(variants)!r}, {str(tmp_path)!r}, {captions!r}, {labels!r}\n" + FRESH_LOAD
    loaded = run_without_package(code)

    assert sorted(p.name for p in (tmp_path / "plain").iterdir() if p.suffix in {".bin", ".pt", ".pkl"}) == []
    for name, overrides in variants.items():
        result = loaded[name]
        assert result["class"] == "SmartCLIPModel"
        assert result["scoring"] == overrides.get("scoring", "plain")
        assert result["pooling"] == overrides.get("mask_pooling", "attention")
        torch.testing.assert_close(torch.tensor(result["logits"]), expected[name], atol=1e-5, rtol=0)
        scores = [entry["score"] for entry in result["pipeline"]]
        assert sorted(entry["label"] for entry in result["pipeline"]) == sorted(labels)
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) == pytest.approx(1.0, abs=1e-5)
    # The pipeline follows the config: the same weights score differently under plain and modular scoring.
    assert loaded["plain"]["pipeline"] != loaded["modular"]["pipeline"]


def test_scoring_can_be_overridden_at_load_time(tmp_path, clip):
    SmartCLIPModel.from_clip(clip, scoring="modular").save_pretrained(tmp_path)
    assert SmartCLIPModel.from_pretrained(tmp_path, scoring="plain").config.scoring == "plain"
    with pytest.raises(ValueError, match="scoring='cosine'"):
        SmartCLIPModel.from_pretrained(tmp_path, scoring="cosine")


def test_to_clip_is_the_inverse_of_from_clip(clip):
    back = SmartCLIPModel.from_clip(clip, mask_pooling="union").to_clip()
    assert back.config.model_type == "clip" and back.config.text_config.max_position_embeddings == 248
    original = clip.state_dict()
    for name, tensor in back.state_dict().items():
        if name != "text_model.embeddings.position_embedding.weight":  # stretched from 77 to 248
            assert torch.equal(tensor, original[name]), name


def test_an_empty_mask_scores_zero_with_a_finite_gradient():
    text = torch.randn(2, 8, requires_grad=True)
    image = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    masks = torch.tensor([[0.0] * 8, [1.0] * 8], requires_grad=True)
    similarity = masked_similarity(text, image, masks)
    assert torch.all(similarity[0] == 0)
    similarity.sum().backward()
    assert torch.isfinite(masks.grad).all() and masks.grad.abs().max() < 1e4
