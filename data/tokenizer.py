"""An offline CLIP tokenizer whose vocabulary is a given set of words.

No Hub download is possible here, so the built-in data and the tests need a tokenizer made locally. This one is a
real `CLIPTokenizer` (same normaliser, pre-tokenizer, BPE model and special tokens as OpenAI CLIP's); only its merge
table is built so that each listed word is a single token. Unknown words fall back to single letters.
"""

import string
from collections.abc import Iterable

from transformers import CLIPTokenizer

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def build_word_tokenizer(words: Iterable[str], model_max_length: int = 248) -> CLIPTokenizer:
    """A `CLIPTokenizer` with one token per word of `words` (lower-case letters) and per letter and punctuation mark."""
    vocab: dict[str, int] = {}
    merges: list[tuple[str, str]] = []

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    for char in string.ascii_lowercase + string.digits + string.punctuation:
        add(char)
        add(char + "</w>")
    for word in sorted({w.lower() for w in words if w.isalpha()}):
        # Merge left to right: ((w o) r) d</w>, adding each intermediate piece.
        piece = word[0]
        for position, char in enumerate(word[1:], start=1):
            right = char + "</w>" if position == len(word) - 1 else char
            if (piece + right) not in vocab:
                merges.append((piece, right))
                add(piece + right)
            piece += right
    for token in SPECIAL_TOKENS:
        add(token)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


__all__ = ["build_word_tokenizer"]
