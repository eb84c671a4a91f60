"""What `smartclip-train` writes and publishes: no foreign code pointer and no token in any file, a push that uploads
the model alone, no other run's checkpoint resumed into a used folder, and a final save a loader sees whole."""

import json
import os

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPModel

from modeling_smartclip import SmartCLIPModel
from smartclip_data.scratch import scratch_clip_config, scratch_processor
from smartclip_train import run_folder
from smartclip_train.run_folder import LOCK_NAME, finish_publish, publish
from smartclip_train.train import main as train_main

from .hub_server import HubServer
from .test_runs import train
from .test_training import TINY_DATA, TINY_MODEL

TOKEN = "hf_TrainPushTokenNeverWritten42"
EVIL_PIPELINE = {"zero-shot-image-classification": {"impl": "tester/evil--evil_code.EvilPipeline", "pt": ["AutoModel"]}}


def _files_holding(folder, needle: bytes) -> list[str]:
    files = [path for path in folder.rglob("*") if path.is_file() and needle in path.read_bytes()]
    return sorted(path.relative_to(folder).as_posix() for path in files)


@pytest.fixture
def starting_dir(tmp_path):
    """A tiny SmartCLIP folder whose config.json names another repo's pipeline and model code."""
    processor = scratch_processor()
    config = scratch_clip_config(processor, hidden_size=32, num_layers=1, num_heads=4, projection_dim=16)
    torch.manual_seed(0)
    folder = tmp_path / "start"
    SmartCLIPModel.from_clip(CLIPModel(config)).save_pretrained(folder)
    processor.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["custom_pipelines"] = EVIL_PIPELINE
    config["auto_map"]["AutoModelForCausalLM"] = "tester/evil--evil_code.EvilModel"
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.filterwarnings("ignore:Removed .* code pointers")
def test_training_from_a_folder_with_foreign_code_pointers_writes_none(starting_dir, tmp_path):
    out = tmp_path / "out"
    train(out, model={"model_name_or_path": str(starting_dir)}, save_strategy="steps", save_steps=1)
    assert _files_holding(out, b"tester/evil") == []
    assert json.loads((out / "checkpoint-2" / "config.json").read_text())["auto_map"]["AutoModel"] == (
        "modeling_smartclip.SmartCLIPModel")


def test_push_to_hub_uploads_the_model_alone_and_no_file_holds_the_token(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", None)  # set below, once the server has its port
    out = tmp_path / "out"
    with HubServer(tmp_path / "hub", token=TOKEN) as hub:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        train(out, save_strategy="steps", save_steps=1, push_to_hub=True, hub_model_id="tester/trained",
              hub_token=TOKEN)
        pushed = hub.repo_files("tester/trained")

    assert "training_args.bin" not in pushed and LOCK_NAME not in pushed and "model.safetensors" in pushed
    assert not any(name.endswith((".pt", ".pth", ".bin")) for name in pushed)
    assert [name for name, content in pushed.items() if TOKEN.encode() in content] == []
    assert pushed["model.safetensors"] == (out / "model.safetensors").read_bytes()  # the final model, not a checkpoint
    assert "training_args.json" not in pushed and "learning_rate" in pushed["README.md"].decode()
    assert _files_holding(out, TOKEN.encode()) == []  # nor any local checkpoint's training_args.bin


def test_resuming_another_runs_checkpoint_into_a_used_folder_is_refused(tmp_path, capsys):
    other, used = tmp_path / "other", tmp_path / "used"
    train(other, save_strategy="steps", save_steps=2)
    train(used, seed=1)
    before = {p.name: p.read_bytes() for p in used.iterdir() if p.is_file()}

    flags = [f"--{name}={value}" for name, value in {**TINY_MODEL, **TINY_DATA}.items()]
    with pytest.raises(SystemExit) as exit_info:
        train_main([*flags, "--output_dir", str(used), "--resume_from_checkpoint", str(other / "checkpoint-2"),
                    "--max_steps", "4", "--use_cpu", "--report_to", "none"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("smartclip-train: error: --output_dir") and str(other / "checkpoint-2") in error
    assert {p.name: p.read_bytes() for p in used.iterdir() if p.is_file()} == before

    resumed = train(tmp_path / "fresh", resume_from_checkpoint=str(other / "checkpoint-2"), max_steps=4)
    assert resumed["resumed_from"] == str(other / "checkpoint-2")  # into a new folder, resuming is fine


class Killed(BaseException):
    """What a kill does to `publish`: it stops between two renames, with no cleanup."""


def _saves(tmp_path):
    """`(output folder holding save A, staging folder holding save B)`: different weights and scoring."""
    processor = scratch_processor()
    config = scratch_clip_config(processor, hidden_size=32, num_layers=1, num_heads=4, projection_dim=16)
    out, staging = tmp_path / "out", tmp_path / "out" / run_folder.STAGING_NAME
    for folder, seed, scoring in ((out, 0, "plain"), (staging, 1, "modular")):
        torch.manual_seed(seed)
        SmartCLIPModel.from_clip(CLIPModel(config), scoring=scoring).save_pretrained(folder)
        processor.save_pretrained(folder)
    return out, staging


WEIGHT = "visual_projection.weight"  # differs between the two saves (another seed)


def _state(folder, weights: dict[str, torch.Tensor]) -> str:
    """Which save a loader of `folder` gets: "plain" (A), "modular" (B), "none" (no config: it refuses to load), or
    "mixed" (one save's config beside the other's weights); `weights`: each save's `WEIGHT` by its scoring."""
    if not (folder / "config.json").is_file():
        return "none"
    scoring = json.loads((folder / "config.json").read_text())["scoring"]
    return scoring if torch.equal(load_file(folder / "model.safetensors")[WEIGHT], weights[scoring]) else "mixed"


def test_a_kill_between_the_final_saves_renames_never_leaves_a_mixed_folder(tmp_path, monkeypatch):
    replace, renames = os.replace, []

    def killing_replace(source, target):
        if len(renames) == kill_after:
            raise Killed
        renames.append(target)
        return replace(source, target)

    for kill_after in range(12):  # a save has fewer entries: the last case is a publish that completes
        out, staging = _saves(tmp_path / str(kill_after))
        weights = {"plain": load_file(out / "model.safetensors")[WEIGHT],
                   "modular": load_file(staging / "model.safetensors")[WEIGHT]}
        renames.clear()
        monkeypatch.setattr(run_folder.os, "replace", killing_replace)
        try:
            publish(staging, out)
        except Killed:
            pass
        finally:
            monkeypatch.setattr(run_folder.os, "replace", replace)
        assert _state(out, weights) in ("plain", "modular", "none"), f"killed after {kill_after} renames"
        finish_publish(out)  # what the next run into the folder does first
        # Killed before the staged save was marked complete (its first rename): the previous model stays.
        assert _state(out, weights) == ("plain" if kill_after == 0 else "modular"), f"killed after {kill_after}"
        SmartCLIPModel.from_pretrained(out)
