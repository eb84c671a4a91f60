"""The paper's ViT-B/16 recipe: it parses as `smartclip-train` settings, and two steps of it run with tiny towers
on CPU on data converted from a ShareGPT4V-style JSON."""

import json
from pathlib import Path

import numpy as np
import yaml
from datasets import load_dataset
from PIL import Image
from safetensors.torch import load_file

from smartclip_data.sharegpt4v_to_datasets import convert
from smartclip_train.train import main, parse_args

RECIPE = Path(__file__).parents[1] / "experiments" / "recipes" / "paper_vitb16.yaml"
CAPTIONS = ["a red circle at the top left. a blue square at the bottom right.", "a green cross. a yellow triangle."]


def test_recipe_sets_the_papers_settings(tmp_path):
    # bf16 is checked against the machine when parsed: on a machine without a GPU it needs use_cpu.
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.read_text() + "use_cpu: true\n")
    model_args, data_args, training_args = parse_args([str(recipe)])
    assert model_args.model_name_or_path == "openai/clip-vit-base-patch16"
    assert (model_args.objective, model_args.mask_pooling) == ("smartclip", "attention")
    assert (training_args.learning_rate, model_args.mask_learning_rate) == (1e-6, 1e-3)
    assert model_args.freeze_first_positions == 20
    assert training_args.per_device_train_batch_size * 8 == 1024 and training_args.bf16
    assert data_args.streaming and data_args.long_caption_column == "long_caption"


def sharegpt4v_source(root: Path, n: int = 6) -> Path:
    """A ShareGPT4V-style JSON over `n` small PNGs, converted; the first 2 entries are the validation split."""
    rng = np.random.default_rng(0)
    entries = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / f"{i}.png")
        entries.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image."},
            {"from": "gpt", "value": CAPTIONS[i % 2]},
        ]})
    entries.append({"id": "no caption", "image": "0.png", "conversations": [{"from": "human", "value": "hi"}]})
    (root / "captions.json").write_text(json.dumps(entries))
    counts = convert(str(root / "captions.json"), str(root), str(root / "converted"), num_validation=2)
    assert counts == {"validation": 2, "train": 4, "skipped": 1}
    return root / "converted"


def test_converted_sharegpt4v_streams_with_image_paths_and_long_captions(tmp_path):
    source = sharegpt4v_source(tmp_path)
    rows = list(load_dataset(str(source), split="train", streaming=True))
    assert [row["long_caption"] for row in rows] == [CAPTIONS[i % 2] for i in range(2, 6)]
    assert rows[0]["image"] == str(tmp_path / "2.png")
    assert len(load_dataset(str(source), split="validation")) == 2


def test_two_steps_of_the_recipe_run_with_tiny_towers_on_cpu(tmp_path, clip_dir):
    settings = yaml.safe_load(RECIPE.read_text())
    settings |= {
        "model_name_or_path": str(clip_dir), "dataset_name": str(sharegpt4v_source(tmp_path)),
        "output_dir": str(tmp_path / "out"), "max_steps": 2, "per_device_train_batch_size": 2, "bf16": False,
        "dataloader_num_workers": 0, "save_strategy": "no", "warmup_steps": 0, "use_cpu": True,
    }
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(settings))
    main([str(recipe)])

    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["scoring"] == "modular" and config["text_config"]["max_position_embeddings"] == 248
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    positions = load_file(tmp_path / "out" / "model.safetensors")["text_model.embeddings.position_embedding.weight"]
    start = load_file(clip_dir / "model.safetensors")["text_model.embeddings.position_embedding.weight"]
    assert (positions[:20] == start[:20]).all()  # Long-CLIP's kept rows stay as they were
