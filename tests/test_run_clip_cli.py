"""transformers' `run_clip.py` users: its command line works with our script name, evaluation reports retrieval
recall (so the best model can be picked by it), and the output folder is Hub-ready (model card, training_args.json,
no token anywhere)."""

import json

import huggingface_hub
import numpy as np
import pytest
import torch
from huggingface_hub import HfApi
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPModel

from smartclip_data.scratch import scratch_clip_config, scratch_processor
from smartclip_train.train import DataArguments, ModelArguments, caption_processor, main, run_training
from smartclip_train.trainer import image_keys, recall_metrics

from .hub_server import HubServer
from .test_runs import arguments
from .test_training import TINY_DATA, TINY_MODEL

TOKEN = "hf_NotARealTokenButSecret123"
SHAPES = ("circle", "square", "triangle", "cross")


@pytest.fixture
def data_files(tmp_path):
    """run_clip.py's input: a csv (train) and a json-lines file (validation) of image paths and captions."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        path = tmp_path / f"image{i}.png"
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(path)
        rows.append((str(path), f"a red {SHAPES[i % 4]}. a blue {SHAPES[(i + 1) % 4]}."))
    train_file, validation_file = tmp_path / "train.csv", tmp_path / "validation.json"
    train_file.write_text("image_path,caption\n" + "".join(f"{path},{caption}\n" for path, caption in rows[:6]))
    validation_file.write_text("".join(json.dumps({"image_path": p, "caption": c}) + "\n" for p, c in rows[4:]))
    return train_file, validation_file


def run_clip_command(clip_dir, train_file, validation_file, output_dir) -> list[str]:
    """The README command of transformers' examples/pytorch/contrastive-image-text, on local files, tiny."""
    return [
        "--output_dir", str(output_dir), "--model_name_or_path", str(clip_dir),
        "--train_file", str(train_file), "--validation_file", str(validation_file),
        "--image_column", "image_path", "--caption_column", "caption", "--remove_unused_columns=False",
        "--do_train", "--do_eval", "--per_device_train_batch_size=3", "--per_device_eval_batch_size=2",
        "--learning_rate=5e-3", "--warmup_steps=0", "--weight_decay", "0.1", "--overwrite_output_dir",
        "--max_seq_length", "16", "--freeze_vision_model", "--max_train_samples", "6", "--max_eval_samples", "4",
        "--preprocessing_num_workers", "1", "--model_revision", "main", "--token", TOKEN,
        "--cache_dir", str(output_dir.parent / "cache"), "--trust_remote_code", "--dataset_config_name", "default",
        "--max_steps", "2", "--use_cpu", "--report_to", "none", "--disable_tqdm", "true",
    ]


def test_run_clip_command_line_trains_evaluates_and_leaves_a_hub_ready_folder(tmp_path, clip_dir, data_files):
    output_dir = tmp_path / "clip-finetuned"
    main(run_clip_command(clip_dir, *data_files, output_dir))

    start, trained = load_file(clip_dir / "model.safetensors"), load_file(output_dir / "model.safetensors")
    vision = [name for name in start if name.startswith("vision_model.")]
    assert vision and all(torch.equal(start[name], trained[name]) for name in vision)  # --freeze_vision_model
    assert not torch.equal(start["visual_projection.weight"], trained["visual_projection.weight"])
    assert not torch.equal(start["text_model.final_layer_norm.weight"], trained["text_model.final_layer_norm.weight"])

    metrics = json.loads((output_dir / "eval_results.json").read_text())  # --do_eval: the validation file
    assert metrics["eval_loss"] > 0 and metrics["eval_samples_per_second"] > 0
    for name in ("eval_image_retrieval_recall@1", "eval_image_retrieval_recall@5", "eval_text_retrieval_recall@10",
                 "eval_image_retrieval_recall@1_plain"):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert metrics["eval_text_retrieval_recall@10"] == 1.0  # 4 validation pairs: every right caption is in the top 10

    record = json.loads((output_dir / "training_args.json").read_text())
    assert record["data"]["caption_column"] == "caption" and record["data"]["max_seq_length"] == 16
    assert record["model"]["freeze_vision_model"] is True and "token" not in record["model"]
    assert "hub_token" not in record["training"] and record["training"]["learning_rate"] == 5e-3
    card = (output_dir / "README.md").read_text()
    assert "0.005" in card and "| `image_retrieval_recall@1` |" in card  # the run's arguments and its evaluation
    leaked = [path.name for path in output_dir.rglob("*") if path.is_file() and TOKEN.encode() in path.read_bytes()]
    assert leaked == []
    assert json.loads((output_dir / "tokenizer_config.json").read_text())["model_max_length"] == 248  # not 16


def test_do_eval_alone_evaluates_the_starting_model(tmp_path, clip_dir, data_files):
    output_dir = tmp_path / "eval-only"
    main(["--model_name_or_path", str(clip_dir), "--validation_file", str(data_files[1]), "--do_eval",
          "--output_dir", str(output_dir), "--per_device_eval_batch_size", "2", "--use_cpu", "--report_to", "none"])
    metrics = json.loads((output_dir / "eval_results.json").read_text())
    # a CLIP checkpoint scores plainly
    assert "eval_image_retrieval_recall@1" in metrics and "eval_image_retrieval_recall@1_plain" not in metrics
    assert not (output_dir / "model.safetensors").exists() and not (output_dir / "train_results.json").exists()


