"""Every loader is strict by default: missing, unexpected, non-finite or misshapen weights and missing tokenizer files
are a one-line error naming them, in `load_model_and_processor` and in the commands that load through it (eval,
train, select); a folder written by `save_pretrained` loads, and `from_clip`'s fresh head is the one allowed gap."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from modeling_smartclip import loading
from modeling_smartclip.loading import load_model_and_processor
from smartclip_eval.cli import main as eval_main
from smartclip_hub.push import main as push_main
from smartclip_methods.select.pipeline import main as select_main
from smartclip_train.train import main as train_main

HEAD_LOGITS = "mask_head.to_logits.weight"


def altered_copy(source, destination, change_weights=None, change_config=None, remove=()):
    shutil.copytree(source, destination)
    if change_weights is not None:
        weights = load_file(destination / "model.safetensors")
        change_weights(weights)
        save_file(weights, destination / "model.safetensors", metadata={"format": "pt"})
    if change_config is not None:
        config = json.loads((destination / "config.json").read_text())
        change_config(config)
        (destination / "config.json").write_text(json.dumps(config))
    for name in remove:
        (destination / name).unlink()
    return destination


def one_line_error(path, match: str) -> str:
    with pytest.raises(ValueError, match=match) as error:
        load_model_and_processor(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    return message


def test_folders_saved_by_the_current_code_load(smartclip_dir, clip_dir):
    model, processor = load_model_and_processor(smartclip_dir)
    assert torch.equal(model.state_dict()[HEAD_LOGITS], load_file(smartclip_dir / "model.safetensors")[HEAD_LOGITS])
    assert len(processor.tokenizer) > 2
    model, _ = load_model_and_processor(clip_dir)  # a CLIP folder: the fresh mask head is the one allowed gap
    assert model.config.mask_head_trained is False


def test_a_missing_weight_is_an_error(smartclip_dir, tmp_path):
    def drop(weights):
        del weights[HEAD_LOGITS]

    folder = altered_copy(smartclip_dir, tmp_path / "f", change_weights=drop)
    assert HEAD_LOGITS in one_line_error(folder, "missing")


def test_a_clip_checkpoint_missing_a_weight_is_an_error(clip_dir, tmp_path):
    def drop(weights):
        del weights["visual_projection.weight"]

    folder = altered_copy(clip_dir, tmp_path / "f", change_weights=drop)
    assert "visual_projection.weight" in one_line_error(folder, "missing")


def test_an_unexpected_weight_is_an_error(smartclip_dir, tmp_path):
    def add(weights):
        weights["mask_head.extra.weight"] = torch.zeros(3)

    folder = altered_copy(smartclip_dir, tmp_path / "f", change_weights=add)
    assert "mask_head.extra.weight" in one_line_error(folder, "unexpected")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_weight_is_an_error(smartclip_dir, tmp_path, value):
    def poison(weights):
        weights["visual_projection.weight"][0, 0] = value

    folder = altered_copy(smartclip_dir, tmp_path / "f", change_weights=poison)
    assert "visual_projection.weight" in one_line_error(folder, "NaN or infinite")


@pytest.mark.parametrize("field, value", [("mask_hidden_size", 48), ("mask_intermediate_size", 64),
                                          ("mask_pooling", "union")])
def test_a_head_config_that_contradicts_the_weights_is_an_error(smartclip_dir, tmp_path, field, value):
    folder = altered_copy(smartclip_dir, tmp_path / "f", change_config=lambda config: config.update({field: value}))
    one_line_error(folder, "mask_head")


@pytest.mark.parametrize("which", ["smartclip", "clip"])
@pytest.mark.parametrize("removed", [("tokenizer.json",), ("tokenizer_config.json",)])
def test_missing_tokenizer_files_are_an_error(smartclip_dir, clip_dir, tmp_path, which, removed):
    source = smartclip_dir if which == "smartclip" else clip_dir
    folder = altered_copy(source, tmp_path / "f", remove=removed)
    assert removed[0] in one_line_error(folder, "tokenizer")
    with pytest.raises(ValueError, match=removed[0]):
        loading.check_tokenizer_files(folder)  # the check alone, for loaders beside load_model_and_processor


def test_the_slow_tokenizer_files_stand_in_for_tokenizer_json(smartclip_dir, tmp_path):
    folder = altered_copy(smartclip_dir, tmp_path / "f", remove=("tokenizer.json",))
    (folder / "vocab.json").write_text("{}")
    (folder / "merges.txt").write_text("")
    loading.check_tokenizer_files(folder)  # the files a CLIP tokenizer can be built from are there


def test_lenient_loading_is_opt_in(smartclip_dir, tmp_path):
    def drop(weights):
        del weights[HEAD_LOGITS]

    folder = altered_copy(smartclip_dir, tmp_path / "f", change_weights=drop)
    model, _ = load_model_and_processor(folder, strict=False)
    assert model.mask_head.to_logits.weight.shape[0] == model.config.projection_dim


def command_line(command: str, folder, tmp) -> tuple:
    """`(main, argv)` of each command that loads a model: eval, train, select, and push's dry run."""
    return {
        "eval": (eval_main, ["--model", str(folder), "--output", str(tmp / "r.json")]),
        "train": (train_main, ["--model_name_or_path", str(folder), "--output_dir", str(tmp / "out"),
                               "--max_steps", "1", "--use_cpu", "true", "--report_to", "none"]),
        "select": (select_main, ["--teacher", str(folder), "--output_dir", str(tmp / "out"), "--progress", "false"]),
        "push": (push_main, [str(folder), "me/smartclip", "--dry-run", "--staging_dir", str(tmp / "staging")]),
    }[command]


@pytest.mark.parametrize("command", ["eval", "train", "select", "push"])
@pytest.mark.parametrize("defect", ["missing_weight", "no_tokenizer"])
def test_commands_refuse_a_folder_that_does_not_load_exactly(smartclip_dir, tmp_path, capsys, command, defect):
    def drop(weights):
        del weights[HEAD_LOGITS]

    if defect == "missing_weight":
        folder = altered_copy(smartclip_dir, tmp_path / "f", change_weights=drop)
        named = HEAD_LOGITS
    else:
        folder = altered_copy(smartclip_dir, tmp_path / "f", remove=("tokenizer.json",))
        named = "tokenizer.json"
    main, argv = command_line(command, folder, tmp_path)
    try:
        code = main(argv)  # push returns its status
    except SystemExit as exit_:
        code = exit_.code
    stderr = capsys.readouterr().err
    # the message itself (sys.exit(message)), or a status with the message as stderr's last line
    message = code if isinstance(code, str) else stderr.strip().splitlines()[-1]
    assert code not in (0, None) and named in message and "Traceback" not in stderr, message
    assert "LOAD REPORT" not in stderr  # transformers' multi-line report of what the error names
