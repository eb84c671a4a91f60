"""Every command ends a user error with one line on stderr and exit status 2, and success with status 0 (issue 25,
items 12, 13 and 16). The commands run in this process: `main(argv)`, with `SystemExit` caught."""

import json

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage

from smartclip_demo import app as demo_app
from smartclip_eval.cli import main as eval_main
from smartclip_experiments.compare import main as compare_main
from smartclip_methods.select.pipeline import main as select_main
from smartclip_methods.setclip.train import main as setclip_main
from smartclip_train.cli import user_errors
from smartclip_train.train import main as train_main

TINY = ["--max_steps", "1", "--per_device_train_batch_size", "2", "--use_cpu", "--report_to", "none",
        "--disable_tqdm", "true"]


def user_error(main, argv: list[str], capsys, prog: str) -> str:
    """The one line `main(argv)` ends with on stderr; fails unless it exits with status 2 without a traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"{prog}: error: "), err
    return line


@pytest.fixture
def data(tmp_path, monkeypatch):
    """A folder with two images, a good csv, a csv with one row too many fields and a jsonl with a broken line."""
    monkeypatch.chdir(tmp_path)
    for i in range(2):
        PILImage.fromarray(np.full((16, 16, 3), 60 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "train.csv").write_text("image_path,caption\n0.png,a red circle\n1.png,a blue square\n")
    (tmp_path / "bad.csv").write_text("image_path,caption\n0.png,a red circle\n1.png,a blue, square\n")
    good = json.dumps({"image_path": "0.png", "caption": "a red circle"})
    (tmp_path / "bad.jsonl").write_text(f"{good}\n{good}\n{{\"image_path\": \"1.png\", \"caption\": \n")
    (tmp_path / "a_file").write_text("not a folder")
    return tmp_path


# ----- smartclip-train --------------------------------------------------------------------------------------------


def test_a_mistyped_flag_names_it_and_the_closest_flag(data, capsys):
    line = user_error(train_main, ["--output_dir", "out", "--learnig_rate", "1e-3"], capsys, "smartclip-train")
    assert "unrecognized arguments: --learnig_rate (did you mean --learning_rate?) (see --help)" in line


def test_a_bad_flag_value_is_one_line_not_the_whole_usage(data, capsys):
    line = user_error(train_main, ["--output_dir", "out", "--max_steps", "many"], capsys, "smartclip-train")
    assert "--max_steps" in line and "many" in line
    assert "usage:" not in capsys.readouterr().err


@pytest.mark.parametrize("argv, expected", [
    (["--train_file", "missing.csv"], "--train_file='missing.csv' does not exist"),
    (["--train_file", "bad.csv"], "bad.csv, line 3: 3 fields; the header has 2"),
    (["--train_file", "bad.jsonl"], "bad.jsonl, line 3: not JSON"),
    (["--max_seq_length", "0"], "--max_seq_length=0; expected at least 2"),
    (["--output_dir", "a_file"], "--output_dir='a_file' is a file"),
    (["--mask_learning_rate", "-1"], "--mask_learning_rate=-1.0; expected a learning rate >= 0"),
    (["--num_train_scenes", "0"], "--num_train_scenes=0; expected at least 1"),
])
def test_user_errors_of_smartclip_train_are_one_line(data, clip_dir, capsys, argv, expected):
    argv = ["--output_dir", "out", "--model_name_or_path", str(clip_dir), *TINY, *argv]
    assert expected in user_error(train_main, argv, capsys, "smartclip-train")
    assert not (data / "out" / "model.safetensors").exists()


def test_a_data_file_without_rows_is_one_line(data, clip_dir, capsys):
    (data / "empty.csv").write_text("image_path,caption\n")
    argv = ["--output_dir", "out", "--model_name_or_path", str(clip_dir), "--train_file", "empty.csv", *TINY]
    assert "no data" in user_error(train_main, argv, capsys, "smartclip-train")


def test_user_data_without_a_model_asks_for_one(data, capsys):
    line = user_error(train_main, ["--train_file", "train.csv", "--output_dir", "out", *TINY], capsys,
                      "smartclip-train")
    assert "--train_file without --model_name_or_path" in line and "--from_scratch" in line
    assert not (data / "out").exists()


def test_from_scratch_on_user_data_is_asked_for_explicitly(data, clip_dir, capsys):
    argv = ["--train_file", "train.csv", "--output_dir", "out", "--from_scratch", "--scratch_hidden_size", "32",
            "--scratch_num_layers", "1", "--scratch_projection_dim", "16", "--mask_num_attention_heads", "4", *TINY]
    train_main(argv)  # success: returns, so the console script exits 0
    assert (data / "out" / "model.safetensors").is_file()
    line = user_error(train_main, [*argv[:4], "--model_name_or_path", str(clip_dir), "--from_scratch", *TINY], capsys,
                      "smartclip-train")
    assert "--from_scratch and --model_name_or_path" in line


def test_bugs_keep_their_traceback():
    with pytest.raises(KeyError):
        with user_errors("smartclip-x"):
            raise KeyError("a bug, not bad input")


# ----- the other commands -----------------------------------------------------------------------------------------


def test_smartclip_train_setclip_user_errors(data, clip_dir, capsys):
    line = user_error(setclip_main, ["--output_dir", "out", "--setclip_temprature", "0.1"], capsys,
                      "smartclip-train-setclip")
    assert "did you mean --setclip_temperature?" in line
    line = user_error(setclip_main, ["--output_dir", "a_file", "--model_name_or_path", str(clip_dir), *TINY], capsys,
                      "smartclip-train-setclip")
    assert "--output_dir='a_file' is a file" in line


@pytest.mark.parametrize("argv, expected", [
    (["--seeds", "one"], "--seeds 'one'"),
    (["--stages", "pretrain"], "--stages pretrain"),
    (["--num_train_scenes", "10"], "--probe_train_scenes 2000 is more than --num_train_scenes 10"),
    (["--quick", "--output_dir", "a_file"], "a_file"),
    (["--quik"], "did you mean --quick?"),
])
def test_smartclip_compare_user_errors(data, capsys, argv, expected):
    assert expected in user_error(compare_main, argv, capsys, "smartclip-compare")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_smartclip_eval_on_cuda_without_cuda(data, clip_dir, capsys):
    line = user_error(eval_main, ["--model", str(clip_dir), "--device", "cuda", "--num_test_scenes", "2"], capsys,
                      "smartclip-eval")
    assert "--device" in line and "cuda" in line.lower()


def test_smartclip_demo_port_out_of_range(data, capsys):
    line = user_error(demo_app.main, ["--model", "x", "--port", "99999"], capsys, "smartclip-demo")
    assert "--port" in line and "99999" in line


@pytest.fixture
def pool(tmp_path):
    images = []
    for i in range(6):
        buffer = PILImage.fromarray(np.full((16, 16, 3), 40 * i, dtype=np.uint8))
        path = tmp_path / f"pool{i}.png"
        buffer.save(path)
        images.append(str(path))
    features = Features({"image": Image(), "caption": Value("string")})
    pool = Dataset.from_dict({"image": images, "caption": [f"a red circle {i}" for i in range(6)]}, features=features)
    pool.save_to_disk(str(tmp_path / "pool"))
    return tmp_path / "pool"


def test_smartclip_select_succeeds_with_status_0_and_a_clean_summary(clip_dir, pool, tmp_path, capsys):
    argv = ["--teacher", str(clip_dir), "--output_dir", str(tmp_path / "selected"), "--dataset_name", str(pool),
            "--caption_column", "caption", "--fraction", "0.5", "--batch_size", "3", "--device", "cpu",
            "--progress", "false"]
    assert select_main(argv) is None  # the console script's `sys.exit(main())` is then status 0
    captured = capsys.readouterr()
    assert "counts" not in captured.err and "'arguments'" not in captured.err
    assert "Kept 3 of 6 usable pairs" in captured.out and str(tmp_path / "selected" / "data") in captured.out


def test_smartclip_select_with_a_missing_teacher(pool, tmp_path, capsys):
    missing = str(tmp_path / "MISSING")  # a path, so that no Hub download is tried
    argv = ["--teacher", missing, "--output_dir", str(tmp_path / "out"), "--dataset_name", str(pool),
            "--caption_column", "caption", "--device", "cpu"]
    assert f"--teacher {missing!r}" in user_error(select_main, argv, capsys, "smartclip-select")


def test_a_missing_starting_model_is_named(data, capsys):
    line = user_error(train_main, ["--model_name_or_path", "MISSING", "--output_dir", "out", *TINY], capsys,
                      "smartclip-train")
    assert "'MISSING' is not a local folder" in line