def test_cli_errors_are_one_line(tmp_path, data_files, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--train_file", str(data_files[0]), "--do_eval", "--output_dir", str(tmp_path / "out"), "--use_cpu",
              "--from_scratch"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("smartclip-train: error: Split 'validation' not found in the data files")


def test_best_model_at_end_is_picked_by_text_to_image_recall(tmp_path):
    result = run_training(
        ModelArguments(**TINY_MODEL), DataArguments(eval_split="test", **TINY_DATA),
        arguments(tmp_path, max_steps=3, eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1,
                  per_device_eval_batch_size=2, learning_rate=3e-2, load_best_model_at_end=True,
                  metric_for_best_model="eval_image_retrieval_recall@1"),
    )
    evaluations = [log for log in result["log_history"] if "eval_image_retrieval_recall@1" in log]
    assert [log["step"] for log in evaluations] == [1, 2, 3, 3]  # each --eval_steps, then the final evaluation
    logged = {"eval_text_retrieval_recall@5", "eval_image_retrieval_recall@1_plain"}
    assert all(logged <= log.keys() for log in evaluations)
    recalls = [log["eval_image_retrieval_recall@1"] for log in evaluations[:3]]
    best_step = 1 + recalls.index(max(recalls))
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    assert state["best_metric"] == max(recalls)
    assert state["best_model_checkpoint"] == str(tmp_path / f"checkpoint-{best_step}")
    best, final = load_file(tmp_path / f"checkpoint-{best_step}" / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert all(torch.equal(best[name], final[name]) for name in best)
    assert result["eval"]["eval_image_retrieval_recall@1"] == max(recalls)


def test_recall_counts_every_caption_of_an_image_listed_twice():
    pixels = torch.rand(3, 3, 4, 4)
    keys = image_keys(pixels[[0, 0, 1, 2]])  # rows 0 and 1: one image with two captions
    assert keys[0] == keys[1] and len(set(keys.tolist())) == 3
    images = torch.eye(4)[[0, 0, 1, 2]]  # (4, D)
    texts = torch.eye(4)[[0, 0, 1, 3]]  # caption 3 points nowhere near its image
    metrics = recall_metrics(texts, images, None, keys, "plain")
    # Caption 1's best-scoring image is row 0, the same picture: a hit, not a miss.
    assert metrics["image_retrieval_recall@1"] == 0.75 and metrics["text_retrieval_recall@1"] == 0.75


def test_max_seq_length_truncates_the_collator_captions_only():
    processor = scratch_processor()
    short = caption_processor(processor, 8, positions=248)
    long_caption = " ".join(["a red circle at the top left."] * 5)
    with pytest.warns(UserWarning, match="longer than 8 tokens; truncated"):
        assert short(text=[long_caption], return_tensors="pt")["input_ids"].shape[-1] == 8
    assert processor.tokenizer.model_max_length == 248 and caption_processor(processor, None, 248) is processor
    with pytest.raises(ValueError, match=r"--max_seq_length=300; expected at most 248"):
        caption_processor(processor, 300, positions=248)


def test_model_revision_token_and_cache_dir_go_to_the_download_only(tmp_path, clip_dir, processor, monkeypatch,
                                                                    capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with HubServer(tmp_path / "hub", token=TOKEN) as hub:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        # A private repo: `main` holds the tiny CLIP (projection 16), branch `v2` one with projection 8.
        api = HfApi(endpoint=hub.url, token=TOKEN)
        api.create_repo("tester/tiny-clip", private=True)
        api.upload_folder(repo_id="tester/tiny-clip", folder_path=str(clip_dir))
        api.create_branch("tester/tiny-clip", branch="v2")
        v2 = tmp_path / "v2"
        CLIPModel(scratch_clip_config(processor, hidden_size=32, projection_dim=8, max_position_embeddings=77)).save_pretrained(v2)
        api.upload_folder(repo_id="tester/tiny-clip", folder_path=str(v2), revision="v2")

        output_dir, cache_dir = tmp_path / "out", tmp_path / "cache"
        flags = ["--model_name_or_path", "tester/tiny-clip", "--output_dir", str(output_dir), "--max_steps", "1",
                 "--per_device_train_batch_size", "4", "--num_train_scenes", "4", "--num_test_scenes", "1",
                 "--use_cpu", "--report_to", "none", "--cache_dir", str(cache_dir), "--model_revision", "v2"]
        with pytest.raises(SystemExit) as exit_info:  # private: the download needs the token
            main(flags)
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert "'tester/tiny-clip' is not a local folder" in error and "Repository Not Found" in error
        main([*flags, "--token", TOKEN])

    config = json.loads((output_dir / "config.json").read_text())
    assert config["projection_dim"] == 8  # the v2 branch
    assert not {"token", "revision", "cache_dir", "_commit_hash"} & config.keys()
    assert any(path.name == "model.safetensors" for path in cache_dir.rglob("*"))  # downloaded into --cache_dir
    leaked = [path.name for path in output_dir.rglob("*") if path.is_file() and TOKEN.encode() in path.read_bytes()]
    assert leaked == []
