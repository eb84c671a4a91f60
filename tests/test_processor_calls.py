"""The call patterns of transformers' own CLIPProcessor tests (tests/models/clip/test_processing_clip.py and the
ProcessorTesterMixin it uses) and zero-shot-image-classification pipeline tests, on SmartCLIPProcessor and
SmartCLIPModel: for captions within the limit, SmartCLIPProcessor gives exactly what CLIPProcessor gives."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer, pipeline

from modeling_smartclip import SmartCLIPModel, SmartCLIPProcessor
from smartclip_data.scratch import scratch_clip_config, scratch_processor

CAPTIONS = ["lower newer", " upper older longer string"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("processor")
    scratch_processor().save_pretrained(path)
    return path


def components(folder, **tokenizer_kwargs) -> dict:
    """The mixin's `get_component`: each part loaded from the saved folder, the tokenizer with init arguments."""
    return {"image_processor": CLIPImageProcessorPil.from_pretrained(folder),
            "tokenizer": CLIPTokenizer.from_pretrained(folder, **tokenizer_kwargs)}


def image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 400, 3), dtype=np.uint8))


# (tokenizer init arguments, call arguments): the mixin's tests, and the issue's call (item 9).
CALLS = {
    "truncation_and_max_length_padding": ({}, dict(text=CAPTIONS, truncation=True, padding="max_length", max_length=77,
                                                   return_tensors="pt")),
    "tokenizer_defaults_preserved": (dict(max_length=117, padding="max_length"),
                                     dict(text=CAPTIONS[0], images="IMAGE", return_tensors="pt")),
    "kwargs_override_tokenizer_defaults": (dict(padding="longest"), dict(
        text=CAPTIONS[0], images="IMAGE", return_tensors="pt", max_length=112, padding="max_length")),
    "unstructured": ({}, dict(text=CAPTIONS[0], images="IMAGE", return_tensors="pt", do_rescale=True,
                              rescale_factor=-1.0, padding="max_length", max_length=76)),
    "unstructured_batched": ({}, dict(text=CAPTIONS, images=["IMAGE", "IMAGE"], return_tensors="pt", do_rescale=True,
                                      rescale_factor=-1.0, padding="longest", max_length=76)),
    "structured_nested": ({}, dict(text=CAPTIONS[0], images="IMAGE", common_kwargs={"return_tensors": "pt"},
                                   images_kwargs={"do_rescale": True, "rescale_factor": -1.0},
                                   text_kwargs={"padding": "max_length", "max_length": 76})),
    "text_only_string": ({}, dict(text=CAPTIONS[0])),
    "text_only_numpy": ({}, dict(text=CAPTIONS, return_tensors="np", padding=True)),
    "text_and_images": ({}, dict(text=CAPTIONS[0], images="IMAGE")),
    "images_only": ({}, dict(images="IMAGE", return_tensors="np")),
    "truncation_false": ({}, dict(text=CAPTIONS, truncation=False, padding=True, return_tensors="pt")),
}


def _call(processor, arguments: dict):
    arguments = dict(arguments)
    if arguments.get("images") == "IMAGE":
        arguments["images"] = image()
    elif isinstance(arguments.get("images"), list):
        arguments["images"] = [image() for _ in arguments["images"]]
    return processor(**arguments)


def _plain(value):
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value.tolist() if hasattr(value, "tolist") else value


@pytest.mark.parametrize("name", list(CALLS))
def test_call_pattern_gives_what_clip_processor_gives(folder, name):
    tokenizer_kwargs, arguments = CALLS[name]
    expected = _call(CLIPProcessor(**components(folder, **tokenizer_kwargs)), arguments)
    got = _call(SmartCLIPProcessor(**components(folder, **tokenizer_kwargs)), arguments)
    assert list(got) == list(expected)
    for key in expected:
        assert type(got[key]) is type(expected[key]), key
        assert _plain(got[key]) == _plain(expected[key]), key


