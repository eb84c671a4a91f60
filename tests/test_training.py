"""End-to-end training runs on tiny models: resume, learning-rate groups, frozen positions, eval loss, the saved
scoring, and the loss registry. (Training on an imagefolder with bad rows is in test_data.py.)"""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainingArguments

from modeling_smartclip import SmartCLIPModel
from smartclip_train.objectives import OBJECTIVES, build_objective
from smartclip_train.train import POSITION_EMBEDDING, DataArguments, ModelArguments, objective_from_arguments, run_training


TINY_MODEL = dict(scratch_hidden_size=32, scratch_num_layers=1, scratch_projection_dim=16, mask_num_attention_heads=4)
TINY_DATA = dict(num_train_scenes=24, num_test_scenes=4)


def training_args(output_dir, **overrides) -> TrainingArguments:
    settings = dict(
        output_dir=str(output_dir), per_device_train_batch_size=8, per_device_eval_batch_size=4, learning_rate=1e-3,
        max_steps=2, logging_steps=1, save_strategy="no", use_cpu=True, dataloader_num_workers=0, report_to=[],
        seed=0, disable_tqdm=True,
    )
    return TrainingArguments(**{**settings, **overrides})


class Interrupted(Exception):
    pass


class KillAfterCheckpoint(TrainerCallback):
    """Stops the run abruptly (no final save) once the checkpoint of `step` is on disk."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Interrupted


class RecordOptimizer(TrainerCallback):
    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.groups = [(group["lr"], group["weight_decay"], list(group["params"])) for group in optimizer.param_groups]


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    # 3 batches per epoch, 6 steps: the run is killed in the middle of the second epoch and resumed from there.
    model_args, data_args = ModelArguments(**TINY_MODEL), DataArguments(**TINY_DATA)
    schedule = dict(max_steps=6, save_strategy="steps", save_steps=2)
    straight = run_training(model_args, data_args, training_args(tmp_path / "straight", **schedule))

    with pytest.raises(Interrupted):
        killed_args = training_args(tmp_path / "killed", **schedule)
        run_training(model_args, data_args, killed_args, callbacks=[KillAfterCheckpoint(4)])
    checkpoint = tmp_path / "killed" / "checkpoint-4"
    assert (checkpoint / "model.safetensors").is_file() and not (checkpoint / "pytorch_model.bin").exists()
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    resumed = run_training(
        model_args, data_args, training_args(tmp_path / "killed", resume_from_checkpoint=str(checkpoint), **schedule)
    )

    expected = load_file(tmp_path / "straight" / "model.safetensors")
    got = load_file(tmp_path / "killed" / "model.safetensors")
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    losses = lambda result: [(log["step"], log["loss"]) for log in result["log_history"] if "loss" in log]
    assert losses(resumed) == losses(straight)
    assert [step for step, _ in losses(straight)] == [1, 2, 3, 4, 5, 6]


def test_clip_checkpoint_fine_tune_two_learning_rates_frozen_positions_and_eval_loss(tmp_path, clip_dir):
    start = SmartCLIPModel.from_clip(clip_dir)
    recorder = RecordOptimizer()
    result = run_training(
        ModelArguments(model_name_or_path=str(clip_dir), mask_num_attention_heads=4, freeze_first_positions=20,
                       mask_learning_rate=3e-3),
        DataArguments(eval_split="test", **TINY_DATA),
        training_args(tmp_path, learning_rate=1e-2, weight_decay=0.5, eval_strategy="steps", eval_steps=1),
        eval_fn=lambda model, processor: {"positions": model.config.text_config.max_position_embeddings},
        callbacks=[recorder],
    )
    trained = SmartCLIPModel.from_pretrained(tmp_path)
    sizes = {lr: sum(param.numel() for group_lr, _, params in recorder.groups if group_lr == lr for param in params)
             for lr, _, _ in recorder.groups}
    head_size = sum(param.numel() for param in trained.mask_head.parameters())
    assert sizes == {1e-2: trained.num_parameters() - head_size, 3e-3: head_size}
    position_groups = [decay for _, decay, params in recorder.groups if any(p.shape == (248, 32) for p in params)]
    assert position_groups == [0.0]  # the position table is kept out of weight decay

    positions_before = start.state_dict()[POSITION_EMBEDDING]
    positions_after = trained.state_dict()[POSITION_EMBEDDING]
    assert torch.equal(positions_after[:20], positions_before[:20])
    assert not torch.equal(positions_after[20:], positions_before[20:])
    assert result["eval"]["eval_loss"] > 0 and result["eval"]["eval_dropped_unreadable_image"] == 0
    assert [log["eval_loss"] for log in result["log_history"] if "eval_loss" in log][:2]
    assert all("mask_density" in log for log in result["log_history"] if "loss" in log)
    assert result["evaluation"] == {"positions": 248}
    assert trained.config.scoring == "modular"


@pytest.mark.parametrize("objective", ["clip", "random_mask"])
def test_baseline_and_control_keep_the_head_and_save_plain_scoring(tmp_path, objective):
    start_dir = tmp_path / "start"
    run_training(ModelArguments(**TINY_MODEL), DataArguments(**TINY_DATA), training_args(start_dir, max_steps=1))
    result = run_training(
        ModelArguments(model_name_or_path=str(start_dir), objective=objective),
        DataArguments(**TINY_DATA),
        training_args(tmp_path / objective, max_steps=2),
    )
    start, trained = (load_file(path / "model.safetensors") for path in (start_dir, tmp_path / objective))
    head = [name for name in start if name.startswith("mask_head.")]
    assert head and all(torch.equal(start[name], trained[name]) for name in head)
    assert not torch.equal(start["visual_projection.weight"], trained["visual_projection.weight"])
    config = json.loads((tmp_path / objective / "config.json").read_text())
    assert config["scoring"] == "plain"
    assert config["loss_type"] == "clip" and config["mask_head_trained"] is False
    logged = [log for log in result["log_history"] if "loss" in log]
    assert all(("mask_density" in log) == (objective == "random_mask") for log in logged)


def test_objective_names_and_errors():
    assert set(OBJECTIVES) == {"smartclip", "clip", "random_mask", "paired_mask", "longclip"}
    with pytest.raises(ValueError, match=r"objective 'siglip'; expected one of \('smartclip', 'clip', 'random_mask', 'paired_mask', 'longclip'\)"):
        build_objective("siglip")
    with pytest.raises(ValueError, match="density"):
        build_objective("random_mask", density=1.5)


@pytest.mark.parametrize("objective", ["smartclip", "clip", "random_mask", "paired_mask", "longclip"])
def test_local_loss_flag_reaches_the_objective(objective):
    config = SmartCLIPModel.config_class()
    density = {"random_mask_density": 0.5} if objective == "random_mask" else {}
    for local_loss in (True, False):
        args = ModelArguments(objective=objective, local_loss=local_loss, **density)
        assert objective_from_arguments(args, config).local_loss is local_loss
