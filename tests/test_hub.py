"""`smartclip-push` against a local Hub-compatible server, with the real huggingface_hub client and transformers."""

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
import zipfile
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import pipeline

from modeling_smartclip import SmartCLIPModel
from smartclip_hub.card import TEMPLATE_PATH, eval_results, write_model_card
from smartclip_hub.push import main
from smartclip_hub.results import parse_results
from smartclip_hub.space import write_space_folder
from tests.support import run_without_package
from tests.hub_server import HubServer

TOKEN = "hf_testtokenthatmustneverbeprinted"
MODEL_FILES = {
    "README.md",
    "config.json",
    "model.safetensors",
    "configuration_smartclip.py",
    "modeling_smartclip.py",
    "masking.py",
    "losses.py",
    "processing_smartclip.py",
    "retrieval.py",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
}
TRAINER_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin")
LABELS = ["a red circle", "a large blue square at the top left", "a green triangle"]
RESULTS = {  # the layout of smartclip-compare: per model, then smartclip-eval's keys
    "clip": {
        "plain": {"scenes_long/t2i_R@1": 0.24, "scenes_atomic/acc": 0.37},
        "counts": {"scenes_long": {"images": 8}},
    },
    "smartclip": {
        "plain": {"scenes_long/t2i_R@1": 0.21, "scenes_atomic/acc": 0.465},
        "modular": {"scenes_long/t2i_R@1": 0.89, "scenes_atomic/acc": 0.44, "scenes_zeroshot/acc5": None},
        "mask_stats": {"scenes/density_long": 0.4},
        "counts": {"scenes_long": {"images": 8, "texts": 8}},
    },
}


class _MkdirOnUnpickle:
    """Unpickling this creates a folder: proof that something unpickled `training_args.bin`."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def _tree_digest(folder) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, clip_dir, processor):
    """A tiny SmartCLIP (from the tiny CLIP, modular scoring) after two optimizer steps, saved with its processor."""
    torch.manual_seed(0)
    model = SmartCLIPModel.from_clip(clip_dir, scoring="modular")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in LABELS]
    batch = processor(text=LABELS, images=images, return_tensors="pt", padding=True)
    for _ in range(2):
        optimizer.zero_grad()
        model(**batch, return_loss=True).loss.backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("trained")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The test Hub, and the client's token in HF_TOKEN (which huggingface_hub prefers to any saved login)."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with HubServer(tmp_path / "hub_storage", token=TOKEN) as server:
        yield server


@pytest.fixture
def results_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(RESULTS))
    return path


@pytest.fixture
def mask_plot(tmp_path):
    path = tmp_path / "mask_overlap.png"
    Image.new("RGB", (8, 8), "white").save(path)
    return path


def _push(hub, *args) -> int:
    return main([*map(str, args), "--endpoint", hub.url])


def test_push_then_load_by_repo_id_in_a_fresh_process(
    hub, trained_dir, processor, images, results_file, mask_plot, tmp_path, capsys
):
    assert _push(hub, trained_dir, "tester/smartclip-tiny", "--results", results_file, "--plots", mask_plot) == 0

    (commit,) = hub.commits("tester/smartclip-tiny")
    assert set(commit.added) == MODEL_FILES | {"plots/mask_overlap.png"}
    repo_files = hub.repo_files("tester/smartclip-tiny")
    assert set(repo_files) == MODEL_FILES | {"plots/mask_overlap.png", ".gitattributes"}
    assert all(TOKEN.encode() not in content for content in repo_files.values())
    output = capsys.readouterr()
    assert "tester/smartclip-tiny" in output.out and TOKEN not in output.out + output.err

    images[0].save(tmp_path / "image.png")
    space = tmp_path / "space"
    write_space_folder(space, "tester/smartclip-tiny", gallery_size=3)
    before = len(hub.requests)
    remote = run_without_package(
        f"""