def test_the_lengths_the_mixin_asserts(folder):
    processor = SmartCLIPProcessor(**components(folder, max_length=117, padding="max_length"))
    assert processor(text=CAPTIONS[0], images=image(), return_tensors="pt")["input_ids"].shape[-1] == 117
    processor = SmartCLIPProcessor(**components(folder))
    out = _call(processor, CALLS["structured_nested"][1])
    assert out["input_ids"].shape[-1] == 76 and out["pixel_values"][0][0].mean() <= 0
    out = _call(processor, CALLS["unstructured_batched"][1])
    assert out["input_ids"].shape[1] < 76
    assert set(_call(processor, CALLS["text_and_images"][1])) == set(processor.model_input_names)


def test_max_length_below_the_caption_cuts_it_keeping_end_of_text(folder):
    processor = SmartCLIPProcessor(**components(folder))
    with pytest.warns(UserWarning, match=r"positions \[1\] are longer than 5 tokens"):
        out = processor(text=["red", "a red circle at the top left."], truncation=True, padding="max_length",
                        max_length=5, return_tensors="pt")
    assert out["input_ids"].shape == (2, 5) and out["input_ids"][1, -1] == processor.tokenizer.eos_token_id


def test_doubly_passed_or_missing_inputs_are_value_errors(folder):
    processor = SmartCLIPProcessor(**components(folder))
    with pytest.raises(ValueError, match="passed two times"):
        processor(text=[CAPTIONS[0]], images=image(), images_kwargs={"do_rescale": True, "rescale_factor": -1.0},
                  do_rescale=True, return_tensors="pt")
    with pytest.raises(ValueError, match="at least one input"):
        processor()


def test_decode_and_save_load_as_clip_processor(folder, tmp_path):
    parts = components(folder)
    processor = SmartCLIPProcessor(**parts)
    ids = [[1, 4, 5, 8, 1, 0, 8], [3, 4, 3, 1, 1, 8, 9]]
    assert processor.batch_decode(ids) == parts["tokenizer"].batch_decode(ids)
    processor.save_pretrained(tmp_path)
    loaded = SmartCLIPProcessor.from_pretrained(tmp_path)
    # `auto_map` enters `to_dict` when a processor is saved (transformers sets it then), so only the saved one has it.
    assert loaded.to_dict() == {key: value for key, value in processor.to_dict().items() if key != "auto_map"}
    assert loaded.tokenizer.get_vocab() == parts["tokenizer"].get_vocab()
    changed = SmartCLIPProcessor.from_pretrained(tmp_path, do_normalize=False)
    assert changed.image_processor.do_normalize is False


# ----- the model and the zero-shot pipeline ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, folder):
    processor = SmartCLIPProcessor.from_pretrained(folder)
    torch.manual_seed(0)
    clip = CLIPModel(scratch_clip_config(processor, hidden_size=32, projection_dim=16)).eval()
    path = tmp_path_factory.mktemp("smartclip")
    SmartCLIPModel.from_clip(clip).save_pretrained(path)
    processor.save_pretrained(path)
    clip.save_pretrained(path / "clip")
    processor.save_pretrained(path / "clip")
    return path


def test_model_takes_the_issue_call_and_scores_as_clip(model_dir):
    processor = SmartCLIPProcessor.from_pretrained(model_dir)
    inputs = processor(text=CAPTIONS, images=[image(), image()], truncation=True, padding="max_length", max_length=77,
                       return_tensors="pt")
    with torch.no_grad():
        got = SmartCLIPModel.from_pretrained(model_dir).eval()(**inputs).logits_per_image
        expected = CLIPModel.from_pretrained(model_dir / "clip").eval()(**inputs).logits_per_image
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_zero_shot_pipeline_calls(model_dir, dtype):
    classifier = pipeline("zero-shot-image-classification", model=str(model_dir), dtype=dtype)
    one = classifier(image(), candidate_labels=["a", "b", "c"])
    assert sorted(entry["label"] for entry in one) == ["a", "b", "c"]
    assert sum(entry["score"] for entry in one) == pytest.approx(1.0, abs=1e-2)
    batched = classifier([image()] * 5, candidate_labels=["a", "b", "c"], batch_size=2)
    assert len(batched) == 5
    for result in batched:
        assert [entry["label"] for entry in result] == [entry["label"] for entry in one]
        assert [entry["score"] for entry in result] == pytest.approx([entry["score"] for entry in one], abs=1e-3)
    templated = classifier(image(), candidate_labels=["red", "blue"], hypothesis_template="a {} shape.")
    assert sorted(entry["label"] for entry in templated) == ["blue", "red"]
