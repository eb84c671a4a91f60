"""`smartclip-push` against a local Hub-compatible server, with the real huggingface_hub client and transformers."""

import hashlib
import json
import os
import pickle
import shutil

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from transformers import pipeline

from modeling_smartclip import SmartCLIPModel
from smartclip_hub.card import parse_results
from smartclip_hub.push import main
from tests.fresh_process import run_without_package
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
    before = len(hub.requests)
    remote = run_without_package(
        f"""
import json, torch
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
print(json.dumps({{"module": type(model).__module__, "scoring": model.config.scoring, "logits": logits.tolist(),
                  "pipeline": scores}}))
""",
        env={"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "fresh_hf_home"), "HF_HUB_OFFLINE": "0"},
    )
    assert remote["module"].startswith("transformers_modules.")  # the code came from the repo, not the package
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
    assert "committing 11 files to tester/flaky@main failed" in error and "500" in error and "re-run" in error
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
    pytest.importorskip("smartclip_demo.space")
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
