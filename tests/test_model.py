"""The model package: conversion from CLIP, the mask head, the modular loss, inputs, saving."""

import json
import math

import pytest
import torch
from transformers import CLIPModel
from transformers.models.clip.modeling_clip import image_text_contrastive_loss

from modeling_smartclip import (
    SmartCLIPConfig,
    SmartCLIPModel,
    SmartCLIPProcessor,
    clip_loss,
    contrastive_loss,
    masked_similarity,
    modular_loss,
    similarity,
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


# ----- the transformers model contract: SmartCLIPModel behaves as CLIPModel -------------------------------------------------------


def test_return_dict_false_returns_a_tuple_as_clip_does(clip, smartclip, batch):
    with torch.no_grad():
        as_tuple = smartclip(**batch, return_dict=False)
        reference = clip(**batch, return_dict=False)
        as_output = smartclip(**batch)
    assert isinstance(as_tuple, tuple) and isinstance(reference, tuple)
    torch.testing.assert_close(as_tuple[0], as_output.logits_per_image)
    torch.testing.assert_close(as_tuple[0], reference[0], atol=1e-5, rtol=0)
    smartclip.config.return_dict = False
    try:
        with torch.no_grad():
            assert isinstance(smartclip(**batch), tuple)
            assert isinstance(smartclip.get_text_features(batch["input_ids"]), tuple)
    finally:
        smartclip.config.return_dict = True


def test_get_features_return_clip_outputs_with_projected_pooler_output(clip, smartclip, batch):
    ids, mask, pixels = batch["input_ids"], batch["attention_mask"], batch["pixel_values"]
    with torch.no_grad():
        text = smartclip.get_text_features(ids, mask, output_hidden_states=True, output_attentions=True)
        image = smartclip.get_image_features(pixels, output_hidden_states=True)
        text_tuple = smartclip.get_text_features(ids, mask, return_dict=False)
        bigger = torch.nn.functional.interpolate(pixels, scale_factor=2)
        interpolated = smartclip.get_image_features(bigger, interpolate_pos_encoding=True).pooler_output
        reference = clip.get_image_features(bigger, interpolate_pos_encoding=True).pooler_output
    assert text.pooler_output.shape == (3, smartclip.config.projection_dim)
    assert len(text.hidden_states) == smartclip.config.text_config.num_hidden_layers + 1
    assert text.attentions is not None and image.hidden_states is not None
    assert isinstance(text_tuple, tuple)
    torch.testing.assert_close(text_tuple[1], text.pooler_output)
    torch.testing.assert_close(interpolated, reference, atol=1e-5, rtol=0)


def test_attn_implementation_reaches_the_mask_head(tmp_path, clip, batch):
    torch.manual_seed(0)
    SmartCLIPModel.from_clip(clip, scoring="modular").save_pretrained(tmp_path)
    eager = SmartCLIPModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert eager.mask_head.block.self_attn.config._attn_implementation == "eager"
    with torch.no_grad():
        expected = eager(**batch).text_mask_probs
    eager.set_attn_implementation("sdpa")
    assert eager.mask_head.block.self_attn.config._attn_implementation == "sdpa"
    with torch.no_grad():
        torch.testing.assert_close(eager(**batch).text_mask_probs, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("factor", [1.0, 0.1])
def test_init_weights_sets_every_parameter_with_initializer_factor(clip, factor):
    config = SmartCLIPModel.from_clip(clip).config
    config.initializer_factor = factor
    model = SmartCLIPModel(config)
    width = model.mask_head.pool.embed_dim
    for weight in (model.mask_head.pool.in_proj_weight, model.mask_head.pool.out_proj.weight):
        assert weight.std().item() == pytest.approx(width**-0.5 * factor, rel=0.2)
    assert torch.all(model.mask_head.pool.in_proj_bias == 0)
    # Every parameter is written by `_init_weights`: none keeps what was there before initialisation.
    for parameter in model.parameters():
        parameter.data.fill_(float("nan"))
    for module in model.modules():
        module.__dict__.pop("_is_hf_initialized", None)
    model.initialize_weights()
    not_set = [name for name, parameter in model.named_parameters() if not torch.isfinite(parameter).all()]
    assert not_set == []
    assert model.logit_scale.item() == pytest.approx(config.logit_scale_init_value)


def test_checkpoint_without_logit_scale_loads_the_initial_value(tmp_path, clip):
    from safetensors.torch import load_file, save_file

    model = SmartCLIPModel.from_clip(clip)
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["logit_scale"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = SmartCLIPModel.from_pretrained(tmp_path)
    assert loaded.logit_scale.item() == pytest.approx(model.config.logit_scale_init_value)


def test_from_clip_sends_loader_arguments_to_the_loader_not_the_config(tmp_path, clip_dir):
    secret = "hf_NotARealTokenButSecret"
    model = SmartCLIPModel.from_clip(
        clip_dir, token=secret, revision="main", local_files_only=True, cache_dir=str(tmp_path / "cache"),
        dtype=torch.float64, scoring="modular",
    )
    assert model.dtype == torch.float64 and model.config.scoring == "modular"
    model.save_pretrained(tmp_path / "model")
    saved = (tmp_path / "model" / "config.json").read_text()
    assert secret not in saved and "revision" not in json.loads(saved) and "cache_dir" not in saved
    processor = SmartCLIPProcessor.from_clip(clip_dir, token=secret, revision="main", local_files_only=True)
    processor.save_pretrained(tmp_path / "processor")
    assert not any(secret in path.read_text() for path in (tmp_path / "processor").iterdir())
    with pytest.raises(ValueError, match=r"loader arguments \['token'\]"):
        SmartCLIPModel.from_clip(CLIPModel.from_pretrained(clip_dir), token=secret)


def test_head_architecture_cannot_be_overridden_on_a_saved_model(tmp_path, clip):
    SmartCLIPModel.from_clip(clip).save_pretrained(tmp_path)
    for field, value in [("mask_pooling", "union"), ("mask_hidden_size", 64), ("mask_num_attention_heads", 2),
                         ("mask_intermediate_size", 16)]:
        with pytest.raises(ValueError, match=f"{field}: saved .*, asked {value!r}"):
            SmartCLIPModel.from_pretrained(tmp_path, **{field: value})
    assert SmartCLIPModel.from_pretrained(tmp_path, mask_pooling="attention").config.mask_pooling == "attention"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"lambda_align": -1.0}, r"lambda_align=-1.0; expected a finite value >= 0"),
        ({"lambda_sparsity": float("nan")}, r"lambda_sparsity=nan"),
        ({"lambda_align": float("inf")}, r"lambda_align=inf"),
        ({"projection_dim": 0}, r"projection_dim=0; expected a positive integer"),
        ({"projection_dim": -4}, r"projection_dim=-4"),
        ({"mask_hidden_size": 0}, r"mask_hidden_size=0"),
        ({"mask_num_attention_heads": 0}, r"mask_num_attention_heads=0"),
        ({"mask_intermediate_size": -1}, r"mask_intermediate_size=-1"),
    ],
)
def test_bad_numbers_in_config_are_errors_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        SmartCLIPConfig(**overrides)


