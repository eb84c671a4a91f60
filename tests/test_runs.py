"""Output folders lose nothing: a used folder is refused, a concurrent run is locked out, resume skips a checkpoint
cut short (simulated, and by a real kill while it is written), and a final save that fails (a full disk, made real
with a file-size limit) leaves the previous model whole."""

import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import SafetensorError
from transformers import CLIPModel, TrainerCallback

from modeling_smartclip import SmartCLIPModel
from smartclip_data.scratch import scratch_clip_config, scratch_processor
from smartclip_hub import export, push
from smartclip_train.run_folder import LOCK_NAME, RunLock
from smartclip_train.train import DataArguments, ModelArguments, SmartCLIPTrainingArguments, run_training
from smartclip_train.train import main as train_main

from .test_training import TINY_DATA, TINY_MODEL

SETTINGS = dict(
    per_device_train_batch_size=8, learning_rate=1e-3, logging_steps=1, use_cpu=True, dataloader_num_workers=0,
    report_to=[], seed=0, disable_tqdm=True,
)


def arguments(output_dir, **overrides) -> SmartCLIPTrainingArguments:
    return SmartCLIPTrainingArguments(output_dir=str(output_dir), **{"max_steps": 2, "save_strategy": "no",
                                                                      **SETTINGS, **overrides})


def train(output_dir, model=TINY_MODEL, **overrides) -> dict:
    return run_training(ModelArguments(**model), DataArguments(**TINY_DATA), arguments(output_dir, **overrides))


# A run in a child process whose files may not grow past `limit` bytes once the checkpoint of step `after_step` is
# saved: the kernel kills it (SIGXFSZ) in the middle of writing the next checkpoint.
CHILD = """
import json, resource, signal, sys
from transformers import TrainerCallback
from smartclip_train.train import DataArguments, ModelArguments, SmartCLIPTrainingArguments, run_training

settings = json.loads(sys.argv[1])

class LimitFileSize(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == settings["after_step"]:
            resource.setrlimit(resource.RLIMIT_FSIZE, (settings["limit"], resource.RLIM_INFINITY))

resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it (a write would fail instead): let it kill
run_training(ModelArguments(**settings["model"]), DataArguments(**settings["data"]),
             SmartCLIPTrainingArguments(**settings["training"]), callbacks=[LimitFileSize()])
"""


def run_child(output_dir, training: dict, **settings) -> subprocess.CompletedProcess:
    training = {"output_dir": str(output_dir), **SETTINGS, **training}
    payload = json.dumps({"model": TINY_MODEL, "data": TINY_DATA, "training": training, **settings})
    return subprocess.run([sys.executable, "-c", CHILD, payload], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_used_output_dir_is_refused_unless_overwrite_or_resume(tmp_path, caplog):
    first = train(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    assert (tmp_path / "checkpoint-2").is_dir()
    with pytest.raises(ValueError, match=r"--output_dir .* already holds files \(.*checkpoint-2.*\)\. Pass "
                                         r"--overwrite_output_dir"):
        train(tmp_path)
    assert not (tmp_path / LOCK_NAME).exists()  # the refused run released its lock

    with caplog.at_level(logging.WARNING):
        second = train(tmp_path, overwrite_output_dir=True, seed=1)
    assert "removing the earlier run's checkpoint-2" in caplog.text
    assert not (tmp_path / "checkpoint-2").exists()  # a later resume cannot pick up the other run's checkpoint
    assert second["train"]["train_loss"] != first["train"]["train_loss"]

    with pytest.raises(ValueError, match="no complete checkpoint in .* \\(no checkpoint-N folder\\)"):
        train(tmp_path, resume_from_checkpoint="last")


def test_a_live_run_locks_the_folder_and_a_dead_runs_lock_is_taken_over(tmp_path, caplog):
    with RunLock(tmp_path):
        with pytest.raises(ValueError, match=rf"--output_dir {tmp_path} is in use by another run \(pid {os.getpid()} "):
            train(tmp_path)
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder = {"pid": int(dead.stdout), "host": socket.gethostname(), "started": "earlier"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(holder))
    with caplog.at_level(logging.WARNING):
        train(tmp_path)
    assert f"Removing the lock of a run that is gone (pid {holder['pid']}" in caplog.text
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / LOCK_NAME).exists()


def test_resume_last_skips_a_checkpoint_cut_short_and_says_which_it_used(tmp_path, caplog):
    schedule = dict(max_steps=4, save_strategy="steps", save_steps=2)
    train(tmp_path, **schedule)
    # What a kill while checkpoint-4 is written leaves: the weights cut short, no trainer_state.json yet.
    partial = tmp_path / "checkpoint-4"
    (partial / "trainer_state.json").unlink()
    weights = partial / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with caplog.at_level(logging.INFO):
        resumed = train(tmp_path, resume_from_checkpoint="last", **schedule)
    assert resumed["resumed_from"] == str(tmp_path / "checkpoint-2")
    assert "skipped incomplete checkpoint-4: no trainer_state.json" in caplog.text
    assert json.loads((tmp_path / "trainer_state.json").read_text())["global_step"] == 4
    assert json.loads((partial / "trainer_state.json").read_text())["global_step"] == 4  # saved again, complete
    os.replace(partial, tmp_path / "checkpoint-6")  # a named checkpoint is checked too
    with pytest.raises(ValueError, match="not a complete checkpoint \\(trainer_state.json is of step 4\\)"):
        train(tmp_path, resume_from_checkpoint=str(tmp_path / "checkpoint-6"), **schedule)


@pytest.mark.slow
def test_a_run_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(tmp_path):
    schedule = dict(max_steps=4, save_strategy="steps", save_steps=2)
    killed = run_child(tmp_path, training=schedule, after_step=2, limit=20_000)
    assert killed.returncode == -signal.SIGXFSZ, killed.stderr[-2000:]
    assert (tmp_path / "checkpoint-4").is_dir() and not (tmp_path / "checkpoint-4" / "trainer_state.json").exists()
    assert (tmp_path / LOCK_NAME).exists()  # left by the killed run; its pid is gone

    resumed = train(tmp_path, resume_from_checkpoint="last", **schedule)
    assert resumed["resumed_from"] == str(tmp_path / "checkpoint-2")
    assert [log["step"] for log in resumed["log_history"] if "loss" in log] == [1, 2, 3, 4]
    SmartCLIPModel.from_pretrained(tmp_path)  # the final model is whole


class DiskFullAtTrainEnd(TrainerCallback):
    """From the end of training on, no file of this process may grow past `limit` bytes: writes past it fail with
    "File too large" (EFBIG; Python ignores SIGXFSZ), as on a full disk. `restore()` lifts the limit."""

    def __init__(self, limit: int):
        self.limit, self.saved = limit, resource.getrlimit(resource.RLIMIT_FSIZE)

    def on_train_end(self, args, state, control, **kwargs):
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.saved[1]))

    def restore(self):
        resource.setrlimit(resource.RLIMIT_FSIZE, self.saved)


