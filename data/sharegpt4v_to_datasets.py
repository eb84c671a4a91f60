"""Converts ShareGPT4V's caption JSON into a `datasets` source that `smartclip-train` can stream.

ShareGPT4V (github.com/ShareGPT4Omni/ShareGPT4V) ships its long captions as one JSON list, e.g.
`share-captioner_coco_lcs_sam_1246k_1107.json`, whose entries look like

    {"id": "...", "image": "coco/train2017/000000000009.jpg",
     "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "<the long caption>"}]}

with the images under a separate root (COCO, SAM, LLaVA's pretraining images, ...). This script writes Parquet
shards with two columns, `image` (the image file's path under `--image_root`) and `long_caption` (the first
`gpt` turn), into `--output_dir`, named so that `load_dataset(output_dir)` finds two splits: `validation` (the first
`--num_validation` entries: Long-CLIP's and SmartCLIP's ShareGPT4V-1k) and `train` (the rest). Images are not
copied: the paths are read when training reads the rows. Entries without a `gpt` turn are skipped and counted.

    python -m smartclip_data.sharegpt4v_to_datasets --json share-captioner_coco_lcs_sam_1246k_1107.json \\
        --image_root /data/sharegpt4v --output_dir /data/sharegpt4v-datasets
    smartclip-train --dataset_name /data/sharegpt4v-datasets --streaming --long_caption_column long_caption ...
"""

import argparse
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROWS_PER_SHARD = 100_000


def long_caption(entry: dict) -> str | None:
    """The first `gpt` turn of a ShareGPT4V entry (its long caption), stripped; None if it has none."""
    for turn in entry.get("conversations") or []:
        if turn.get("from") == "gpt" and str(turn.get("value", "")).strip():
            return str(turn["value"]).strip()
    return None


def convert(json_path: str, image_root: str, output_dir: str, num_validation: int = 1000,
            rows_per_shard: int = ROWS_PER_SHARD) -> dict[str, int]:
    """Writes the shards (see the module docstring); returns the rows written per split and the entries skipped."""
    entries = json.loads(Path(json_path).read_text(encoding="utf-8"))
    if not isinstance(entries, list):
        raise ValueError(f"{json_path} holds a {type(entries).__name__}; expected ShareGPT4V's list of entries.")
    splits = {"validation": entries[:num_validation], "train": entries[num_validation:]}
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    counts = {"skipped": 0}
    for split, rows in splits.items():
        images, captions = [], []
        for entry in rows:
            caption = long_caption(entry)
            if caption is None or not entry.get("image"):
                counts["skipped"] += 1
                continue
            images.append(str(Path(image_root, entry["image"])))
            captions.append(caption)
        counts[split] = len(images)
        num_shards = max(1, -(-len(images) // rows_per_shard))
        for shard in range(num_shards):
            part = slice(shard * rows_per_shard, (shard + 1) * rows_per_shard)
            table = pa.table({"image": images[part], "long_caption": captions[part]})
            pq.write_table(table, output / f"{split}-{shard:05d}-of-{num_shards:05d}.parquet")
    return counts


def main(argv: list[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(prog="sharegpt4v_to_datasets", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="ShareGPT4V's caption JSON (a list of entries)")
    parser.add_argument("--image_root", required=True, help="folder the entries' `image` paths are relative to")
    parser.add_argument("--output_dir", required=True, help="where the Parquet shards go")
    parser.add_argument("--num_validation", type=int, default=1000, help="first N entries form the validation split")
    args = parser.parse_args(argv)
    counts = convert(args.json, args.image_root, args.output_dir, args.num_validation)
    print(f"Wrote {counts['train']} train and {counts['validation']} validation rows to {args.output_dir} "
          f"({counts['skipped']} entries without a caption or image skipped).")
    return counts


if __name__ == "__main__":
    main()
