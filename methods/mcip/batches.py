"""MCIP's batches: each image's class label and the K captions whose frozen embeddings are its proxies.

Class labels come from `--label_column` (non-negative integers) of any dataset the trainer reads, or, on the
built-in scenes, from the scene's objects (`smartclip_eval.image_retrieval.scene_class`). An image's captions are
its long caption followed by its short captions, the first K distinct ones (fewer are padded and marked invalid):
no draw, so a batch is the same in every process, worker and resumed run.
"""

import hashlib
from collections.abc import Callable

import torch
from datasets import ClassLabel, Dataset, IterableDataset, Value

from smartclip_data.sources import (
    LONG_CAPTION, SHORT_CAPTIONS, DataArguments, clean_captions, column_names, load_source,
)
from smartclip_eval.image_retrieval import SCENE_CLASSES, scene_class
from smartclip_train.collator import CaptionCollator

SCENE_OBJECTS = "objects"  # the built-in scenes' column that `scene_class` reads


def caption_key(caption: str) -> int:
    """An int64 key of a caption's text, the same in every process (unlike `hash()`)."""
    return int.from_bytes(hashlib.blake2b(caption.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def _integer(feature) -> bool:
    return isinstance(feature, ClassLabel) or isinstance(feature, Value) and feature.dtype.startswith(("int", "uint"))


def check_label_column(data_args: DataArguments, label_column: str, **hub_kwargs) -> int | None:
    """Checks that the training split has `label_column` holding integers; returns its number of classes when the
    column's feature names them (`ClassLabel`), else None. Errors name the available columns."""
    dataset = load_source(data_args, data_args.train_split, **hub_kwargs)
    columns = column_names(dataset)
    if label_column not in columns:
        raise ValueError(f"--label_column={label_column!r} is not a column of the {data_args.train_split} split; "
                         f"available columns: {columns}.")
    feature = (dataset.features or {}).get(label_column)
    if feature is not None and not _integer(feature):
        raise ValueError(f"--label_column={label_column!r} holds {feature}, not integer class labels; available "
                         f"columns: {columns}.")
    return len(feature.names) if isinstance(feature, ClassLabel) else None


def label_function(data_args: DataArguments, label_column: str | None) -> tuple[str, Callable[[dict], int]]:
    """`(column, example -> class)`: `--label_column`'s value, or `scene_class` of the built-in scenes' objects."""
    if label_column is not None:
        return label_column, lambda example: _class_label(example[label_column], label_column)
    if not data_args.builtin:
        raise ValueError("--label_column is needed on a dataset other than the built-in scenes (their classes are "
                         "derived from the scene); it names a column of integer class labels.")
    return SCENE_OBJECTS, lambda example: scene_class(example[SCENE_OBJECTS])


def _class_label(value, column: str) -> int:
    # bool is an int in Python, and a float 3.0 would pass `int()`; neither is a class label.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"--label_column={column!r} holds {value!r}; expected non-negative integer class labels.")
    return value


def number_of_classes(train_dataset: Dataset | IterableDataset, data_args: DataArguments, label_column: str | None,
                      named: int | None) -> int:
    """How many class proxies the class loss needs: the scenes' 64, the `ClassLabel`'s names, or the largest label
    plus one of an in-memory training split; a stream without `ClassLabel` needs `--num_classes`."""
    if label_column is None and data_args.builtin:
        return SCENE_CLASSES
    if named is not None:
        return named
    if isinstance(train_dataset, IterableDataset):
        raise ValueError(f"--label_column={label_column!r} on a streamed dataset without ClassLabel names: give "
                         "--num_classes.")
    return max(_class_label(value, label_column) for value in train_dataset[label_column]) + 1


class MCIPCollator:
    """`CaptionCollator`'s batch plus `class_labels` `(B,)` and each image's captions: `caption_input_ids` and
    `caption_attention_mask` `(B * K, T)`, `caption_valid` and `caption_keys` `(B, K)`.

    Args:
        collator: the run's `CaptionCollator` (its processor tokenizes the captions).
        labels: `example -> class`, or None when the objective reads no class.
        num_captions: K, or 0 when the objective reads no captions.
        num_classes: labels at or above it are an error (the class loss has that many proxies).
    """

    def __init__(self, collator: CaptionCollator, labels: Callable[[dict], int] | None, num_captions: int,
                 num_classes: int | None = None):
        self.collator, self.labels, self.num_captions, self.num_classes = collator, labels, num_captions, num_classes

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.collator(examples)
        if self.labels is not None:
            labels = [self.labels(example) for example in examples]
            if self.num_classes is not None and max(labels) >= self.num_classes:
                raise ValueError(f"class label {max(labels)} with --num_classes={self.num_classes}; expected labels "
                                 f"below it.")
            batch["class_labels"] = torch.tensor(labels)
        if self.num_captions:
            captions, valid = [], []
            for example in examples:
                long_caption, short_captions = clean_captions(example.get(LONG_CAPTION), example.get(SHORT_CAPTIONS))
                own = list(dict.fromkeys(c for c in [long_caption, *short_captions] if c))[: self.num_captions]
                valid.append([True] * len(own) + [False] * (self.num_captions - len(own)))
                captions.append(own + [own[0]] * (self.num_captions - len(own)))  # padding: masked out
            tokens = self.collator.processor(text=[c for own in captions for c in own], return_tensors="pt",
                                             padding=True)
            batch["caption_input_ids"] = tokens["input_ids"]
            batch["caption_attention_mask"] = tokens["attention_mask"]
            batch["caption_valid"] = torch.tensor(valid)
            batch["caption_keys"] = torch.tensor([[caption_key(c) for c in own] for own in captions])
        return batch


__all__ = ["MCIPCollator", "SCENE_OBJECTS", "caption_key", "check_label_column", "label_function", "number_of_classes"]