def test_a_final_save_that_fails_leaves_the_previous_model_whole(tmp_path):
    train(tmp_path)
    files = lambda: {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    before = files()

    # Another architecture into the same folder; the disk fills up during its final save, after the code files and
    # the config (a few KB each) and in the middle of the weights (hundreds of KB).
    disk_full = DiskFullAtTrainEnd(limit=100_000)
    try:
        with pytest.raises((OSError, SafetensorError), match="File too large"):  # in the middle of the weights
            run_training(ModelArguments(**{**TINY_MODEL, "scratch_hidden_size": 64}), DataArguments(**TINY_DATA),
                         arguments(tmp_path, max_steps=1, overwrite_output_dir=True), callbacks=[disk_full])
    finally:
        disk_full.restore()

    after = files()
    assert after.keys() == before.keys() and all(after[name] == before[name] for name in before)
    SmartCLIPModel.from_pretrained(tmp_path)


def _corrupt_checkpoint(folder: Path) -> Path:
    """A saved SmartCLIP folder whose weights file is cut short, as a failed copy leaves it."""
    processor = scratch_processor()
    config = scratch_clip_config(processor, hidden_size=16, num_layers=1, num_heads=2, patch_size=8, projection_dim=8)
    SmartCLIPModel.from_clip(CLIPModel(config)).save_pretrained(folder)
    processor.save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return weights


@pytest.mark.parametrize("command", ["smartclip-train", "smartclip-push", "smartclip-export-text-encoder"])
def test_every_command_names_a_corrupt_weights_file_in_one_line(tmp_path, command, capsys):
    weights = _corrupt_checkpoint(tmp_path / "broken")
    source = str(tmp_path / "broken")
    if command == "smartclip-train":
        with pytest.raises(SystemExit) as exit_info:
            train_main(["--model_name_or_path", source, "--output_dir", str(tmp_path / "out"), "--max_steps", "1",
                        "--use_cpu", "--report_to", "none"])
        assert exit_info.value.code == 2
        message = capsys.readouterr().err.strip().splitlines()[-1]
    else:
        argv = [source, "me/model", "--dry-run", "--staging_dir", str(tmp_path / "stage")] if command == "smartclip-push" \
            else [source, str(tmp_path / "export")]
        assert (push.main if command == "smartclip-push" else export.main)(argv) != 0
        message = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(weights) in message and "not a readable safetensors file" in message
    assert "Traceback" not in capsys.readouterr().err