import importlib.util, json, torch
from PIL import Image
from transformers import AutoModel, AutoProcessor, pipeline
repo_id, labels = "tester/smartclip-tiny", {LABELS!r}
try:
    import modeling_smartclip
    raise SystemExit("the package must not be importable here")
except ImportError:
    pass
model = AutoModel.from_pretrained(repo_id, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(repo_id, trust_remote_code=True)
image = Image.open({str(tmp_path / "image.png")!r})
with torch.no_grad():
    logits = model(**processor(text=labels, images=image, return_tensors="pt", padding=True)).logits_per_image
classifier = pipeline("zero-shot-image-classification", model=repo_id, trust_remote_code=True)
scores = classifier(image, candidate_labels=labels)

# The Space's copy of the demo: model, encoders and scoring all from the repo's code.
spec = importlib.util.spec_from_file_location("space_app", {str(space / "app.py")!r})
app = importlib.util.module_from_spec(spec)
spec.loader.exec_module(app)
demo = app.SmartCLIPDemo.from_pretrained(app.default_model_source(), app.load_gallery_folder({str(space / "gallery")!r}))
_, table, _ = demo.search_images("a large red circle at the top left.", "modular", 3)
print(json.dumps({{"module": type(model).__module__, "scoring": model.config.scoring, "logits": logits.tolist(),
                  "pipeline": scores, "space": [demo.code.encode_gallery.__module__, table["headers"], len(table["data"])]}}))
""",
        env={"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "fresh_hf_home"), "HF_HUB_OFFLINE": "0",
             "SMARTCLIP_MODEL": ""},
    )
    assert remote["module"].startswith("transformers_modules.")  # the code came from the repo, not the package
    encoder_module, headers, rows = remote["space"]
    assert encoder_module.startswith("transformers_modules.") and encoder_module.endswith(".retrieval")
    assert headers == ["rank", "image", "plain cos", "modular cos"] and rows == 3
    assert any(
        method == "GET" and path.startswith("/tester/smartclip-tiny/resolve/") and path.endswith("/model.safetensors")
        for method, path in hub.requests[before:]
    )
    assert remote["scoring"] == "modular"

    local = SmartCLIPModel.from_pretrained(trained_dir).eval()
    image = Image.open(tmp_path / "image.png")
    with torch.no_grad():
        logits = local(**processor(text=LABELS, images=image, return_tensors="pt", padding=True)).logits_per_image
    torch.testing.assert_close(torch.tensor(remote["logits"]), logits, rtol=0, atol=1e-5)
    classifier = pipeline(
        "zero-shot-image-classification",
        model=local,
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
    )
    expected = classifier(image, candidate_labels=LABELS)
    assert [s["label"] for s in remote["pipeline"]] == [s["label"] for s in expected]
    np.testing.assert_allclose([s["score"] for s in remote["pipeline"]], [s["score"] for s in expected], atol=1e-6)


def test_checkpoint_push_uploads_only_what_loading_needs(hub, trained_dir, tmp_path):
    run_dir = tmp_path / "run"
    checkpoint = run_dir / "checkpoint-2"
    shutil.copytree(trained_dir, checkpoint)
    # The processor files sit in the run folder only (saved once, at the end), as the loader must handle.
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.move(checkpoint / name, run_dir / name)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (checkpoint / name).write_bytes(b"\x80 not a model file")
    marker = tmp_path / "unpickled"
    (checkpoint / "training_args.bin").write_bytes(pickle.dumps(_MkdirOnUnpickle(str(marker))))
    trainer_state = {"global_step": 2, "epoch": 0.5, "log_history": [{"loss": 3.2}]}
    (checkpoint / "trainer_state.json").write_text(json.dumps(trainer_state))
    training_args = {"learning_rate": 0.01, "model_name_or_path": "openai/clip-vit-base-patch16", "hub_token": TOKEN,
                     "output_dir": "/somewhere/private", "dataset_name": "builtin-scenes"}
    (checkpoint / "training_args.json").write_text(json.dumps(training_args))
    (checkpoint / "__pycache__").mkdir()
    (checkpoint / "__pycache__" / "modeling_smartclip.cpython-311.pyc").write_bytes(b"cache")
    (checkpoint / "runs").mkdir()
    (checkpoint / "runs" / "events.out.tfevents.1").write_bytes(b"tensorboard")

    assert _push(hub, checkpoint, "tester/from-checkpoint") == 0

    (commit,) = hub.commits("tester/from-checkpoint")
    assert set(commit.added) == MODEL_FILES
    assert not marker.exists(), "training_args.bin was unpickled"
    card = ModelCard(hub.repo_files("tester/from-checkpoint")["README.md"].decode())
    assert card.data.base_model == "openai/clip-vit-base-patch16"
    assert "`learning_rate` | `0.01`" in card.text and "`global_step` | `2`" in card.text
    assert TOKEN not in card.content and "/somewhere/private" not in card.content
    assert card.data.eval_results is None and "No evaluation results" in card.text


def test_failed_commit_keeps_the_folder_says_what_failed_and_a_rerun_completes(hub, trained_dir, capsys):
    before = _tree_digest(trained_dir)
    hub.fail_commits = 1

    assert _push(hub, trained_dir, "tester/flaky") == 1
    error = capsys.readouterr().err
    assert "committing 12 files to tester/flaky@main failed" in error and "500" in error and "re-run" in error
    assert TOKEN not in error
    assert set(hub.repo_files("tester/flaky")) == {".gitattributes"}  # the repo was created, nothing committed
    assert _tree_digest(trained_dir) == before

    assert _push(hub, trained_dir, "tester/flaky") == 0
    assert set(hub.repo_files("tester/flaky")) == MODEL_FILES | {".gitattributes"}
    assert len(hub.commits("tester/flaky")) == 1
    assert _tree_digest(trained_dir) == before


def test_private_push_to_a_branch_leaves_main_alone(hub, trained_dir):
    args = ("--private", "--revision", "experiment", "--commit_message", "try it")
    assert _push(hub, trained_dir, "tester/branched", *args) == 0

    assert hub.repos[("model", "tester/branched")].private

    assert set(hub.repo_files("tester/branched", revision="experiment")) == MODEL_FILES | {".gitattributes"}
    assert set(hub.repo_files("tester/branched")) == {".gitattributes"}
    (commit,) = hub.commits("tester/branched")
    assert (commit.branch, commit.message) == ("experiment", "try it")


def test_card_model_index_holds_the_run_metrics_with_their_scoring(trained_dir, results_file, mask_plot, tmp_path):
    staging = tmp_path / "staging"
    assert main([str(trained_dir), "tester/card", "--dry-run", "--staging_dir", str(staging), "--results",
                 str(results_file), "--plots", str(mask_plot), "--eval_dataset", "built-in scenes, test split"]) == 0

    card = ModelCard.load(staging / "model" / "README.md")
    recorded = {(r.metric_type, r.metric_config): r.metric_value for r in card.data.eval_results}
    measured = {
        (metric, scoring): value
        for scoring in ("plain", "modular")
        for metric, value in RESULTS["smartclip"][scoring].items()
        if value is not None
    } | {("mask_stats/scenes/density_long", None): 0.4}
    assert recorded == measured  # the CLIP baseline, the counts and the null are not this model's metrics
    names = {r.metric_name for r in card.data.eval_results}
    assert "scenes_long/t2i_R@1 (modular scoring)" in names and "scenes_long/t2i_R@1 (plain scoring)" in names
    assert {r.dataset_name for r in card.data.eval_results} == {"built-in scenes, test split"}
    assert "| `scenes_long/t2i_R@1` | 0.89 | 0.21 | — | 0.24 |" in card.text  # this model both ways, then CLIP
    assert "![mask overlap](plots/mask_overlap.png)" in card.text
    assert (staging / "model" / "plots" / "mask_overlap.png").read_bytes() == mask_plot.read_bytes()


def test_card_without_results_has_no_numbers(trained_dir, tmp_path):
    staging = tmp_path / "staging"
    assert main([str(trained_dir), "tester/card", "--dry-run", "--staging_dir", str(staging)]) == 0

    content = (staging / "model" / "README.md").read_text()
    assert "model-index" not in content and "No evaluation results" in content
    assert ModelCard.load(staging / "model" / "README.md").data.eval_results is None


def test_dry_run_lists_exactly_the_staged_files_and_sends_nothing(trained_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # any request would raise
    staging = tmp_path / "staging"

    assert main([str(trained_dir), "tester/dry", "--dry-run", "--staging_dir", str(staging)]) == 0

    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    staged = {path.relative_to(staging / "model").as_posix() for path in (staging / "model").rglob("*")}
    assert listed == MODEL_FILES == staged
    assert main([str(trained_dir), "tester/dry", "--dry-run", "--staging_dir", str(staging)]) == 2
    assert "is not empty" in capsys.readouterr().err


def test_space_dry_run_and_push(hub, trained_dir, tmp_path, capsys):
    pytest.importorskip("smartclip_demo.app")
    staging = tmp_path / "staging"
    dry_run = ["--dry-run", "--staging_dir", str(staging)]
    assert main([str(trained_dir), "tester/model", *dry_run, "--space", "tester/demo"]) == 0
    listed = capsys.readouterr().out
    space_files = {p.relative_to(staging / "space").as_posix() for p in (staging / "space").rglob("*") if p.is_file()}
    assert {"app.py", "requirements.txt", "README.md"} <= space_files
    assert all(f"  {name}  " in listed for name in space_files)
    assert not any(name.endswith((".safetensors", ".bin", ".pt")) for name in space_files)
    assert "sdk: gradio" in (staging / "space" / "README.md").read_text()

    assert _push(hub, trained_dir, "tester/model", "--space", "tester/demo") == 0
    pushed = hub.repo_files("tester/demo", repo_type="space")
    assert set(pushed) == space_files | {".gitattributes"}
    assert all(TOKEN.encode() not in content for content in pushed.values())


def test_results_layouts():
    flat, key = parse_results({"long_R@1_modular": 0.8, "long_R@1_plain": 0.2, "images": 10})
    assert key is None
    assert {(m.scoring, m.metric, m.value) for m in flat} == {
        ("modular", "long_R@1", 0.8), ("plain", "long_R@1", 0.2), ("n/a", "images", 10.0)
    }
    nested, _ = parse_results({"modular": {"retrieval": {"t2i_R@1": 0.8}}, "counts": {"test": {"images": 5}}})
    assert [(m.scoring, m.metric) for m in nested] == [("modular", "retrieval/t2i_R@1")]
    several, key = parse_results({"baseline": {"plain": {"a": 1}}, "mine": {"modular": {"a": 2}}}, "mine")
    assert key == "mine" and {(m.model, m.value) for m in several} == {("baseline", 1.0), ("mine", 2.0)}
    with pytest.raises(ValueError, match="--results_model"):
        parse_results({"baseline": {"plain": {"a": 1}}, "mine": {"modular": {"a": 2}}})
    with pytest.raises(ValueError, match="no model entry 'other'"):
        parse_results({"mine": {"modular": {"a": 2}}}, "other")


@pytest.mark.parametrize(
    "args, message",
    [
        (["{model}", "no-namespace"], "has no namespace"),
        (["{model}", "tester/m", "--plots", "{tmp}/missing.png"], "Plot files not found"),
        (["{tmp}", "tester/m"], "has no config.json"),
        (["{model}", "tester/m", "--results", "{tmp}/missing.json"], "Cannot read the results file"),
    ],
)
def test_bad_inputs_fail_before_any_upload_with_a_clear_message(trained_dir, tmp_path, capsys, args, message):
    argv = [arg.format(model=trained_dir, tmp=tmp_path) for arg in args]
    assert main([*argv, "--dry-run", "--staging_dir", str(tmp_path / "staging")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "staging").exists()


# ----- publishing safety ----------------------------------------------------------------------------------------

CANARY_CODE = """import pathlib
pathlib.Path({canary!r}).write_text("foreign code ran")

class EvilTokenizer:
    pass
"""


def _edit_json(path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_foreign_auto_map_entries_never_reach_the_hub(hub, trained_dir, tmp_path):
    # Another repo on the same Hub holds code that leaves a canary file when it is imported.
    canary = tmp_path / "canary"
    api = HfApi(endpoint=hub.url)
    api.create_repo("tester/evil")
    code = CANARY_CODE.format(canary=str(canary)).encode()
    api.create_commit("tester/evil", [CommitOperationAdd("evil_code.py", code)], commit_message="evil")
    # A model folder whose JSON files point at it, as a folder downloaded or copied from elsewhere may.
    source = tmp_path / "source"
    shutil.copytree(trained_dir, source)
    foreign = "tester/evil--evil_code.EvilTokenizer"
    _edit_json(source / "tokenizer_config.json", lambda c: c.update(auto_map={"AutoTokenizer": [foreign, None]}))
    _edit_json(source / "config.json", lambda c: c["auto_map"].update(AutoModelForCausalLM=foreign))
    _edit_json(source / "processor_config.json", lambda c: c["auto_map"].update(AutoImageProcessor=foreign))

    # (The processor writes its own auto_map afresh; the config and the tokenizer carry what they loaded.)
    with pytest.warns(UserWarning, match="Removed 2 code pointers") as warned:
        assert _push(hub, source, "tester/victim") == 0
    message = str(warned[0].message)
    assert "tokenizer_config.json: auto_map.AutoTokenizer" in message
    assert "config.json: auto_map.AutoModelForCausalLM" in message

    pushed = hub.repo_files("tester/victim")
    assert not any(b"--" in content and b"auto_map" in content for name, content in pushed.items() if name.endswith(".json"))
    assert json.loads(pushed["config.json"])["auto_map"] == {
        "AutoConfig": "configuration_smartclip.SmartCLIPConfig",
        "AutoModel": "modeling_smartclip.SmartCLIPModel",
        "AutoModelForZeroShotImageClassification": "modeling_smartclip.SmartCLIPModel",
    }
    # Loaded as the card says, in a process without the package, the pushed repo runs only its own code; the source
    # folder, loaded the same way, does run the foreign code (the canary works).
    result = run_without_package(
        f"""
import json, pathlib
from transformers import AutoProcessor, AutoTokenizer, pipeline
canary = pathlib.Path({str(canary)!r})
AutoProcessor.from_pretrained("tester/victim", trust_remote_code=True)
AutoTokenizer.from_pretrained("tester/victim", trust_remote_code=True)
pipeline("zero-shot-image-classification", model="tester/victim", trust_remote_code=True)
pushed_ran = canary.exists()
try:
    AutoTokenizer.from_pretrained({str(source)!r}, trust_remote_code=True)
except Exception:
    pass
print(json.dumps({{"pushed_ran": pushed_ran, "source_ran": canary.exists()}}))
""",
        env={"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "fresh_hf_home"), "HF_HUB_OFFLINE": "0"},
    )
    assert result == {"pushed_ran": False, "source_ran": True}


def _break_weights(folder, edit) -> None:
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


BROKEN_WEIGHTS = [
    ("logit_scale", lambda s: s.pop("logit_scale"), "missing (would be freshly initialised): logit_scale"),
    ("mask head", lambda s: s.pop("mask_head.to_logits.weight"), "missing (would be freshly initialised): mask_head.to_logits.weight"),
    ("unexpected", lambda s: s.update({"extra_head.weight": torch.zeros(2)}), "unexpected (would be dropped): extra_head.weight"),
    ("nan", lambda s: s["text_projection.weight"].view(-1).__setitem__(3, float("nan")), "NaN or infinite values: text_projection.weight"),
]


@pytest.fixture(params=BROKEN_WEIGHTS, ids=[case[0] for case in BROKEN_WEIGHTS])
def broken_dir(request, trained_dir, tmp_path):
    """`trained_dir` with one weight removed, added or corrupted; `(folder, the message naming it)`."""
    folder = tmp_path / "broken"
    shutil.copytree(trained_dir, folder)
    _break_weights(folder, request.param[1])
    return folder, request.param[2]


def test_push_refuses_a_checkpoint_whose_weights_do_not_load_exactly(hub, broken_dir, capsys):
    folder, message = broken_dir
    assert _push(hub, folder, "tester/broken") == 2
    assert message in capsys.readouterr().err
    assert ("model", "tester/broken") not in hub.repos  # refused before any request


def test_card_leaves_out_credentials_found_by_value(trained_dir, tmp_path):
    secrets = {
        "hf": "hf_" + "a1B2c3D4e5F6g7H8i9J0kLmN",
        "aws_id": "AKIA" + "ABCDEFGHIJKLMNOP",
        "aws_secret": "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY",
        "url": "https://alice:s3cr3t@data.example.com/train",
        "pem": "-----BEGIN RSA PRIVATE KEY-----\nMIIEow",
        "wandb": "0123456789abcdef0123456789abcdef01234567",
    }
    run = tmp_path / "run"
    shutil.copytree(trained_dir, run)
    # The layout smartclip-train writes: its three argument groups.
    (run / "training_args.json").write_text(json.dumps({
        "model": {"model_name_or_path": "openai/clip-vit-base-patch16", "objective": "smartclip", "mask_pooling": None},
        "data": {"dataset_name": None, "p_long": 0.5, "image_column": secrets["url"]},
        "training": {
            "learning_rate": 3e-4, "per_device_train_batch_size": 128, "hub_token": "<HUB_TOKEN>",
            "run_name": "smartclip-scenes-ViT-B-16-lr3e-4-seed42", "hub_model_id": secrets["hf"],
            "report_to": [secrets["aws_id"]], "logging_dir": "/private/runs", "seed": 42,
            "aws_secret_access_key": secrets["aws_secret"], "resume_from_checkpoint": secrets["pem"],
            "wandb": {"key": secrets["wandb"]}, "push_to_hub_organization": secrets["aws_secret"],
            "weight_decay": 0.0,  # the Trainer's default: not shown
        },
    }))

    with pytest.warns(UserWarning, match="look like credentials"):
        card_path = write_model_card(run, repo_id="tester/card")

    card = ModelCard.load(card_path)
    assert not [name for name, value in secrets.items() if value.split("\n")[0] in card.content]
    assert card.data.base_model == "openai/clip-vit-base-patch16"
    assert "Training data: the built-in synthetic scenes" in card.text
    for row in ("`training.learning_rate` | `0.0003`", "`training.per_device_train_batch_size` | `128`",
                "`model.objective` | `smartclip`", "`data.p_long` | `0.5`", "`training.seed` | `42`",
                "`training.run_name` | `smartclip-scenes-ViT-B-16-lr3e-4-seed42`"):
        assert row in card.text
    assert "training.weight_decay" not in card.text and "/private/runs" not in card.text


def test_written_card_is_the_one_push_uploads(trained_dir, results_file, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_dir, run)
    (run / "training_args.json").write_text(json.dumps({"model": {"model_name_or_path": None}, "data": {"dataset_name": "me/captions"}, "training": {}}))

    written = write_model_card(run, results_file, repo_id="tester/same").read_text()
    assert main([str(run), "tester/same", "--results", str(results_file), "--dry-run", "--staging_dir", str(tmp_path / "staging")]) == 0
    assert written == (tmp_path / "staging" / "model" / "README.md").read_text()
    card = ModelCard(written)
    assert card.data.base_model is None and "none (towers trained from scratch)" in card.text
    assert card.data.datasets == ["me/captions"]


def test_model_index_classifies_metrics_by_what_they_measure():
    # Group names say nothing of the task (a name containing "recall" is not thereby a retrieval metric).
    measurements, _ = parse_results({"modular": {
        "imagenet/acc1": 0.5, "imagenet/acc5": 0.9, "imagenet/mean_per_class_recall": 0.4, "scenes_atomic/acc": 0.3,
        "coco/image_retrieval_recall@5": 0.7, "coco/text_retrieval_recall@1": 0.6, "scenes_long/t2i_R@1": 0.8,
        "scenes/density_long": 0.2,
    }})
    tasks = {r.metric_type: r.task_type for r in eval_results(measurements, None, "scenes")}
    classification, retrieval = "zero-shot-image-classification", "image-text-retrieval"
    assert tasks == {
        "imagenet/acc1": classification, "imagenet/acc5": classification,
        "imagenet/mean_per_class_recall": classification, "scenes_atomic/acc": classification,
        "coco/image_retrieval_recall@5": retrieval, "coco/text_retrieval_recall@1": retrieval,
        "scenes_long/t2i_R@1": retrieval, "scenes/density_long": "other",
    }


@contextlib.contextmanager
def _silent_endpoint():
    """A loopback address that accepts connections and never answers; yields its URL."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        server.close()


def test_a_hub_that_never_answers_is_an_error_in_bounded_time(trained_dir, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with _silent_endpoint() as url:
        start = time.perf_counter()
        assert main([str(trained_dir), "tester/silent", "--endpoint", url, "--timeout", "1"]) == 1
        elapsed = time.perf_counter() - start
    error = capsys.readouterr().err
    assert "creating the model repo tester/silent failed" in error and "did not answer within 1 s" in error
    assert "Nothing was half-published" in error and TOKEN not in error
    assert elapsed < 30


def test_a_commit_that_stalls_publishes_nothing_and_a_rerun_completes(hub, trained_dir, capsys):
    hub.stall_commits = 1
    start = time.perf_counter()
    assert _push(hub, trained_dir, "tester/stalled", "--timeout", "1") == 1
    assert time.perf_counter() - start < 30
    assert "committing 12 files to tester/stalled@main failed" in capsys.readouterr().err
    assert set(hub.repo_files("tester/stalled")) == {".gitattributes"}

    assert _push(hub, trained_dir, "tester/stalled") == 0
    assert set(hub.repo_files("tester/stalled")) == MODEL_FILES | {".gitattributes"}


PACKAGE_DIRS = ("modeling_smartclip", "train", "data", "eval", "methods", "experiments", "hub", "demo")


def test_a_wheel_carries_the_model_card_template(tmp_path):
    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"
    for name in PACKAGE_DIRS:
        shutil.copytree(root / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("smartclip-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        template = archive.read(f"smartclip_hub/{TEMPLATE_PATH.name}")
    assert template == TEMPLATE_PATH.read_bytes()



# ----- foreign code, credentials and faults on the upload path (issue 25) ---------------------------------------

EVIL_PIPELINE = {"zero-shot-image-classification": {"impl": "tester/evil--evil_code.EvilPipeline", "pt": ["AutoModel"]}}
# Credentials a folder's JSON files may already hold (copied from elsewhere, or written by an old tool).
FOLDER_SECRETS = {
    "token": "hf_" + "FolderTokenThatMustNotShip1",
    "use_auth_token": "hf_" + "AuthTokenThatMustNotShip22",
    "wandb_api_key": "0123456789abcdef" * 2 + "01234567",
    "accessToken": "plain-words-but-named-a-token",
    "nested": [{"db_pass": "hunter2-db-password"}],
}


def _plant(folder) -> None:
    """A foreign custom pipeline and credentials in `folder`'s config.json and tokenizer_config.json."""
    _edit_json(folder / "config.json", lambda c: c.update(custom_pipelines=EVIL_PIPELINE, **FOLDER_SECRETS))
    _edit_json(folder / "tokenizer_config.json", lambda c: c.update(**FOLDER_SECRETS))


def _secret_values(tree) -> list[str]:
    if isinstance(tree, dict):
        return [value for item in tree.values() for value in _secret_values(item)]
    if isinstance(tree, list):
        return [value for item in tree for value in _secret_values(item)]
    return [tree]


def test_push_drops_foreign_custom_pipelines_and_credentials_in_the_folders_json(hub, trained_dir, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(trained_dir, source)
    _plant(source)

    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        assert _push(hub, source, "tester/planted") == 0

    pushed = hub.repo_files("tester/planted")
    leaked = [(name, secret) for name, content in pushed.items() for secret in _secret_values(FOLDER_SECRETS)
              if secret.encode() in content]
    assert leaked == []
    assert not any(b"evil" in content for content in pushed.values())
    assert "custom_pipelines" not in json.loads(pushed["config.json"])
    messages = " ".join(str(warning.message) for warning in warned)  # what was dropped, never the values
    assert "config.json: custom_pipelines.zero-shot-image-classification" in messages
    assert "config.json: token" in messages
    assert not any(secret in messages for secret in _secret_values(FOLDER_SECRETS))
    SmartCLIPModel.from_pretrained(source)  # the source folder is left as it was
    assert "custom_pipelines" in json.loads((source / "config.json").read_text())


def test_push_error_output_never_shows_a_password_in_the_endpoint(trained_dir, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    code = main([str(trained_dir), "tester/x", "--endpoint", f"http://alice:s3cretPassw0rd@127.0.0.1:{port}",
                 "--timeout", "1"])
    output = capsys.readouterr()
    assert code == 1 and "smartclip-push:" in output.err
    assert "s3cretPassw0rd" not in output.out + output.err


def _lfs_hub(hub):
    hub.lfs_suffixes = (".safetensors",)
    return hub


def test_weights_go_up_through_lfs_and_land_whole(hub, trained_dir):
    _lfs_hub(hub)
    assert _push(hub, trained_dir, "tester/lfs") == 0
    assert any(method == "PUT" and path.startswith("/lfs-upload/") for method, path in hub.requests)
    pushed = hub.repo_files("tester/lfs")
    assert pushed["model.safetensors"] == (trained_dir / "model.safetensors").read_bytes()
    assert set(pushed) == MODEL_FILES | {".gitattributes"}


def _push_in_thread(hub, *args) -> tuple[int | None, float]:
    """`_push` in a thread that the test does not wait on for more than two minutes: (exit code or None, seconds)."""
    result = []
    thread = threading.Thread(target=lambda: result.append(_push(hub, *args)), daemon=True)
    start = time.perf_counter()
    thread.start()
    thread.join(120)
    return (result[0] if result else None), time.perf_counter() - start


@pytest.mark.parametrize("fault", ["stall", "drop", "trickle"])
def test_a_faulty_lfs_upload_ends_in_one_line_and_a_rerun_completes(hub, trained_dir, fault, capsys):
    _lfs_hub(hub).upload_faults = [fault] * 8  # every retry meets it too
    code, _ = _push_in_thread(hub, trained_dir, f"tester/lfs-{fault}", "--timeout", "2", "--deadline", "4")

    assert code == 1, f"the push did not end (exit {code})"
    error = capsys.readouterr().err
    assert "Traceback" not in error and TOKEN not in error
    message = "smartclip-push: " + error.split("smartclip-push: ", 1)[1]  # after the upload's progress bar
    assert message.startswith(f"smartclip-push: committing 12 files to tester/lfs-{fault}@main failed: uploading "
                              "'model.safetensors': ")
    assert "Nothing was half-published" in error
    assert set(hub.repo_files(f"tester/lfs-{fault}")) == {".gitattributes"}

    hub.upload_faults = []
    assert _push(hub, trained_dir, f"tester/lfs-{fault}") == 0
    assert set(hub.repo_files(f"tester/lfs-{fault}")) == MODEL_FILES | {".gitattributes"}
