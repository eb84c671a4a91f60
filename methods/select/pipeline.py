"""The selection pipeline behind `smartclip-select`: filter an image-caption dataset with a teacher CLIP or
SmartCLIP before training.

Scores every pair by negCLIPLoss and, given a target set, every image by NormSim (`scores.py`); keeps the top
`--fraction` of the usable pairs by negCLIPLoss, then the top by NormSim down to `--fraction_normsim` of them
(`selection.py`); writes the kept rows with all their columns plus the scores, and a report. The pool is any source
`smartclip-train` reads (the same data flags; `--train_split` is the pool, `--max_train_samples` its first rows,
`--streaming` streams it, read twice: to embed and to write). Embeddings are cached (`embed.py`): a second
selection with other fractions or scores re-uses them, and an interrupted run resumes.

    smartclip-select --teacher openai/clip-vit-base-patch16 --dataset_name my/pairs --long_caption_column caption \
        --output_dir outputs/selected --fraction 0.3 --target_dataset my/task --target_split validation \
        --fraction_normsim 0.2
    smartclip-train --dataset_name outputs/selected/data --long_caption_column caption ...

Output folder: `data/` (the kept rows: `save_to_disk`, or parquet shards), `report.json` (arguments, counts, cuts,
score summaries, timings), `scores.png` (histograms with the cuts), `decisions.npy` (`(N,)` uint8, one
`selection.DECISIONS` code per source row) and `cache/` (embeddings and scores, unless `--cache_dir`).
"""

import dataclasses
import json
import logging
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import Dataset, IterableDataset, Value
from datasets import Image as ImageFeature
from tqdm.auto import tqdm

from modeling_smartclip.configuration_smartclip import SCORINGS
from modeling_smartclip.loading import load_model_and_processor
from smartclip_data.sources import DataArguments, check_columns, column_names, load_source
from smartclip_train.cli import user_errors
from smartclip_train.train import parse_flags_or_file, resolve_device

from .embed import CAPTIONS, EmbeddingCache, embed_rows, fingerprint, pair_caption, teacher_fingerprint
from .report import histograms, summary
from .scores import neg_clip_loss, norm_sim
from .selection import DECISIONS, KEPT, chunks, select

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SCORE_COLUMNS = ("neg_clip_loss", "norm_sim")


