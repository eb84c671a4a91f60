"""Training data: the built-in scenes or any `datasets` source, reduced to three columns and cleaned.

Every source becomes rows of `image` (left undecoded: a `{"bytes", "path"}` dict, a path or a PIL image; the collator
decodes it), `long_caption` (`str`, `""` when absent) and `short_captions` (`list[str]`). A row is dropped, and counted
under its reason, when its image cannot be decoded or when it has no non-empty caption. In-memory and on-disk
datasets are checked once before training (every image is decoded once, in `preprocessing_num_workers` processes);
streamed datasets are checked lazily as they are read, so their counts cover what training actually read.
"""

import functools
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict, IterableDataset, load_dataset, load_from_disk
from datasets import Image as ImageFeature
from PIL import Image

from .scenes import make_scenes

logger = logging.getLogger(__name__)

IMAGE, LONG_CAPTION, SHORT_CAPTIONS = "image", "long_caption", "short_captions"
DROP_REASONS = ("unreadable image", "empty caption")
_REASON = "drop_reason"  # temporary column: "" (kept) or "<reason>: <detail>"
_SHOWN_DETAILS = 3


@dataclass
class DataArguments:
    """Where the image-caption pairs come from and how a caption is drawn for each image at each step."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A `datasets` source: a Hub name, a local folder of data files, a folder saved with "
            "`save_to_disk`, or a builder such as `imagefolder` (with --data_dir). None: the built-in scenes."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The source's configuration name."})
    data_dir: str | None = field(
        default=None, metadata={"help": "`data_dir` of `load_dataset` (imagefolder's folder)."}
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(
        default=None, metadata={"help": "Split for the Trainer's eval loss (`test` for the built-in scenes)."}
    )
    streaming: bool = field(
        default=False, metadata={"help": "Stream the source instead of loading it (needs --max_steps)."}
    )
    image_column: str = field(default="image", metadata={"help": "Column holding the images."})
    long_caption_column: str | None = field(
        default=None, metadata={"help": "Column of long captions (one string per image). Built-in: long_caption."}
    )
    short_captions_column: str | None = field(
        default=None,
        metadata={
            "help": "Column of short captions (a list of strings, or one string, per image). Built-in: short_captions."
        },
    )
    p_long: float = field(default=0.5, metadata={"help": "Weight of drawing the whole long caption."})
    p_sentence: float = field(default=0.25, metadata={"help": "Weight of drawing one sentence of the long caption."})
    p_short: float = field(default=0.25, metadata={"help": "Weight of drawing one of the short captions."})
    caption_seed: int | None = field(default=None, metadata={"help": "Seed of the caption draws; None: --seed."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation rows."})
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for the one-off check of a non-streamed dataset."}
    )
    num_train_scenes: int = field(default=20000, metadata={"help": "Built-in data: training scenes."})
    num_test_scenes: int = field(default=1000, metadata={"help": "Built-in data: test scenes."})
    scenes_seed: int = field(default=0, metadata={"help": "Built-in data: generation seed."})

    def caption_columns(self) -> tuple[str | None, str | None]:
        """`(long_caption_column, short_captions_column)`, with the built-in scenes' columns as their default."""
        if self.dataset_name is None and self.long_caption_column is None and self.short_captions_column is None:
            return LONG_CAPTION, SHORT_CAPTIONS
        return self.long_caption_column, self.short_captions_column


