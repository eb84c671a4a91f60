"""Training data: the built-in scenes, any `datasets` source, or csv/json files of image paths and captions (the
`--train_file` / `--validation_file` of transformers' `run_clip.py`), reduced to three columns and cleaned.

Every source becomes rows of `image` (left undecoded: a `{"bytes", "path"}` dict, a path or a PIL image; the collator
decodes it), `long_caption` (`str`, `""` when absent) and `short_captions` (`list[str]`). A row is dropped, and counted
under its reason, when its image cannot be decoded, when its caption is not text (e.g. a number), or when it has no
non-empty caption; the first few drops are logged with their row. In-memory and on-disk datasets are checked once
before training (every image is decoded once, in `preprocessing_num_workers` processes), and a split with no usable
row is an error; streamed datasets are checked lazily as they are read, so their counts cover what training read.
"""

import csv
import functools
import io
import json
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
DROP_REASONS = ("unreadable image", "empty caption", "invalid caption")
# Column names tried when none is given: ours, then `run_clip.py`'s default; imagefolder's, then `run_clip.py`'s.
IMAGE_COLUMNS = ("image", "image_path")
CAPTION_COLUMNS = ("text", "caption")
DATA_FILE_BUILDERS = {"csv": "csv", "json": "json", "jsonl": "json"}
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
    train_file: str | None = field(
        default=None,
        metadata={"help": "A csv or json(-lines) file of image paths and captions for the `train` split (run_clip.py); "
                  "paths are read as given (relative ones from the working directory)."},
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "The same for the `validation` split (evaluated with --do_eval)."}
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(
        default=None,
        metadata={"help": "Split for evaluation (eval loss and retrieval recall). Default with --do_eval: `validation` "
                  "(`test` for the built-in scenes)."},
    )
    streaming: bool = field(
        default=False, metadata={"help": "Stream the source instead of loading it (needs --max_steps)."}
    )
    image_column: str | None = field(
        default=None,
        metadata={"help": "Column holding the images (or image paths). Default: `image`, else `image_path` (run_clip.py)."},
    )
    caption_column: str | None = field(
        default=None,
        metadata={"help": "run_clip.py's caption column (one string per image): the same as --long_caption_column. "
                  "Without any caption column: `text` (imagefolder), else `caption` (run_clip.py)."},
    )
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
    max_seq_length: int | None = field(
        default=None,
        metadata={"help": "Truncate captions to N tokens in training and evaluation (run_clip.py); default: the "
                  "processor's limit (248 for a SmartCLIP). The saved processor keeps its own limit."},
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for the one-off check of a non-streamed dataset."}
    )
    overwrite_cache: bool = field(
        default=False, metadata={"help": "Redo the check of the rows instead of reading `datasets`' cache of it."}
    )
    # Not a flag: columns a related method's command passes on to its collator (MCIP's class labels); `load_split`
    # keeps those a split has, beside the image and caption columns.
    keep_columns: tuple[str, ...] = field(default=(), init=False)
    num_train_scenes: int = field(default=20000, metadata={"help": "Built-in data: training scenes."})
    num_test_scenes: int = field(default=1000, metadata={"help": "Built-in data: test scenes."})
    scenes_seed: int = field(default=0, metadata={"help": "Built-in data: generation seed."})
    scenes_sizes: bool = field(
        default=True, metadata={"help": "Built-in data: objects come in two sizes named in the captions."}
    )
    scenes_slot_order: bool = field(
        default=False, metadata={"help": "Built-in data: long captions list the objects in slot order (else shuffled)."}
    )
    scenes_partial_captions: bool = field(
        default=False,
        metadata={"help": "Built-in data: the short captions add attribute-level captions of one object ('a red object "
                  "at the top left.') and two-object sentences (scenes the theory can identify; drawn with --p_short)."},
    )

    def __post_init__(self):
        if self.caption_column is not None and self.long_caption_column not in (None, self.caption_column):
            raise ValueError(
                f"--caption_column={self.caption_column!r} and --long_caption_column={self.long_caption_column!r}: "
                "they name the same thing (the one caption per image); give one."
            )
        if (self.train_file or self.validation_file) and self.dataset_name is not None:
            raise ValueError(
                f"--dataset_name={self.dataset_name!r} and --train_file/--validation_file: expected one data source."
            )
        for flag, path in (("train_file", self.train_file), ("validation_file", self.validation_file)):
            if path is not None and Path(path).suffix.lstrip(".").lower() not in DATA_FILE_BUILDERS:
                raise ValueError(f"--{flag}={path!r}; expected a .csv, .json or .jsonl file.")
            # (a URL or a glob pattern is left to `datasets`)
            if path is not None and "://" not in path and not set("*?[") & set(path) and not Path(path).is_file():
                raise ValueError(f"--{flag}={path!r} does not exist (or is not a file).")
        for flag in ("num_train_scenes", "num_test_scenes", "max_train_samples", "max_eval_samples"):
            if getattr(self, flag) is not None and getattr(self, flag) < 1:
                raise ValueError(f"--{flag}={getattr(self, flag)}; expected at least 1.")
        if self.max_seq_length is not None and self.max_seq_length < 2:
            raise ValueError(f"--max_seq_length={self.max_seq_length}; expected at least 2 (start and end tokens).")

    @property
    def builtin(self) -> bool:
        """Whether the data are the built-in scenes (no dataset and no data files given)."""
        return self.dataset_name is None and self.train_file is None and self.validation_file is None

    def caption_columns(self, columns: list[str] | None = None) -> tuple[str | None, str | None]:
        """`(long_caption_column, short_captions_column)`: as given (`--caption_column` is the long one), else the
        built-in scenes' columns, else the first of `CAPTION_COLUMNS` among `columns` as the long one."""
        long_column = self.long_caption_column or self.caption_column
        if long_column is not None or self.short_captions_column is not None:
            return long_column, self.short_captions_column
        if self.builtin:
            return LONG_CAPTION, SHORT_CAPTIONS
        return next((column for column in CAPTION_COLUMNS if column in (columns or ())), None), None

    def image_column_of(self, columns: list[str]) -> str:
        """`--image_column`, or the first of `IMAGE_COLUMNS` among `columns`."""
        if self.image_column is not None:
            return self.image_column
        return next((column for column in IMAGE_COLUMNS if column in columns), IMAGE_COLUMNS[0])

    def eval_split_for(self, do_eval: bool) -> str | None:
        """`--eval_split`, or with `do_eval` the validation split (`test` for the built-in scenes)."""
        if self.eval_split is not None or not do_eval:
            return self.eval_split
        return "test" if self.builtin else "validation"


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


