"""`modeling_smartclip/processing_smartclip.py`: 248 positions, truncation keeping the end-of-text token, bad input."""

import json

import pytest

from modeling_smartclip import SmartCLIPProcessor


def test_empty_caption_is_a_clear_error(processor):
    with pytest.raises(ValueError, match=r"captions at positions \[1\] are empty"):
        processor(text=["a red circle.", "  "], return_tensors="pt")


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


def test_processor_pads_to_the_asked_length_without_cutting(processor):
    out = processor(text=["a red circle."], return_tensors="pt", padding="max_length", max_length=77)
    assert out["input_ids"].shape == (1, 77)
    with pytest.warns(UserWarning, match=r"positions \[1\] are longer than 248 tokens"):
        lists = processor(text=["a red circle.", " ".join(["a red circle."] * 100)])
    assert [len(ids) for ids in lists["input_ids"]] == [len(processor.tokenizer("a red circle.")["input_ids"]), 248]
    assert lists["input_ids"][1][-1] == processor.tokenizer.eos_token_id