class DropCounter:
    """Rows dropped, by reason (`DROP_REASONS`).

    The counts live in shared memory with one row per DataLoader worker (row 0: the main process), so a streamed
    dataset checked inside worker processes still reports to the main process, and no two processes write one cell.
    """

    def __init__(self, num_workers: int = 0):
        self._counts = torch.zeros(num_workers + 1, len(DROP_REASONS), dtype=torch.int64).share_memory_()
        self._shown = 0

    def add(self, reason: str, count: int = 1) -> None:
        if reason not in DROP_REASONS:
            raise ValueError(f"DropCounter: unknown reason {reason!r}; expected one of {DROP_REASONS}.")
        worker = torch.utils.data.get_worker_info()
        self._counts[0 if worker is None else worker.id + 1, DROP_REASONS.index(reason)] += count

    def keep(self, drop_reason: str) -> bool:
        """Filter predicate on the `drop_reason` column: True for a clean row; counts (and shows a few) others."""
        if not drop_reason:
            return True
        reason, _, detail = drop_reason.partition(": ")
        self.add(reason)
        if self._shown < _SHOWN_DETAILS:
            self._shown += 1
            logger.warning("Dropping a row: %s", drop_reason)
        return False

    def totals(self) -> dict[str, int]:
        """`{reason: count}` for every reason in `DROP_REASONS`, summed over processes."""
        return {reason: int(count) for reason, count in zip(DROP_REASONS, self._counts.sum(dim=0))}


def load_image(value) -> Image.Image:
    """An RGB image from a PIL image, an undecoded `datasets.Image` value (`{"bytes", "path"}`), bytes or a path."""
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, dict):
        image = ImageFeature().decode_example(value)  # bytes, local or remote paths, as `datasets` itself reads them
    elif isinstance(value, bytes):
        image = Image.open(io.BytesIO(value))
    elif isinstance(value, (str, os.PathLike)):
        image = Image.open(value)
    else:
        raise ValueError(
            f"Cannot read an image from a {type(value).__name__}; expected a PIL image, dict, bytes or path."
        )
    return image.convert("RGB")


def clean_captions(long_caption, short_captions) -> tuple[str, list[str]]:
    """`(long caption, short captions)` stripped, with empty ones removed; `None` means absent."""
    if long_caption is not None and not isinstance(long_caption, str):
        raise ValueError(f"A long caption must be a string or None, got a {type(long_caption).__name__}.")
    if isinstance(short_captions, str):
        short_captions = [short_captions]
    if short_captions is not None and not isinstance(short_captions, (list, tuple)):
        raise ValueError(
            f"Short captions must be a list of strings, a string or None, got a {type(short_captions).__name__}."
        )
    shorts = []
    for caption in short_captions or []:
        if caption is not None and not isinstance(caption, str):
            raise ValueError(f"A short caption must be a string, got a {type(caption).__name__}.")
        if caption and caption.strip():
            shorts.append(caption.strip())
    return (long_caption or "").strip(), shorts


def drop_reason(image, long_caption: str, short_captions: list[str]) -> str:
    """`""` for a usable row, else `"<reason>: <detail>"` with a reason from `DROP_REASONS`."""
    if not long_caption and not short_captions:
        return "empty caption: no non-empty caption"
    try:
        load_image(image)
    except Exception as error:  # image decoders raise many types (OSError, SyntaxError, DecompressionBombError...)
        return f"unreadable image: {type(error).__name__}: {error}"
    return ""


def _standardise(batch: dict[str, list], image_column: str, long_column: str | None, short_column: str | None) -> dict:
    """Batched `map` function: the caption columns under their standard names, cleaned, plus the drop reason."""
    size = len(batch[image_column])
    longs = batch[long_column] if long_column else [None] * size
    shorts = batch[short_column] if short_column else [None] * size
    out = {LONG_CAPTION: [], SHORT_CAPTIONS: [], _REASON: []}
    for image, long_caption, short_captions in zip(batch[image_column], longs, shorts):
        long_caption, short_captions = clean_captions(long_caption, short_captions)
        out[LONG_CAPTION].append(long_caption)
        out[SHORT_CAPTIONS].append(short_captions)
        out[_REASON].append(drop_reason(image, long_caption, short_captions))
    return out


def _is_kept(reasons: list[str]) -> list[bool]:
    return [not reason for reason in reasons]


@functools.lru_cache(maxsize=2)
def builtin_scenes(num_train: int, num_test: int, seed: int) -> DatasetDict:
    """The built-in scenes, generated once per process for a given size and seed."""
    return make_scenes(num_train=num_train, num_test=num_test, seed=seed)


