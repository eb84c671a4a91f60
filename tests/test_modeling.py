"""`modeling_smartclip/modeling_smartclip.py`: conversion from CLIP and back, the transformers model contract, inputs,
saving and loading (also in a process without this package), and when `forward` runs the mask head."""

import json

import pytest
import torch
from transformers import CLIPModel

from modeling_smartclip import SmartCLIPModel, SmartCLIPProcessor, stretch_position_embedding
from tests.support import run_without_package


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


def test_return_dict_false_tuples_index_as_clips_do(clip, smartclip, batch):
    # CLIPModel's fields come first, in its order; SmartCLIP's masks after them (issue 25, item 11).
    with torch.no_grad():
        ours = smartclip(**batch, return_loss=True, output_text_masks=True, return_dict=False)
        reference = clip(**batch, return_loss=True, return_dict=False)
    assert len(ours) == len(reference) + 2
    for index, (got, want) in enumerate(zip(ours, reference)):
        assert type(got) is type(want), index
        if torch.is_tensor(want):
            assert got.shape == want.shape, index
    assert ours[-2].shape == ours[-1].shape == (3, smartclip.config.projection_dim)  # text_masks, text_mask_probs


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
