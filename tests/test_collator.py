"""The caption-sampling collator: sentence splitting, reproducible draws, proportions, the batch it returns."""

from collections import Counter

import pytest
import torch
from PIL import Image

from smartclip_train.collator import CaptionCollator, split_sentences


def _examples(n: int, long: bool = True, short: bool = True) -> list[dict]:
    return [
        {
            "image": None,
            "long_caption": f"a red circle number {i}. a blue square number {i}. a green cross." if long else None,
            "short_captions": [f"a red circle number {i}.", f"a small thing {i}."] if short else [],
        }
        for i in range(n)
    ]


def test_split_sentences_handles_lower_case_abbreviations_numbers_and_quotes():
    assert split_sentences("a large red circle at the top left. a small blue square at the bottom right.") == [
        "a large red circle at the top left.", "a small blue square at the bottom right."
    ]
    assert split_sentences('Dr. Smith holds e.g. a 3.5 m pole! Is it "long?" Yes\nno dot') == [
        "Dr. Smith holds e.g. a 3.5 m pole!", 'Is it "long?"', "Yes", "no dot"
    ]
    assert split_sentences("J. R. Tolkien wrote it.  ") == ["J. R. Tolkien wrote it."]
    assert split_sentences("one sentence without a stop") == ["one sentence without a stop"]


def test_draws_are_reproducible_from_the_seed_and_change_with_seed_and_epoch(processor):
    examples = _examples(200)
    collator = CaptionCollator(processor, seed=3)
    first = [collator.draw(example) for example in examples]
    assert [CaptionCollator(processor, seed=3).draw(example) for example in reversed(examples)] == first[::-1]
    assert [CaptionCollator(processor, seed=4).draw(example) for example in examples] != first
    collator.epoch = 1
    assert [collator.draw(example) for example in examples] != first
    with collator.fixed_epoch(0):
        assert [collator.draw(example) for example in examples] == first
    assert collator.epoch == 1


def test_draws_follow_the_proportions_renormalised_over_available_sources(processor):
    collator = CaptionCollator(processor, p_long=0.5, p_sentence=0.3, p_short=0.2, seed=0)
    draws = [collator.draw(example) for example in _examples(4000)]
    counts = Counter(source for source, _ in draws)
    for source, expected in (("long", 0.5), ("sentence", 0.3), ("short", 0.2)):
        assert abs(counts[source] / 4000 - expected) < 0.03, counts
    # A drawn sentence is one of the long caption's three sentences, spread evenly over them.
    sentence_positions = Counter(
        split_sentences(example["long_caption"]).index(caption)
        for example, (source, caption) in zip(_examples(4000), draws) if source == "sentence"
    )
    assert all(abs(n / counts["sentence"] - 1 / 3) < 0.05 for n in sentence_positions.values()), sentence_positions

    long_only = Counter(collator.draw(example)[0] for example in _examples(4000, short=False))
    assert set(long_only) == {"long", "sentence"}
    assert abs(long_only["long"] / 4000 - 0.5 / 0.8) < 0.03, long_only
    assert {collator.draw(example)[0] for example in _examples(50, long=False)} == {"short"}


def test_bad_weights_and_examples_are_clear_errors(processor):
    with pytest.raises(ValueError, match="p_long"):
        CaptionCollator(processor, p_long=-1.0)
    with pytest.raises(ValueError, match="weights are all zero"):
        CaptionCollator(processor, p_long=1.0, p_sentence=0.0, p_short=0.0).draw(_examples(1, long=False)[0])
    with pytest.raises(ValueError, match="no captions"):
        CaptionCollator(processor).draw({"image": None, "long_caption": "  ", "short_captions": [""]})


def test_batch_is_tokenized_truncated_keeping_end_of_text_and_asks_for_the_loss(processor):
    examples = [
        {"image": Image.new("RGB", (40, 30), "red"), "long_caption": "a red circle. " * 100, "short_captions": None},
        {"image": Image.new("RGB", (32, 32), "blue"), "long_caption": None, "short_captions": ["a blue square."]},
    ]
    with pytest.warns(UserWarning, match="truncated"):
        batch = CaptionCollator(processor, p_long=1.0, p_sentence=0.0, p_short=1.0)(examples)
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values", "return_loss"}
    assert batch["return_loss"] is True
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 248)
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    eos = processor.tokenizer.eos_token_id
    assert batch["input_ids"][0, -1] == eos
    assert batch["input_ids"][1, batch["attention_mask"][1].sum() - 1] == eos
    assert torch.equal(batch["input_ids"][1, : batch["attention_mask"][1].sum()],
                       processor.tokenizer("a blue square.", return_tensors="pt")["input_ids"][0])


def test_split_sentences_is_linear_in_the_text_length():
    # Text that a splitter re-reading everything before each boundary would take minutes on (seconds at a tenth of
    # the size): many skipped boundaries (abbreviations) and a long run of marks with no white space after it.
    abbreviations = "e.g. " * 200_000
    assert split_sentences(abbreviations) == [abbreviations.strip()]
    marks = "." * 200_000 + "x"
    assert split_sentences(marks) == [marks]
    assert split_sentences("see e.g.  this. " * 3) == ["see e.g.  this."] * 3


def test_first_sentence_mode_adds_the_drawn_captions_first_sentences(processor):
    captions = ["a red circle. a blue square.", "a green cross at the top left."]
    examples = [{"image": Image.new("RGB", (32, 32)), "long_caption": c, "short_captions": None} for c in captions]
    batch = CaptionCollator(processor, p_long=1.0, p_sentence=0.0, p_short=0.0, first_sentence=True)(examples)
    expected = processor.tokenizer(captions + ["a red circle.", captions[1]], padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], expected["input_ids"])  # captions, then their first sentences
    assert torch.equal(batch["attention_mask"], expected["attention_mask"])
    assert len(batch["pixel_values"]) == 2
    assert len(CaptionCollator(processor, p_long=1.0)(examples)["input_ids"]) == 2