def load_source(args: DataArguments, split: str) -> Dataset | IterableDataset:
    """One raw split: the built-in scenes, a `save_to_disk` folder, or anything `load_dataset` reads (streamed or not)."""
    if args.dataset_name is None:
        splits = builtin_scenes(args.num_train_scenes, args.num_test_scenes, args.scenes_seed)
    elif Path(args.dataset_name, "dataset_dict.json").is_file() or Path(args.dataset_name, "state.json").is_file():
        splits = load_from_disk(args.dataset_name)
        if isinstance(splits, Dataset):
            splits = DatasetDict({split: splits})
    else:
        return load_dataset(
            args.dataset_name, args.dataset_config_name, data_dir=args.data_dir, split=split, streaming=args.streaming
        )
    if split not in splits:
        source = args.dataset_name or "the built-in scenes"
        raise ValueError(f"Split {split!r} not found in {source}; available: {list(splits)}.")
    return splits[split].to_iterable_dataset() if args.streaming else splits[split]


def _column_names(dataset: Dataset | IterableDataset) -> list[str]:
    if dataset.column_names is not None:
        return list(dataset.column_names)
    return list(next(iter(dataset)))  # a stream with unknown features: read its first row


def _check_columns(args: DataArguments, columns: list[str]) -> tuple[str | None, str | None]:
    long_column, short_column = args.caption_columns()
    if long_column is None and short_column is None:
        raise ValueError(
            "No caption column: set --long_caption_column and/or --short_captions_column; "
            f"available columns: {columns}."
        )
    for argument, column in (("image_column", args.image_column), ("long_caption_column", long_column),
                             ("short_captions_column", short_column)):
        if column is not None and column not in columns:
            raise ValueError(f"--{argument}={column!r} is not a column of the dataset; available columns: {columns}.")
    return long_column, short_column


def load_split(
    args: DataArguments, split: str, drops: DropCounter, max_samples: int | None = None
) -> Dataset | IterableDataset:
    """One split with columns `image`, `long_caption`, `short_captions`; dropped rows are counted in `drops`."""
    dataset = load_source(args, split)
    columns = _column_names(dataset)
    long_column, short_column = _check_columns(args, columns)
    if isinstance((dataset.features or {}).get(args.image_column), ImageFeature):
        # Decode in our own code, where a corrupt file is caught, not inside `datasets`' row access.
        dataset = dataset.cast_column(args.image_column, ImageFeature(decode=False))
    if max_samples is not None:
        if isinstance(dataset, IterableDataset):
            dataset = dataset.take(max_samples)
        else:
            dataset = dataset.select(range(min(max_samples, len(dataset))))

    standardise = functools.partial(
        _standardise, image_column=args.image_column, long_column=long_column, short_column=short_column
    )
    others = [column for column in columns if column != args.image_column]
    if isinstance(dataset, IterableDataset):
        dataset = dataset.map(standardise, batched=True, remove_columns=others)
        dataset = dataset.filter(drops.keep, input_columns=_REASON)
    else:
        dataset = dataset.map(
            standardise, batched=True, remove_columns=others, num_proc=args.preprocessing_num_workers,
            desc=f"Checking the {split} images and captions",
        )
        for reason in dataset[_REASON]:
            drops.keep(reason)
        dataset = dataset.filter(_is_kept, batched=True, input_columns=_REASON)
    dataset = dataset.remove_columns(_REASON)
    return dataset.rename_column(args.image_column, IMAGE) if args.image_column != IMAGE else dataset


__all__ = [
    "DROP_REASONS",
    "DataArguments",
    "DropCounter",
    "IMAGE",
    "LONG_CAPTION",
    "SHORT_CAPTIONS",
    "builtin_scenes",
    "clean_captions",
    "drop_reason",
    "load_image",
    "load_source",
    "load_split",
]