def test_mask_head_trained_is_a_saved_field(tmp_path, clip):
    model = SmartCLIPModel.from_clip(clip)
    assert model.config.mask_head_trained is False
    model.config.mask_head_trained = True
    model.save_pretrained(tmp_path)
    assert SmartCLIPConfig.from_pretrained(tmp_path).mask_head_trained is True


# ----- bad input ---------------------------------------------------------------------------------------------------


def test_bad_model_inputs_are_value_errors_naming_the_input(smartclip, batch):
    ids, mask, pixels = batch["input_ids"], batch["attention_mask"], batch["pixel_values"]
    with pytest.raises(ValueError, match="input_ids has 2 captions and pixel_values 3 images"):
        smartclip(input_ids=ids[:2], attention_mask=mask[:2], pixel_values=pixels, return_loss=True)
    zero_row = mask.clone()
    zero_row[1] = 0
    with pytest.raises(ValueError, match=r"attention_mask rows \[1\] are all zero"):
        smartclip(input_ids=ids, attention_mask=zero_row, pixel_values=pixels)
    vocab_size = smartclip.config.text_config.vocab_size
    for bad_id in (vocab_size, -1):
        bad = ids.clone()
        bad[0, 1] = bad_id
        message = rf"input_ids holds ids \[{bad_id}\] outside the vocabulary \[0, {vocab_size}\)"
        with pytest.raises(ValueError, match=message):
            smartclip(input_ids=bad, attention_mask=mask, pixel_values=pixels)
        with pytest.raises(ValueError, match="outside the vocabulary"):
            smartclip.get_text_features(bad)


def test_empty_text_or_images_are_value_errors(processor, images):
    with pytest.raises(ValueError, match=r"text=\[\] holds no captions"):
        processor(text=[], images=images, return_tensors="pt")
    with pytest.raises(ValueError, match=r"images=\[\] holds no images"):
        processor(text=["a red circle."], images=[], return_tensors="pt")


