"""The caption-sampling collator: one caption per image per step (SmartCLIP, Sec. 6.1), drawn reproducibly.

Each image may carry a long caption and several short captions. At each step the collator draws, for each image,
one of: the whole long caption, one sentence of it, or one short caption, with weights renormalised over the sources
the image actually has. The draw for an image is a function of `(seed, epoch, the image's captions)` only, never of
a running generator state, so it does not depend on batch order, DataLoader workers or ranks, and a run resumed
from a checkpoint draws exactly what the uninterrupted run drew.
"""

import random
import re
from contextlib import contextmanager

from transformers import TrainerCallback

from smartclip_data.sources import IMAGE, LONG_CAPTION, SHORT_CAPTIONS, clean_captions, load_image

SOURCES = ("long", "sentence", "short")
# A period after one of these words (or after a single letter, as in initials) does not end a sentence.
ABBREVIATIONS = frozenset(
    "e.g i.e etc vs cf al approx fig figs no nos mr mrs ms dr prof st mt jr sr inc ltd co corp dept est".split()
)
# A boundary starts at the first mark of a run (the lookbehind), so a long run of marks is tried once, not from
# each of its marks.
_BOUNDARY = re.compile(r"(?<![.!?])[.!?]+[\"'”’)\]]*\s+|\n\s*")


def _last_word(text: str, start: int, end: int) -> str:
    """The last white-space-separated word of `text[start:end]` ("" if none), found by scanning back from `end`.

    Scanning back reads only that word (and the white space after it), so the splitter stays linear in the text's
    length however many boundaries it skips; splitting `text[start:end]` at every boundary would be quadratic.
    """
    stop = end
    while stop > start and text[stop - 1].isspace():
        stop -= 1
    begin = stop
    while begin > start and not text[begin - 1].isspace():
        begin -= 1
    return text[begin:stop]


def split_sentences(text: str) -> list[str]:
    """Splits a caption into sentences at `.`, `!`, `?` (and line breaks) followed by white space.

    Lower-case sentence starts are allowed (captions often have them); a period after a known abbreviation, an
    initial or inside a number is not a boundary. Returns `[text]` (stripped) when there is a single sentence.
    """
    sentences, start = [], 0
    for boundary in _BOUNDARY.finditer(text):
        word = _last_word(text, start, boundary.start()).lower().rstrip(".")
        if boundary.group().lstrip().startswith(".") and (word in ABBREVIATIONS or len(word) == 1 and word.isalpha()):
            continue
        sentences.append(text[start : boundary.end()].strip())
        start = boundary.end()
    sentences.append(text[start:].strip())
    return [sentence for sentence in sentences if sentence] or [text.strip()]


class CaptionCollator:
    """Draws one caption per example, then tokenizes the captions and processes the images.

    Args:
        processor: a `SmartCLIPProcessor` (truncates captions to its tokenizer's `model_max_length`, keeping the
            end-of-text token).
        p_long, p_sentence, p_short: weights of the three caption sources, renormalised per example over the
            sources it has (a long caption provides "long" and "sentence"; a non-empty short list provides "short").
        seed: seed of the draws.
        first_sentence: also deliver the first sentence of each drawn caption, as text rows `B..2B-1` after the
            `B` captions: Long-CLIP's short caption (with `p_long=1`, as Long-CLIP trains, the long caption's first
            sentence), encoded in the same text pass as the captions.

    Examples are dicts with `image` (anything `load_image` reads), `long_caption` (`str` or `None`) and
    `short_captions` (`list[str]` or `None`). The batch is `input_ids`, `attention_mask` (`(B, T)`, or `(2B, T)`
    with `first_sentence`),
    `pixel_values` (`(B, 3, H, W)`) and `return_loss=True`.
    """

    def __init__(self, processor, p_long: float = 0.5, p_sentence: float = 0.25, p_short: float = 0.25, seed: int = 0,
                 first_sentence: bool = False):
        weights = {"p_long": p_long, "p_sentence": p_sentence, "p_short": p_short}
        if any(weight < 0 for weight in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"CaptionCollator: caption weights {weights} must be >= 0 with a positive sum.")
        self.processor = processor
        self.weights = dict(zip(SOURCES, weights.values()))
        self.seed = seed
        self.first_sentence = first_sentence
        self.epoch = 0  # set by `CaptionEpochCallback`, so each epoch draws afresh

    def draw(self, example: dict) -> tuple[str, str]:
        """`(source, caption)` for one example; the same example, seed and epoch always give the same draw."""
        long_caption, short_captions = clean_captions(example.get(LONG_CAPTION), example.get(SHORT_CAPTIONS))
        available = [source for source in SOURCES if (short_captions if source == "short" else long_caption)]
        if not any(self.weights[source] for source in available):
            raise ValueError(
                f"CaptionCollator: an example offers only {available or 'no captions'}, whose weights are all zero "
                f"({self.weights}); e.g. long caption {long_caption!r}, short captions {short_captions!r}."
            )
        # A string seed is hashed with SHA-512, the same in every process (unlike `hash()`).
        rng = random.Random(f"{self.seed}\x1f{self.epoch}\x1f{long_caption}\x1f" + "\x1f".join(short_captions))
        source = rng.choices(available, weights=[self.weights[source] for source in available])[0]
        if source == "long":
            return source, long_caption
        if source == "sentence":
            return source, rng.choice(split_sentences(long_caption))
        return source, rng.choice(short_captions)

    def __call__(self, examples: list[dict]) -> dict:
        captions = [self.draw(example)[1] for example in examples]
        if self.first_sentence:  # one text pass encodes both: rows B..2B-1 are rows 0..B-1's first sentences
            captions += [split_sentences(caption)[0] for caption in captions]
        images = [load_image(example[IMAGE]) for example in examples]
        batch = self.processor(text=captions, images=images, return_tensors="pt", padding=True)
        return {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "pixel_values": batch["pixel_values"],
            "return_loss": True,
        }

    @contextmanager
    def fixed_epoch(self, epoch: int):
        """Draws as in `epoch` inside the block (evaluation scores the same captions every time)."""
        saved, self.epoch = self.epoch, epoch
        try:
            yield self
        finally:
            self.epoch = saved


class CaptionEpochCallback(TrainerCallback):
    """Tells the collator which epoch is starting, also when training resumes mid-epoch.

    DataLoader workers receive a copy of the collator when an epoch's iteration starts, so this reaches them unless
    `dataloader_persistent_workers` keeps the first epoch's copy.
    """

    def __init__(self, collator: CaptionCollator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        # `state.epoch` is fractional when resuming mid-epoch; the epoch that is starting is its integer part.
        self.collator.epoch = int((state.epoch or 0) + 1e-9)


__all__ = ["CaptionCollator", "CaptionEpochCallback", "SOURCES", "split_sentences"]
