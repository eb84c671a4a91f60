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
    assert len(dataset) == 6 and drops.totals() == {"unreadable image": 0, "empty caption": 0, "invalid caption": 0}
    row = dataset[0]
    assert load_image(row["image"]).size == (32, 32)
    assert all(sentence in row["long_caption"] for sentence in row["short_captions"])


def test_imagefolder_drops_corrupt_image_and_empty_caption(imagefolder):
    args = DataArguments(dataset_name="imagefolder", data_dir=str(imagefolder), long_caption_column="text")
    drops = DropCounter()
    dataset = load_split(args, "train", drops)
    assert drops.totals() == {"unreadable image": 1, "empty caption": 1, "invalid caption": 0}
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
    assert drops.totals() == {"unreadable image": 1, "empty caption": 1, "invalid caption": 0}


def test_missing_or_unset_columns_are_clear_errors(imagefolder):
    args = DataArguments(dataset_name="imagefolder", data_dir=str(imagefolder), long_caption_column="caption")
    with pytest.raises(ValueError, match=r"--long_caption_column='caption' is not a column.*\['image', 'text'\]"):
        load_split(args, "train", DropCounter())
    args = DataArguments(dataset_name="imagefolder", data_dir=str(imagefolder), image_column="picture",
                         short_captions_column="text")
    with pytest.raises(ValueError, match=r"--image_column='picture' is not a column.*\['image', 'text'\]"):
        load_split(args, "train", DropCounter())
    (imagefolder / "metadata.jsonl").write_text("".join(
        json.dumps({"file_name": f"{i}.png", "label": "x"}) + "\n" for i in range(5)
    ))
    with pytest.raises(ValueError, match=r"No caption column: none of \['text', 'caption'\].*--caption_column"):
        load_split(DataArguments(dataset_name="imagefolder", data_dir=str(imagefolder)), "train", DropCounter())
    with pytest.raises(ValueError, match=r"Split 'validation' not found.*\['train', 'test'\]"):
        load_split(DataArguments(num_train_scenes=2, num_test_scenes=1), "validation", DropCounter())


def test_training_on_imagefolder_finishes_and_reports_corrupt_image_and_empty_caption(imagefolder, tmp_path):
    output_dir = tmp_path / "out"
    main([
        "--dataset_name", "imagefolder", "--data_dir", str(imagefolder), "--from_scratch",
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


def write_images(folder, count: int) -> list[str]:
    rng = np.random.default_rng(1)
    paths = []
    for i in range(count):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_imagefolder_text_column_is_the_caption_without_flags(imagefolder):
    dataset = load_split(DataArguments(dataset_name="imagefolder", data_dir=str(imagefolder)), "train", DropCounter())
    assert sorted(dataset["long_caption"]) == ["a blue square. a green cross.", "a red circle.", "a square."]


def test_run_clip_data_files_with_image_paths_and_its_default_columns(tmp_path):
    paths = write_images(tmp_path, 3)
    train_file = tmp_path / "train.csv"
    train_file.write_text("image_path,caption\n" + "".join(f"{p},caption {i}\n" for i, p in enumerate(paths)))
    validation_file = tmp_path / "validation.json"
    validation_file.write_text("".join(json.dumps({"image_path": p, "caption": "a thing"}) + "\n" for p in paths[:2]))
    args = DataArguments(train_file=str(train_file), validation_file=str(validation_file))
    train = load_split(args, "train", DropCounter())
    assert train["long_caption"] == ["caption 0", "caption 1", "caption 2"]
    assert load_image(train[0]["image"]).size == (16, 16)
    assert len(load_split(args, "validation", DropCounter(), max_samples=1)) == 1
    with pytest.raises(ValueError, match=r"Split 'test' not found in the data files; available: \['train', 'validation'\]"):
        load_split(args, "test", DropCounter())
    (tmp_path / "no_image.csv").write_text("picture,caption\nx.png,a cat\n")
    with pytest.raises(ValueError, match=r"No image column: none of \['image', 'image_path'\] is a column; set "
                                         r"--image_column; available columns: \['picture', 'caption'\]"):
        load_split(DataArguments(train_file=str(tmp_path / "no_image.csv")), "train", DropCounter())
    with pytest.raises(ValueError, match=r"--train_file='x.parquet'; expected a .csv, .json or .jsonl file"):
        DataArguments(train_file="x.parquet")
    with pytest.raises(ValueError, match="--caption_column='caption' and --long_caption_column='text'"):
        DataArguments(caption_column="caption", long_caption_column="text")


def test_no_usable_rows_is_an_error_with_the_counts_by_reason(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_imagefolder(folder, ["", "a red circle."], corrupt=1)
    with pytest.raises(ValueError, match=r"The train split has no usable rows \(1 unreadable images, 1 empty captions, "
                                         r"0 invalid captions\)"):
        load_split(DataArguments(dataset_name="imagefolder", data_dir=str(folder)), "train", DropCounter())


def test_a_caption_that_is_not_text_drops_its_row_and_names_it(tmp_path, caplog):
    paths = write_images(tmp_path, 3)
    train_file = tmp_path / "train.jsonl"
    rows = [{"image_path": paths[0], "caption": 7}, {"image_path": paths[1], "caption": None},
            {"image_path": paths[2], "caption": 9}]
    train_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(ValueError, match=r"no usable rows \(0 unreadable images, 1 empty captions, 2 invalid captions\)"):
        load_split(DataArguments(train_file=str(train_file)), "train", DropCounter())
    assert "invalid caption: row 2: A long caption must be a string or None, got a int" in caplog.text


def test_metadata_line_that_is_not_utf8_is_named_by_file_and_line(imagefolder):
    metadata = imagefolder / "metadata.jsonl"
    lines = metadata.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"a blue square", b"a bl\xff\xfe square")
    metadata.write_bytes(b"".join(lines))
    with pytest.raises(ValueError, match=rf"{metadata}, line 3: not valid UTF-8 \(invalid start byte at byte \d+ "):
        load_split(DataArguments(dataset_name="imagefolder", data_dir=str(imagefolder)), "train", DropCounter())


def test_simple_scenes_have_no_size_and_slot_ordered_captions():
    args = DataArguments(num_train_scenes=20, num_test_scenes=2, scenes_sizes=False, scenes_slot_order=True)
    dataset = load_split(args, "train", DropCounter())
    for row in dataset:
        assert row["long_caption"] == " ".join(row["short_captions"])  # the sentences are listed in slot order
        assert not any(size in row["long_caption"].split() for size in ("small", "large"))
        assert row["short_captions"][0].startswith("a ") and len(row["short_captions"][0].split()) == 7
    default = load_split(DataArguments(num_train_scenes=20, num_test_scenes=2), "train", DropCounter())
    assert any(row["long_caption"] != " ".join(row["short_captions"]) for row in default)  # shuffled by default
