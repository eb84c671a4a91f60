"""Data loading: column checks, standardised columns, dropped rows counted by reason (also in DataLoader workers
and at the end of a training run)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_smartclip import SmartCLIPModel
from smartclip_data.sources import DataArguments, DropCounter, load_image, load_split
from smartclip_train.train import main


def write_imagefolder(folder, captions: list[str], corrupt: int | None = None) -> None:
    """PNG files `0.png`, `1.png`, ... with `metadata.jsonl` (column `text`); image `corrupt` is garbage bytes."""
    rng = np.random.default_rng(0)
    with open(folder / "metadata.jsonl", "w") as metadata:
        for i, caption in enumerate(captions):
            path = folder / f"{i}.png"
            if i == corrupt:
                path.write_bytes(b"this is not a png")
            else:
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
            metadata.write(json.dumps({"file_name": path.name, "text": caption}) + "\n")


@pytest.fixture
def imagefolder(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    captions = ["a red circle.", "", "a blue square. a green cross.", "a cross.", "a square."]
    write_imagefolder(folder, captions, corrupt=3)
    return folder


def test_builtin_scenes_are_standardised():
    args = DataArguments(num_train_scenes=6, num_test_scenes=2)
    drops = DropCounter()
    dataset = load_split(args, "train", drops)
    assert dataset.column_names == ["image", "long_caption", "short_captions"]
    assert len(dataset) == 6 and drops.totals() == {"unreadable image": 0, "empty caption": 0}
    row = dataset[0]
    assert load_image(row["image"]).size == (32, 32)
    assert all(sentence in row["long_caption"] for sentence in row["short_captions"])


def test_imagefolder_drops_corrupt_image_and_empty_caption(imagefolder):
    args = DataArguments(dataset_name="imagefolder", data_dir=str(imagefolder), long_caption_column="text")
    drops = DropCounter()
    dataset = load_split(args, "train", drops)
    assert drops.totals() == {"unreadable image": 1, "empty caption": 1}
    assert sorted(dataset["long_caption"]) == ["a blue square. a green cross.", "a red circle.", "a square."]
    assert all(captions == [] for captions in dataset["short_captions"])


def test_streamed_drops_are_counted_in_dataloader_workers(imagefolder):
    args = DataArguments(
        dataset_name="imagefolder", data_dir=str(imagefolder), long_caption_column="text", streaming=True
    )
    drops = DropCounter(num_workers=1)
    dataset = load_split(args, "train", drops)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=1, collate_fn=lambda row: row["long_caption"]
    )
    assert sorted(loader) == ["a blue square. a green cross.", "a red circle.", "a square."]
    assert drops.totals() == {"unreadable image": 1, "empty caption": 1}


def test_missing_or_unset_columns_are_clear_errors(imagefolder):
    args = DataArguments(dataset_name="imagefolder", data_dir=str(imagefolder), long_caption_column="caption")
    with pytest.raises(ValueError, match=r"--long_caption_column='caption' is not a column.*\['image', 'text'\]"):
        load_split(args, "train", DropCounter())
    args = DataArguments(dataset_name="imagefolder", data_dir=str(imagefolder), image_column="picture",
                         short_captions_column="text")
    with pytest.raises(ValueError, match=r"--image_column='picture' is not a column.*\['image', 'text'\]"):
        load_split(args, "train", DropCounter())
    with pytest.raises(ValueError, match="No caption column.*--long_caption_column"):
        load_split(DataArguments(dataset_name="imagefolder", data_dir=str(imagefolder)), "train", DropCounter())
    with pytest.raises(ValueError, match=r"Split 'validation' not found.*\['train', 'test'\]"):
        load_split(DataArguments(num_train_scenes=2, num_test_scenes=1), "validation", DropCounter())


def test_training_on_imagefolder_finishes_and_reports_corrupt_image_and_empty_caption(imagefolder, tmp_path):
    output_dir = tmp_path / "out"
    main([
        "--dataset_name", "imagefolder", "--data_dir", str(imagefolder), "--long_caption_column", "text",
        "--output_dir", str(output_dir), "--max_steps", "2", "--per_device_train_batch_size", "2", "--use_cpu",
        "--report_to", "none", "--scratch_hidden_size", "32", "--scratch_num_layers", "1",
        "--scratch_projection_dim", "16", "--mask_num_attention_heads", "4", "--disable_tqdm", "true",
    ])
    metrics = json.loads((output_dir / "train_results.json").read_text())
    assert metrics["train_dropped_unreadable_image"] == 1
    assert metrics["train_dropped_empty_caption"] == 1
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    model = SmartCLIPModel.from_pretrained(output_dir)
    assert model.config.scoring == "modular" and model.config.loss_type == "smartclip"