def test_processor_of_a_plain_clip_folder_fits_248_tokens_and_tokenizes_once(clip_dir, caplog):
    loaded = SmartCLIPProcessor.from_pretrained(clip_dir)  # saved by CLIP with model_max_length 77
    long_caption = " ".join(["a red circle at the top left."] * 40)  # 320 tokens
    calls = []
    original = type(loaded.tokenizer).__call__

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    type(loaded.tokenizer).__call__ = counting
    try:
        with pytest.warns(UserWarning, match="longer than 248 tokens") as warned:
            out = loaded(text=["a red circle.", long_caption], return_tensors="pt", padding=True)
    finally:
        type(loaded.tokenizer).__call__ = original
    assert len(calls) == 1 and len(warned) == 1
    assert "indexing errors" not in caplog.text and "Token indices sequence length" not in caplog.text
    assert out["input_ids"].shape == (2, 248) and out["input_ids"][1, -1] == loaded.tokenizer.eos_token_id
    assert out["attention_mask"][0].sum() < 10 and out["attention_mask"][1].sum() == 248


def test_processor_without_model_max_length_does_not_overflow(tmp_path, processor):
    processor.save_pretrained(tmp_path)
    path = tmp_path / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config.pop("model_max_length", None)
    path.write_text(json.dumps(config))
    loaded = SmartCLIPProcessor.from_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="longer than 248 tokens"):
        out = loaded(text=[" ".join(["a red circle."] * 100)], return_tensors="pt")
    assert out["input_ids"].shape == (1, 248)


# ----- logit scale, lean masked similarity, skipped head -------------------------------------------------


@pytest.mark.parametrize("loss_type", ["smartclip", "clip"])
def test_logit_scale_is_clamped_at_ln_100_in_the_loss(clip, batch, loss_type):
    model = SmartCLIPModel.from_clip(clip, loss_type=loss_type, scoring="modular").eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100))
        at_cap = model(**batch, return_loss=True).loss
        model.logit_scale.fill_(95.0)  # exp(95) overflows float32
        beyond = model(**batch, return_loss=True)
    assert torch.isfinite(beyond.loss) and torch.isfinite(beyond.logits_per_text).all()
    torch.testing.assert_close(beyond.loss, at_cap)
    out = model(**batch, return_loss=True)
    out.loss.backward()
    assert model.logit_scale.grad.item() == 0.0  # clamped, as CLIP's clamp: no push further up
    args, cap = (out.text_embeds, out.image_embeds), torch.tensor(math.log(100))
    torch.testing.assert_close(clip_loss(*args, model.logit_scale), clip_loss(*args, cap))
    masks = torch.ones_like(out.text_embeds)
    torch.testing.assert_close(modular_loss(*args, masks, masks, model.logit_scale), modular_loss(*args, masks, masks, cap))


def naive_linear_in_mask_similarity(text, image, masks, scale):
    """The documented formula, one pair at a time: `scale * <T_a * M_a, I_b> / (|T_a| sqrt(M_a . I_b^2))`. For binary
    masks it is the masked cosine; it is also what the straight-through gradient reaches the masks through."""
    rows = []
    for a in range(len(text)):
        row = [
            scale * (text[a] * masks[a] * image[b]).sum()
            / (text[a].norm() * (masks[a] * image[b].square()).sum().clamp_min(1e-6).sqrt())
            for b in range(len(image))
        ]
        rows.append(torch.stack(row))
    return torch.stack(rows)