@dataclass
class SelectArguments:
    """The teacher, the scores and the selection of `smartclip-select` (the data flags are `DataArguments`)."""

    teacher: str = field(metadata={"help": "A CLIP or SmartCLIP folder or Hub id that embeds the pool."})
    output_dir: str = field(metadata={"help": "Where the kept rows, the report and (by default) the cache go."})
    processor_name_or_path: str | None = field(default=None, metadata={"help": "Processor source; default: the teacher's."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "Embedding and score cache, shareable between runs; default: OUTPUT_DIR/cache."}
    )
    caption: str = field(
        default="long",
        metadata={"help": "Caption paired with the image: the long one (else the first short) or the first short "
                  "one (else the long).", "choices": CAPTIONS},
    )
    batch_size: int = field(default=64, metadata={"help": "Pairs embedded per batch (and per cached block)."})
    device: str = field(default="auto", metadata={"help": "'auto' (CUDA when available), 'cpu' or 'cuda'."})
    tau: float = field(default=0.01, metadata={"help": "negCLIPLoss temperature (the paper's 0.01)."})
    clip_batch_size: int = field(
        default=32768, metadata={"help": "negCLIPLoss batch size B (the paper's 32768; the pool size if smaller)."}
    )
    num_batchings: int = field(default=10, metadata={"help": "negCLIPLoss: random batchings averaged (K)."})
    seed: int = field(default=0, metadata={"help": "Seed of the random batchings."})
    scoring: str = field(
        default="plain",
        metadata={"help": "negCLIPLoss similarity: plain (CLIP's cosine) or modular (cos(image * mask(caption), "
                  "caption) with a trained SmartCLIP head).", "choices": SCORINGS},
    )
    fraction: float = field(default=0.3, metadata={"help": "Share of the usable pairs kept by negCLIPLoss."})
    fraction_normsim: float | None = field(
        default=None,
        metadata={"help": "Then keep the top by NormSim down to this share of the usable pairs (needs a target)."},
    )
    target_images: str | None = field(default=None, metadata={"help": "NormSim target: a folder of images."})
    target_dataset: str | None = field(
        default=None, metadata={"help": "NormSim target: a datasets source (default with --target_split: the pool's)."}
    )
    target_split: str | None = field(default=None, metadata={"help": "NormSim target: the split of images."})
    target_image_column: str | None = field(default=None, metadata={"help": "Target image column; default: the pool's."})
    max_target_samples: int | None = field(default=None, metadata={"help": "Use only the first N target images."})
    normsim_p: str = field(default="inf", metadata={"help": "NormSim norm: 2 or inf.", "choices": ["2", "inf"]})
    output_format: str = field(
        default="save_to_disk", metadata={"help": "Kept rows as a save_to_disk folder or parquet shards.",
                                          "choices": ["save_to_disk", "parquet"]}
    )
    parquet_shard_rows: int = field(default=10000, metadata={"help": "Rows per parquet shard."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self):
        if not 0 < self.fraction <= 1:
            raise ValueError(f"--fraction={self.fraction}; expected a share in (0, 1].")
        if self.fraction_normsim is not None and not 0 < self.fraction_normsim <= self.fraction:
            raise ValueError(f"--fraction_normsim={self.fraction_normsim}; expected a share in (0, --fraction].")
        if self.target_images is not None and (self.target_dataset or self.target_split):
            raise ValueError("--target_images is a folder of images; do not also give --target_dataset/--target_split.")
        if self.target_dataset is not None and self.target_split is None:
            raise ValueError(f"--target_dataset={self.target_dataset!r} needs --target_split.")
        if self.fraction_normsim is not None and not self.has_target:
            raise ValueError("--fraction_normsim needs a target set: --target_images or --target_split.")
        for name in ("batch_size", "clip_batch_size", "num_batchings", "parquet_shard_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name}={getattr(self, name)}; expected a positive integer.")
        if self.tau <= 0:
            raise ValueError(f"--tau={self.tau}; expected a positive temperature.")

    @property
    def has_target(self) -> bool:
        return self.target_images is not None or self.target_split is not None


# ----- data -----------------------------------------------------------------------------------------------------------


def open_pool(data_args: DataArguments, split: str, max_samples: int | None):
    """`(dataset, image_column, long_caption_column, short_captions_column)`: the raw split with all its columns,
    images left undecoded (a corrupt file is caught where it is read), limited to its first `max_samples` rows."""
    dataset = load_source(data_args, split)
    image_column, long_column, short_column = check_columns(data_args, column_names(dataset))
    return _undecoded_head(dataset, image_column, max_samples), image_column, long_column, short_column


def _undecoded_head(dataset, image_column: str, max_samples: int | None):
    if isinstance((dataset.features or {}).get(image_column), ImageFeature):
        dataset = dataset.cast_column(image_column, ImageFeature(decode=False))
    if max_samples is None:
        return dataset
    return dataset.take(max_samples if isinstance(dataset, IterableDataset) else min(max_samples, len(dataset)))


def source_key(data_args: DataArguments, split: str, dataset, max_samples: int | None) -> dict:
    """What identifies a split's rows: the source flags, and the fingerprint of a loaded (not streamed) dataset."""
    names = ("dataset_name", "dataset_config_name", "data_dir", "train_file", "validation_file", "image_column",
             "caption_column", "long_caption_column", "short_captions_column", "streaming")
    key = {name: getattr(data_args, name) for name in names} | {"split": split, "max_samples": max_samples}
    if data_args.builtin:
        key |= {"scenes": (data_args.num_train_scenes, data_args.num_test_scenes, data_args.scenes_seed)}
    elif isinstance(dataset, Dataset):
        key["fingerprint"] = dataset._fingerprint
    return key


def image_folder(folder: str) -> tuple[Dataset, dict]:
    """A folder of images (searched recursively) as a one-column dataset of paths, and its key (names, sizes,
    modification times)."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"--target_images={folder!r} holds no image files ({', '.join(IMAGE_SUFFIXES)}).")
    key = {"folder": str(Path(folder).resolve()),
           "files": [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]}
    return Dataset.from_dict({"image": [str(p) for p in files]}), key


def target_source(args: SelectArguments, data_args: DataArguments) -> tuple[Dataset | IterableDataset, str, dict]:
    """`(dataset, image_column, key)` of the NormSim target images."""
    if args.target_images is not None:
        dataset, key = image_folder(args.target_images)
        if args.max_target_samples is not None:
            dataset = dataset.take(min(args.max_target_samples, len(dataset)))
        return dataset, "image", key | {"max_samples": args.max_target_samples}
    target_args = data_args
    if args.target_dataset is not None:
        target_args = dataclasses.replace(
            data_args, dataset_name=args.target_dataset, dataset_config_name=None, data_dir=None, train_file=None,
            validation_file=None, image_column=None,
        )
    target_args = dataclasses.replace(target_args, image_column=args.target_image_column or target_args.image_column)
    dataset = load_source(target_args, args.target_split)
    columns = column_names(dataset)
    image_column = target_args.image_column_of(columns)
    if image_column not in columns:
        raise ValueError(
            f"The target set has no image column {image_column!r} (set --target_image_column); available columns: "
            f"{columns}."
        )
    dataset = _undecoded_head(dataset, image_column, args.max_target_samples)
    return dataset, image_column, source_key(target_args, args.target_split, dataset, args.max_target_samples)


# ----- embedding and scores -------------------------------------------------------------------------------------------


def embed_source(model, processor, dataset, image_column: str, cache: EmbeddingCache, args: SelectArguments,
                 caption_of=None, on_block=None, desc: str = "Embedding") -> EmbeddingCache:
    """Embeds the rows of `dataset` not yet in `cache` (none when it is complete)."""
    if cache.complete:
        return cache
    total = len(dataset) if isinstance(dataset, Dataset) else None
    bar = tqdm(total=total, initial=cache.rows_done, unit="pair", desc=desc, disable=not args.progress)

    def progress(rows_done: int) -> None:
        bar.update(rows_done - bar.n)
        if on_block is not None:
            on_block(rows_done)

    try:
        batches = dataset.skip(cache.rows_done).iter(args.batch_size)
        return embed_rows(model, processor, batches, cache, image_column, caption_of, progress)
    finally:
        bar.close()


def cached_scores(folder: Path, name: str, parameters: dict, size: int, compute) -> np.ndarray:
    """A `(size,)` float32 score array, read from `folder` if these parameters were scored before, else computed by
    `compute(out)` into a new memory-mapped file (NaN where not scored) that is renamed into place when done."""
    path = folder / f"{name}-{fingerprint(parameters)[:16]}.npy"
    if not path.exists():
        partial = path.with_suffix(".partial.npy")
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(size,))
        for rows in chunks(size):
            out[rows] = np.nan
        compute(out)
        out.flush()
        del out
        os.replace(partial, path)
    return np.load(path, mmap_mode="r") if size else np.zeros(0, np.float32)


def rows_kept(codes: np.ndarray) -> np.ndarray:
    """Indices of the rows coded `KEPT`: in a status array the usable pairs, in a decision array the kept ones."""
    return np.concatenate([np.flatnonzero(np.asarray(codes[rows]) == KEPT) + rows.start for rows in chunks(len(codes))]
                          or [np.zeros(0, np.int64)])


# ----- output ---------------------------------------------------------------------------------------------------------


def kept_subset(dataset, decisions: np.ndarray, scores: dict[str, np.ndarray], batch_size: int, work_dir: Path) -> Dataset:
    """The kept rows with every column of the source plus one column per score."""
    if isinstance(dataset, Dataset):
        kept = rows_kept(decisions)
        subset = dataset.select(kept)
        for name, values in scores.items():
            subset = subset.add_column(name, np.asarray(values[kept]), feature=Value("float32"))
        return subset

    def rows():
        start = 0
        for batch in dataset.iter(batch_size):
            size = len(next(iter(batch.values())))
            for i in np.flatnonzero(np.asarray(decisions[start : start + size]) == KEPT):
                yield {**{column: values[i] for column, values in batch.items()},
                       **{name: float(values[start + i]) for name, values in scores.items()}}
            start += size

    features = None
    if dataset.features is not None:
        features = dataset.features.copy()
        features.update({name: Value("float32") for name in scores})
    # Written to disk as it is read (the stream may not fit in memory). The work folder is new, so there is no
    # cache to find: a fresh fingerprint saves `datasets` from hashing the generator's memory-mapped arrays.
    return Dataset.from_generator(rows, features=features, cache_dir=str(work_dir), fingerprint=uuid.uuid4().hex)


def write_subset(subset: Dataset, image_column: str, folder: Path, output_format: str, shard_rows: int, split: str):
    if isinstance(subset.features.get(image_column), ImageFeature):
        subset = subset.cast_column(image_column, ImageFeature())  # decoded again when read, as the source was
    if output_format == "save_to_disk":
        subset.save_to_disk(str(folder))
        return
    folder.mkdir(parents=True)
    num_shards = max(1, math.ceil(len(subset) / shard_rows))
    for index in range(num_shards):
        shard = subset.shard(num_shards, index, contiguous=True)
        shard.to_parquet(str(folder / f"{split}-{index:05d}-of-{num_shards:05d}.parquet"))


# ----- the run --------------------------------------------------------------------------------------------------------


def run_selection(args: SelectArguments, data_args: DataArguments, on_block=None) -> dict:
    """Embeds, scores, selects, writes the kept rows and the report; returns the report (also `report.json`).

    Args:
        on_block: called with the pool rows embedded so far after each cached block.
    """
    seconds = {}
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(args.cache_dir) if args.cache_dir else output_dir / "cache"
    device = resolve_device(args.device)

    # Phase 1: the teacher.
    try:
        model, processor = load_model_and_processor(args.teacher, args.processor_name_or_path)
    except OSError as error:  # transformers' message for a missing folder or Hub repo does not name it
        raise OSError(f"--teacher {args.teacher!r}: {error}") from error
    model.to(device).eval()
    if args.scoring == "modular" and not model.config.mask_head_trained:
        raise ValueError(
            f"--scoring modular needs a SmartCLIP teacher whose mask head was trained; {args.teacher} has an "
            "untrained head (a CLIP, or a SmartCLIP trained without the modular loss). Use --scoring plain."
        )
    teacher_key = teacher_fingerprint(model, processor)

    # Phase 2: the pool, embedded once (cached; resumes an interrupted run).
    start = time.perf_counter()
    split, max_samples = data_args.train_split, data_args.max_train_samples
    pool, image_column, long_column, short_column = open_pool(data_args, split, max_samples)
    pool_key = {"teacher": teacher_key, "source": source_key(data_args, split, pool, max_samples),
                "caption": args.caption}
    pool_cache = EmbeddingCache(cache_dir / f"pool-{fingerprint(pool_key)[:16]}", fingerprint(pool_key),
                                model.config.projection_dim, with_masks=model.config.mask_head_trained,
                                description=pool_key)
    reused = pool_cache.complete

    def caption_of(batch: dict[str, list], i: int) -> str:
        long_caption = batch[long_column][i] if long_column else None
        short_captions = batch[short_column][i] if short_column else None
        return pair_caption(long_caption, short_captions, args.caption)

    embed_source(model, processor, pool, image_column, pool_cache, args, caption_of, on_block,
                 "Embedding the pool")
    status = pool_cache.load("status")
    size = len(status)
    rows = rows_kept(status)
    seconds["embedding"] = time.perf_counter() - start

    # Phase 3: scores, cached per parameters (a second selection with other fractions re-scores nothing).
    start = time.perf_counter()
    scores = {}
    clip_batch = min(args.clip_batch_size, len(rows))
    parameters = {"tau": args.tau, "B": clip_batch, "K": args.num_batchings, "seed": args.seed, "scoring": args.scoring}
    scores["neg_clip_loss"] = cached_scores(
        pool_cache.folder, "neg_clip_loss", parameters, size,
        lambda out: neg_clip_loss(
            pool_cache.load("text_embeds"), pool_cache.load("image_embeds"), rows, out, args.tau,
            max(clip_batch, 1), args.num_batchings, args.seed,
            pool_cache.load("text_masks") if args.scoring == "modular" else None, args.scoring,
            device=device,
        ),
    )
    target_counts, target_folder = None, None
    if args.has_target:
        target, target_column, key = target_source(args, data_args)
        target_key = {"teacher": teacher_key, "source": key}
        target_cache = EmbeddingCache(cache_dir / f"target-{fingerprint(target_key)[:16]}", fingerprint(target_key),
                                      model.config.projection_dim, with_text=False, description=target_key)
        embed_source(model, processor, target, target_column, target_cache, args, desc="Embedding the target set")
        target_status = target_cache.load("status")
        target_rows = rows_kept(target_status)
        target_counts = {"images": len(target_status), "usable": len(target_rows),
                         "unreadable image": len(target_status) - len(target_rows)}
        target_folder = str(target_cache.folder)
        p = math.inf if args.normsim_p == "inf" else 2
        target_embeds = np.asarray(target_cache.load("image_embeds")[target_rows])
        scores["norm_sim"] = cached_scores(
            pool_cache.folder, "norm_sim", {"target": target_cache.key, "p": args.normsim_p}, size,
            lambda out: norm_sim(pool_cache.load("image_embeds"), target_embeds, rows, out, p, device=device),
        )
    seconds["scoring"] = time.perf_counter() - start

    # Phase 4: selection, one decision per source row.
    start = time.perf_counter()
    decisions = np.lib.format.open_memmap(output_dir / "decisions.npy", mode="w+", dtype=np.uint8, shape=(size,))
    for block in chunks(size):
        decisions[block] = status[block]
    result = select(decisions, scores["neg_clip_loss"], args.fraction, scores.get("norm_sim"), args.fraction_normsim)
    decisions.flush()
    counts = {"pool": size, "usable": result["usable"]}
    for code, name in enumerate(DECISIONS):
        counts[name] = sum(int((np.asarray(decisions[block]) == code).sum()) for block in chunks(size))
    seconds["selection"] = time.perf_counter() - start

    # Phase 5: the kept rows and the report.
    start = time.perf_counter()
    data_folder, work_dir = output_dir / "data", output_dir / "tmp"
    for folder in (data_folder, work_dir):
        shutil.rmtree(folder, ignore_errors=True)
    try:
        subset = kept_subset(pool, decisions, scores, args.batch_size, work_dir)
        write_subset(subset, image_column, data_folder, args.output_format, args.parquet_shard_rows, split)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    seconds["writing"] = time.perf_counter() - start
    cuts = {name: result[name] for name in SCORE_COLUMNS}
    report = {
        "arguments": {"select": dataclasses.asdict(args), "data": dataclasses.asdict(data_args)},
        "counts": counts,
        "target_counts": target_counts,
        "cuts": {name: None if cut is None else dataclasses.asdict(cut) for name, cut in cuts.items()},
        "scores": {name: summary(values, decisions) for name, values in scores.items()},
        "negclip_batch_size": clip_batch,
        "outputs": {"data": str(data_folder), "format": args.output_format, "decisions": str(output_dir / "decisions.npy"),
                    "histograms": str(histograms(scores, decisions, cuts, output_dir / "scores.png"))},
        "cache": {"pool": str(pool_cache.folder), "target": target_folder, "embeddings_reused": reused,
                  "scores": {name: getattr(values, "filename", None) for name, values in scores.items()}},
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
    }
    (output_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    logger.info("Kept %d of %d usable pairs (%s).", counts["kept"], counts["usable"],
                ", ".join(f"{counts[name]} {name}" for name in DECISIONS[1:]))
    return report


def parse_args(argv: list[str] | None = None) -> tuple[SelectArguments, DataArguments]:
    """`(SelectArguments, DataArguments)` from flags, or from one `.json` / `.yaml` file holding them."""
    return parse_flags_or_file((SelectArguments, DataArguments), argv)


def main(argv: list[str] | None = None) -> None:
    """Console script `smartclip-select`: status 0 and a summary on stdout on success (returning nothing: the
    console script exits with what `main` returns); a user error is one line on stderr, status 2."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    with user_errors("smartclip-select"):
        select_args, data_args = parse_args(argv)
        report = run_selection(select_args, data_args)
    counts = report["counts"]
    dropped = ", ".join(f"{counts[name]} {name}" for name in DECISIONS[1:])
    print(f"Kept {counts['kept']} of {counts['usable']} usable pairs of {counts['pool']} ({dropped}).")
    print(f"Kept rows: {report['outputs']['data']}; report: {Path(select_args.output_dir, 'report.json')}")


if __name__ == "__main__":
    main()


__all__ = ["SelectArguments", "main", "parse_args", "run_selection"]