def _standardise(batch: dict[str, list], indices: list[int], image_column: str, long_column: str | None,
                 short_column: str | None) -> dict:
    """Batched `map` function: the caption columns under their standard names, cleaned, plus the drop reason (which
    names the row)."""
    size = len(batch[image_column])
    longs = batch[long_column] if long_column else [None] * size
    shorts = batch[short_column] if short_column else [None] * size
    out = {LONG_CAPTION: [], SHORT_CAPTIONS: [], _REASON: []}
    for index, image, long_caption, short_captions in zip(indices, batch[image_column], longs, shorts):
        try:
            long_caption, short_captions = clean_captions(long_caption, short_captions)
            reason = drop_reason(image, long_caption, short_captions)
        except ValueError as error:  # a caption that is not text
            long_caption, short_captions, reason = "", [], f"invalid caption: {error}"
        out[LONG_CAPTION].append(long_caption)
        out[SHORT_CAPTIONS].append(short_captions)
        out[_REASON].append(reason.replace(": ", f": row {index}: ", 1) if reason else "")
    return out


def _is_kept(reasons: list[str]) -> list[bool]:
    return [not reason for reason in reasons]


@functools.lru_cache(maxsize=2)
def builtin_scenes(
    num_train: int, num_test: int, seed: int, sizes: bool = True, slot_order: bool = False,
    partial_captions: bool = False,
) -> DatasetDict:
    """The built-in scenes (`make_scenes`), generated once per process for given settings."""
    return make_scenes(num_train=num_train, num_test=num_test, seed=seed, sizes=sizes, slot_order=slot_order,
                       partial_captions=partial_captions)