@pytest.mark.parametrize("backward_rows", [1024, 2])
def test_training_path_of_masked_similarity_matches_naive_values_and_gradients(monkeypatch, backward_rows):
    monkeypatch.setattr("modeling_smartclip.masking.BACKWARD_ROWS", backward_rows)
    generator = torch.Generator().manual_seed(0)
    text = torch.randn(6, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    image = torch.randn(5, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    masks = (torch.rand(6, 8, generator=generator) > 0.5).double()
    masks[0] = 0.0  # an empty mask: the clamp's floor
    masks.requires_grad_()
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(6, 5, generator=generator, dtype=torch.float64)

    ours = masked_similarity(text, image, masks, scale=scale)
    expected_values = 3.0 * naive_masked_similarity(text.detach(), image.detach(), masks.detach())
    torch.testing.assert_close(ours.detach(), expected_values)
    grads = torch.autograd.grad((ours * weights).sum(), (text, image, masks, scale))
    naive = naive_linear_in_mask_similarity(text, image, masks, scale)
    expected = torch.autograd.grad((naive * weights).sum(), (text, image, masks, scale))
    for got, want, name in zip(grads, expected, ("text", "image", "masks", "scale")):
        torch.testing.assert_close(got, want, msg=name)

    soft_masks = torch.rand(6, 8, generator=generator, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t, i, m, s: masked_similarity(t, i, m, scale=s), (text, image, soft_masks, scale)
    )


def test_training_path_keeps_one_pairwise_tensor_for_backward():
    text, image = torch.randn(40, 8, requires_grad=True), torch.randn(30, 8, requires_grad=True)
    masks = (torch.rand(40, 8) > 0.5).float().requires_grad_()
    pairwise = []

    def pack(tensor):
        if tensor.shape == (40, 30):
            pairwise.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        masked_similarity(text, image, masks, scale=torch.tensor(2.0, requires_grad=True))
    assert len(pairwise) == 1


def test_plain_forward_without_loss_skips_the_mask_head(clip, batch):
    model = SmartCLIPModel.from_clip(clip).eval()
    calls = []
    model.mask_head.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        plain = model(**batch)
        assert plain.text_masks is None and plain.text_mask_probs is None and calls == []
        with_masks = model(**batch, output_text_masks=True)
        assert with_masks.text_masks is not None and len(calls) == 1
        torch.testing.assert_close(with_masks.logits_per_image, plain.logits_per_image)
        assert model(**batch, return_loss=True).text_masks is not None  # the modular loss needs them
        model.config.scoring = "modular"
        assert model(**batch).text_masks is not None
        with pytest.raises(ValueError, match="output_text_masks=False, but scoring='modular'"):
            model(**batch, output_text_masks=False)


def test_loss_logits_are_computed_once(monkeypatch, clip, batch):
    import modeling_smartclip.modeling_smartclip as modeling

    model = SmartCLIPModel.from_clip(clip, scoring="modular")
    calls = []
    original = modeling.similarity
    monkeypatch.setattr(modeling, "similarity", lambda *a, **k: calls.append(a[3]) or original(*a, **k))
    out = model(**batch, return_loss=True)
    assert calls == ["modular"]
    torch.testing.assert_close(out.loss, contrastive_loss(out.logits_per_text) + 0.01 * out.text_mask_probs.mean())
    calls.clear()
    no_logits = model(**batch, return_loss=True, return_logits=False)
    assert calls == ["modular"] and no_logits.logits_per_image is None
    torch.testing.assert_close(no_logits.loss, out.loss)
    calls.clear()
    assert model(**batch, return_logits=False, output_text_masks=True).loss is None and calls == []


def test_score_is_a_deprecated_alias_of_similarity(smartclip, batch):
    with torch.no_grad():
        out = smartclip(**batch, output_text_masks=True)
        with pytest.warns(FutureWarning, match="SmartCLIPModel.score is deprecated"):
            scores = smartclip.score(out.text_embeds, out.image_embeds, out.text_masks, "modular")
    expected = smartclip.logit_scale.exp() * similarity(out.text_embeds, out.image_embeds, out.text_masks, "modular")
    torch.testing.assert_close(scores, expected)


def test_processor_pads_to_the_asked_length_without_cutting(processor):
    out = processor(text=["a red circle."], return_tensors="pt", padding="max_length", max_length=77)
    assert out["input_ids"].shape == (1, 77)
    with pytest.warns(UserWarning, match=r"positions \[1\] are longer than 248 tokens"):
        lists = processor(text=["a red circle.", " ".join(["a red circle."] * 100)])
    assert [len(ids) for ids in lists["input_ids"]] == [len(processor.tokenizer("a red circle.")["input_ids"]), 248]
    assert lists["input_ids"][1][-1] == processor.tokenizer.eos_token_id


def test_local_losses_of_the_ranks_average_to_the_global_loss_with_its_gradients():
    """In one process: two 'ranks' of 3 rows each, scored against the whole batch, give the global loss."""
    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(6, 8, generator=generator, dtype=torch.float64)
    leaves = [
        torch.randn(6, 8, generator=generator, dtype=torch.float64).requires_grad_(),
        torch.randn(6, 8, generator=generator, dtype=torch.float64).requires_grad_(),
        (probs > 0.5).double().requires_grad_(),
        probs.requires_grad_(),
        torch.tensor(2.0, dtype=torch.float64, requires_grad=True),
    ]
    text, image, masks, probs, scale = leaves
    for name in ("clip", "modular"):
        if name == "clip":
            global_loss = clip_loss(text, image, scale)
            local = [clip_loss(text[r], image[r], scale, text, image, r.start) for r in (slice(0, 3), slice(3, 6))]
        else:
            global_loss = modular_loss(text, image, masks, probs, scale)
            local = [
                modular_loss(text[r], image[r], masks[r], probs[r], scale, 1.0, 0.01, text, image, masks, r.start)
                for r in (slice(0, 3), slice(3, 6))
            ]
        averaged = (local[0] + local[1]) / 2
        torch.testing.assert_close(averaged, global_loss, msg=name)
        for got, want in zip(torch.autograd.grad(averaged, leaves, allow_unused=True),
                             torch.autograd.grad(global_loss, leaves, allow_unused=True)):
            if want is not None:
                torch.testing.assert_close(got, want, msg=name)
