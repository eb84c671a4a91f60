"""A score computed from non-finite numbers is an error, never a result: metrics of NaN scores, `smartclip-eval` on
a model with a NaN weight or one whose features overflow, a diverged training run, and Set-CLIP with a zero
temperature all end in one line and a non-zero status, and write no card or results claiming a score."""

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback, TrainingArguments

from modeling_smartclip import SmartCLIPModel, SmartCLIPProcessor
from modeling_smartclip.retrieval import encode_gallery, encode_texts
from smartclip_eval.cli import main as eval_main
from smartclip_eval.metrics import classification_metrics, retrieval_metrics
from smartclip_methods.setclip.train import SetCLIPArguments, run_setclip_training
from smartclip_methods.setclip.train import main as setclip_main
from smartclip_train.train import DataArguments, ModelArguments, main as train_main, run_training

TINY_MODEL = ["--scratch_hidden_size", "32", "--scratch_num_layers", "1", "--scratch_projection_dim", "16"]
TINY_RUN = ["--num_train_scenes", "32", "--num_test_scenes", "8", "--per_device_train_batch_size", "8", "--use_cpu",
            "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--logging_steps", "1"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_metrics_of_non_finite_scores_are_an_error(bad):
    scores = torch.rand(4, 4)
    scores[1, 2] = bad  # with NaN every comparison is false, and the rank of each right image was 0
    with pytest.raises(ValueError, match="NaN or infinite"):
        retrieval_metrics(scores, torch.arange(4))
    with pytest.raises(ValueError, match="NaN or infinite"):
        classification_metrics(scores, torch.arange(4))


@pytest.mark.parametrize("tower", ["visual_projection", "text_projection"])
def test_the_retrieval_encoders_refuse_non_finite_embeddings(clip_dir, tower):
    model = SmartCLIPModel.from_clip(clip_dir).eval()
    processor = SmartCLIPProcessor.from_clip(clip_dir)
    with torch.no_grad():
        getattr(model, tower).weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite embeddings for 2 (images|captions) \(rows \[0, 1\]\)"):
        if tower == "visual_projection":
            encode_gallery(model, torch.rand(2, 3, 32, 32))
        else:
            encode_texts(model, ["a red circle.", "a blue square."], processor=processor)


@pytest.mark.parametrize("value, named", [(float("nan"), "visual_projection.weight"), (3e38, "NaN or infinite")])
def test_eval_of_a_model_with_a_nan_weight_or_overflowing_features_fails(smartclip_dir, tmp_path, capsys, value, named):
    # One NaN weight (the loader names it), or a finite weight so large that the image features overflow to
    # infinity and their cosines are NaN (the metrics refuse them).
    folder = tmp_path / "model"
    shutil.copytree(smartclip_dir, folder)
    weights = load_file(folder / "model.safetensors")
    weights["visual_projection.weight"][0] = value
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SystemExit) as exit_:
        eval_main(["--model", str(folder), "--num_test_scenes", "8", "--output", str(tmp_path / "results.json")])
    code, stderr = exit_.value.code, capsys.readouterr().err
    message = code if isinstance(code, str) else stderr.strip().splitlines()[-1]
    assert code not in (0, None) and named in message and "Traceback" not in stderr
    assert not (tmp_path / "results.json").exists()


def test_a_diverged_training_run_stops_without_a_card_or_results(tmp_path, capsys):
    output_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        train_main(["--output_dir", str(output_dir), "--learning_rate", "1e6", "--max_steps", "6", "--do_train",
                    "--do_eval", "--eval_split", "test", *TINY_MODEL, *TINY_RUN])
    code, stderr = exit_.value.code, capsys.readouterr().err
    message = code if isinstance(code, str) else stderr.strip().splitlines()[-1]
    assert code not in (0, None) and "diverged" in message and "Traceback" not in stderr
    written = {path.name for path in output_dir.iterdir()} if output_dir.exists() else set()
    assert not written & {"README.md", "eval_results.json", "all_results.json", "model.safetensors"}, written


class PoisonLastUpdate(TrainerCallback):
    """Makes one weight NaN after the last optimizer step, whose loss was finite."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == state.max_steps:
            with torch.no_grad():
                model.visual_projection.weight[0, 0] = float("nan")


def tiny_training_args(output_dir, **overrides) -> TrainingArguments:
    settings = dict(output_dir=str(output_dir), per_device_train_batch_size=6, max_steps=2, use_cpu=True,
                    report_to=[], save_strategy="no", disable_tqdm=True, logging_steps=1)
    return TrainingArguments(**settings | overrides)


TINY_MODEL_ARGS = dict(scratch_hidden_size=32, scratch_num_layers=1, scratch_projection_dim=16)


def test_weights_made_nan_by_the_last_step_are_never_saved(tmp_path):
    with pytest.raises(ValueError, match="NaN or infinite values"):
        run_training(ModelArguments(**TINY_MODEL_ARGS), DataArguments(num_train_scenes=12, num_test_scenes=4),
                     tiny_training_args(tmp_path / "run"), callbacks=[PoisonLastUpdate()])
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_setclip_rejects_a_zero_temperature_as_a_bad_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        setclip_main(["--output_dir", str(tmp_path / "run"), "--setclip_temperature", "0", "--max_steps", "1",
                      *TINY_MODEL, *TINY_RUN])
    stderr = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in stderr
    assert "--setclip_temperature" in stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_setclip_never_logs_a_finite_loss_over_nan_tensors(tmp_path):
    # A zero temperature given past the flag check (a caller of the library): the loss is NaN, and the run stops
    # (the Trainer would have logged it as 0.0).
    setclip_args = SetCLIPArguments(setclip_paired_fraction=0.5)
    setclip_args.setclip_temperature = 0.0
    with pytest.raises(ValueError, match="is nan"):
        run_setclip_training(ModelArguments(**TINY_MODEL_ARGS), DataArguments(num_train_scenes=24, num_test_scenes=6),
                             tiny_training_args(tmp_path / "run"), setclip_args)
    assert not (tmp_path / "run" / "model.safetensors").exists()