def _first_bad_utf8_line(paths: list[Path]) -> str | None:
    """`"<file>, line <n>: ..."` for the first line of `paths` that is not UTF-8, else None."""
    for path in paths:
        with open(path, "rb") as lines:
            for number, line in enumerate(lines, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as error:
                    return f"{path}, line {number}: not valid UTF-8 ({error.reason} at byte {error.start} of the line)"
    return None


def _first_malformed_row(path: Path) -> str | None:
    """`"<file>, line <n>: ..."` for the first row of a csv or json(-lines) file that cannot be a row, else None."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        rows = csv.reader(io.StringIO(text, newline=""))
        try:
            header = next(rows, [])
            for row in rows:
                if len(row) > len(header):
                    return f"{path}, line {rows.line_num}: {len(row)} fields; the header has {len(header)}"
        except csv.Error as error:
            return f"{path}, line {rows.line_num}: {error}"
        return None
    try:
        json.loads(text)
        return None  # one JSON document
    except json.JSONDecodeError as error:
        if error.msg != "Extra data":  # not JSON lines either: the document's own error
            return f"{path}, line {error.lineno}: not JSON ({error.msg} at column {error.colno})"
    for number, line in enumerate(text.splitlines(), start=1):  # JSON lines: one object per line
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            return f"{path}, line {number}: not JSON ({error.msg} at column {error.colno})"
        if not isinstance(row, dict):
            return f"{path}, line {number}: a JSON {type(row).__name__}; expected an object (one row)"
    return None


def _text_files(args: DataArguments) -> list[Path]:
    """The local text files a source may read rows or metadata from: the data files, or those in its folders."""
    files = [Path(path) for path in (args.train_file, args.validation_file) if path is not None]
    for folder in (args.data_dir, args.dataset_name):
        if folder is not None and Path(folder).is_dir():
            files += sorted(path for path in Path(folder).rglob("*") if path.suffix in (".jsonl", ".json", ".csv"))
    return files


def _load_dataset(args: DataArguments, split: str, **hub_kwargs) -> Dataset | IterableDataset:
    """`load_dataset` of `--dataset_name` or of the data files; a metadata or data line that is not UTF-8 is a
    `ValueError` naming the file and line (`datasets` reports only a byte position in an unnamed chunk)."""
    try:
        if args.dataset_name is not None:
            return load_dataset(args.dataset_name, args.dataset_config_name, data_dir=args.data_dir, split=split,
                                streaming=args.streaming, **hub_kwargs)
        files = {name: path for name, path in (("train", args.train_file), ("validation", args.validation_file)) if path}
        if split not in files:
            raise ValueError(
                f"Split {split!r} not found in the data files; available: {list(files)} "
                "(--train_file is `train`, --validation_file is `validation`)."
            )
        builder = DATA_FILE_BUILDERS[Path(files[split]).suffix.lstrip(".").lower()]
        return load_dataset(builder, data_files={split: files[split]}, split=split, streaming=args.streaming,
                            **hub_kwargs)
    except Exception as error:
        cause = error
        while cause is not None and not isinstance(cause, UnicodeDecodeError):
            cause = cause.__cause__ or cause.__context__
        bad_line = _first_bad_utf8_line(_text_files(args)) if cause is not None else None
        if bad_line is not None:
            raise ValueError(f"{bad_line}; the file must be UTF-8 text.") from error
        # `datasets` names neither the file nor the line of a row its csv or json reader rejects.
        data_file = {"train": args.train_file, "validation": args.validation_file}.get(split)
        bad_row = _first_malformed_row(Path(data_file)) if data_file and Path(data_file).is_file() else None
        if bad_row is None:
            raise
        raise ValueError(f"{bad_row}.") from error


def load_source(args: DataArguments, split: str, **hub_kwargs) -> Dataset | IterableDataset:
    """One raw split: the built-in scenes, a `save_to_disk` folder, csv/json data files, or anything `load_dataset`
    reads (streamed or not). `hub_kwargs` (`token`, `cache_dir`) go to `load_dataset`."""
    if args.builtin:
        splits = builtin_scenes(
            args.num_train_scenes, args.num_test_scenes, args.scenes_seed, args.scenes_sizes, args.scenes_slot_order,
            args.scenes_partial_captions,
        )
    elif args.dataset_name is not None and (
        Path(args.dataset_name, "dataset_dict.json").is_file() or Path(args.dataset_name, "state.json").is_file()
    ):
        splits = load_from_disk(args.dataset_name)
        if isinstance(splits, Dataset):
            splits = DatasetDict({split: splits})
    else:
        return _load_dataset(args, split, **hub_kwargs)
    if split not in splits:
        source = args.dataset_name or "the built-in scenes"
        raise ValueError(f"Split {split!r} not found in {source}; available: {list(splits)}.")
    return splits[split].to_iterable_dataset() if args.streaming else splits[split]


def column_names(dataset: Dataset | IterableDataset) -> list[str]:
    """The dataset's columns; a stream without declared features is asked for its first row."""
    if dataset.column_names is not None:
        return list(dataset.column_names)
    return list(next(iter(dataset)))  # a stream with unknown features: read its first row


def check_columns(args: DataArguments, columns: list[str]) -> tuple[str, str | None, str | None]:
    """`(image_column, long_caption_column, short_captions_column)` of the dataset, each checked."""
    image_column = args.image_column_of(columns)
    if args.image_column is None and image_column not in columns:
        raise ValueError(
            f"No image column: none of {list(IMAGE_COLUMNS)} is a column; set --image_column; available columns: "
            f"{columns}."
        )
    long_column, short_column = args.caption_columns(columns)
    if long_column is None and short_column is None:
        raise ValueError(
            f"No caption column: none of {list(CAPTION_COLUMNS)} is a column; set --caption_column (or "
            f"--long_caption_column) and/or --short_captions_column; available columns: {columns}."
        )
    long_flag = "long_caption_column" if args.long_caption_column or not args.caption_column else "caption_column"
    for argument, column in (("image_column", image_column), (long_flag, long_column),
                             ("short_captions_column", short_column)):
        if column is not None and column not in columns:
            raise ValueError(f"--{argument}={column!r} is not a column of the dataset; available columns: {columns}.")
    return image_column, long_column, short_column


def _no_usable_rows(split: str, counts: dict[str, int]) -> ValueError:
    reasons = ", ".join(f"{count} {reason}s" for reason, count in counts.items())
    return ValueError(
        f"The {split} split has no usable rows ({reasons}); the first drops are logged above with their rows."
    )


def load_split(
    args: DataArguments, split: str, drops: DropCounter, max_samples: int | None = None, **hub_kwargs
) -> Dataset | IterableDataset:
    """One split with columns `image`, `long_caption`, `short_captions`; dropped rows are counted in `drops`.
    A non-streamed split left with no row is a `ValueError` giving the counts. `hub_kwargs` go to `load_dataset`."""
    dataset = load_source(args, split, **hub_kwargs)
    columns = column_names(dataset)
    image_column, long_column, short_column = check_columns(args, columns)
    if isinstance((dataset.features or {}).get(image_column), ImageFeature):
        # Decode in our own code, where a corrupt file is caught, not inside `datasets`' row access.
        dataset = dataset.cast_column(image_column, ImageFeature(decode=False))
    if max_samples is not None:
        if isinstance(dataset, IterableDataset):
            dataset = dataset.take(max_samples)
        else:
            dataset = dataset.select(range(min(max_samples, len(dataset))))

    standardise = functools.partial(
        _standardise, image_column=image_column, long_column=long_column, short_column=short_column
    )
    others = [column for column in columns if column != image_column and column not in args.keep_columns]
    if isinstance(dataset, IterableDataset):
        dataset = dataset.map(standardise, batched=True, with_indices=True, remove_columns=others)
        dataset = dataset.filter(drops.keep, input_columns=_REASON)
    else:
        dataset = dataset.map(
            standardise, batched=True, with_indices=True, remove_columns=others,
            num_proc=args.preprocessing_num_workers, load_from_cache_file=not args.overwrite_cache,
            desc=f"Checking the {split} images and captions",
        )
        for reason in dataset[_REASON]:
            drops.keep(reason)
        dataset = dataset.filter(_is_kept, batched=True, input_columns=_REASON)
        if len(dataset) == 0:
            raise _no_usable_rows(split, drops.totals())
    dataset = dataset.remove_columns(_REASON)
    return dataset.rename_column(image_column, IMAGE) if image_column != IMAGE else dataset


__all__ = [
    "CAPTION_COLUMNS",
    "DROP_REASONS",
    "IMAGE_COLUMNS",
    "DataArguments",
    "DropCounter",
    "IMAGE",
    "LONG_CAPTION",
    "SHORT_CAPTIONS",
    "check_columns",
    "column_names",
    "builtin_scenes",
    "clean_captions",
    "drop_reason",
    "load_image",
    "load_source",
    "load_split",
]
