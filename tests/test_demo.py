"""The Gradio demo over HTTP, as `gradio_client` (and so any program) uses it: a tiny SmartCLIP built here, served
on a free loopback port, every tab, bad inputs, 20 concurrent requests, the command line and the Space folder."""

import ast
import importlib.util
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import gradio
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from huggingface_hub.utils import build_hf_headers
from PIL import Image
from safetensors.torch import load_file, save_file

from modeling_smartclip import SmartCLIPModel, encode_gallery, encode_texts, search_images
from smartclip_demo import app as demo_app
from smartclip_hub.space import write_space_folder
from tests.support import (
    GRADIO_PANDAS_WARNINGS,
    UNREADABLE,
    recording_outgoing_connections,
    running_demo,
    save_tiny_smartclip,
    write_gallery_folder,
    write_huge_png,
)

pytestmark = GRADIO_PANDAS_WARNINGS
LABELS = "red circle, blue square, green triangle"
TEMPLATE = "a photo of a {}."


@pytest.fixture(scope="module")
def served(tmp_path_factory, clip_dir, processor):
    root = tmp_path_factory.mktemp("demo")
    model_dir = save_tiny_smartclip(clip_dir, processor, root / "model")
    gallery_dir = write_gallery_folder(root / "gallery")
    image_path = gallery_dir / "scene_0.png"
    not_an_image = root / "notes.txt"
    not_an_image.write_text("a caption in a text file, not an image")
    huge = write_huge_png(root / "huge.png")
    # The test's own HTTP client asks huggingface_hub for request headers, which looks up a registry on the Hub
    # once per process; do that before recording so that only the app's connections are recorded. The client's
    # telemetry is off by argument (gradio_client sends it by default).
    build_hf_headers()
    with recording_outgoing_connections() as outgoing, running_demo(model_dir, gallery_dir) as (url, demo, startup):
        yield SimpleNamespace(
            client=Client(url, verbose=False, analytics_enabled=False), demo=demo, startup=startup, model_dir=model_dir,
            gallery_dir=gallery_dir, image=handle_file(str(image_path)), image_path=image_path,
            not_an_image=handle_file(str(not_an_image)), huge=handle_file(str(huge)), outgoing=outgoing,
        )


def zero_shot(served):
    return served.client.predict(served.image, LABELS, TEMPLATE, api_name="/zero_shot")


def assert_zero_shot_answer(result):
    scores, note = result
    confidences = [entry["confidence"] for entry in scores["confidences"]]
    assert {entry["label"] for entry in scores["confidences"]} == {label.strip() for label in LABELS.split(",")}
    assert confidences == sorted(confidences, reverse=True)
    assert sum(confidences) == pytest.approx(1.0, abs=1e-5)
    assert "modular" in note  # the tiny model's config.scoring, which the pipeline follows


def test_zero_shot_goes_through_the_pipeline(served):
    start = time.perf_counter()
    result = zero_shot(served)
    first_request = time.perf_counter() - start
    print(f"\n[demo] load+build+launch {served.startup:.2f} s; first zero-shot request {first_request:.2f} s; "
          f"time to first result {served.startup + first_request:.2f} s")
    assert_zero_shot_answer(result)

    image = Image.open(served.image_path)
    labels = [label.strip() for label in LABELS.split(",")]
    expected = served.demo.classifier(image, candidate_labels=labels, hypothesis_template=TEMPLATE)
    assert {e["label"]: e["confidence"] for e in result[0]["confidences"]} == pytest.approx(
        {e["label"]: e["score"] for e in expected}, abs=1e-5
    )


def test_caption_search_ranks_like_the_package_retrieval_helper(served, processor):
    caption = "a large red circle at the top left."
    items, table, note = served.client.predict(caption, "modular", 4, api_name="/search_images")
    assert len(items) == 4 and all(Path(item["image"]).is_file() for item in items)
    assert table["headers"] == ["rank", "image", "plain cos", "modular cos"]
    assert f"1 unreadable file(s) skipped: {UNREADABLE}" in note

    # The same ranking from modeling_smartclip.retrieval on the same files.
    model = SmartCLIPModel.from_pretrained(served.model_dir).eval()
    names = sorted(p.name for p in served.gallery_dir.glob("scene_*.png"))
    pixels = processor(images=[Image.open(served.gallery_dir / n).convert("RGB") for n in names], return_tensors="pt")
    tokens = processor(text=[caption], return_tensors="pt", padding=True)
    with torch.no_grad():
        gallery = encode_gallery(model, pixels["pixel_values"])
        texts = encode_texts(model, tokens["input_ids"], tokens["attention_mask"])
    for scoring in ("modular", "plain"):
        _, table, _ = served.client.predict(caption, scoring, 4, api_name="/search_images")
        scores, indices = search_images(texts, gallery, k=4, scoring=scoring)
        assert [row[1] for row in table["data"]] == [names[i] for i in indices[0]]
        column = table["headers"].index(f"{scoring} cos")
        assert [row[column] for row in table["data"]] == pytest.approx(scores[0].tolist(), abs=1e-4)


def test_image_searches_the_gallery_captions(served):
    table, note = served.client.predict(served.image, "plain", 5, api_name="/search_captions")
    captions = (served.gallery_dir / "captions.txt").read_text().split("\n")
    assert len(table["data"]) == 5 and all(row[1] in captions for row in table["data"])
    plain = [row[table["headers"].index("plain cos")] for row in table["data"]]
    assert plain == sorted(plain, reverse=True)
    assert "plain" in note


def test_mask_inspection_heatmap_overlap_and_scores(served, processor):
    captions = ["a large red circle at the top left.", "a small blue square at the bottom right.", "red " * 300]
    heatmap, overlap, per_caption, note = served.client.predict(
        "\n".join(captions), served.image, api_name="/inspect_masks"
    )
    with Image.open(heatmap) as image:
        assert image.format == "PNG" and image.width > 400
    matrix = [row[1:] for row in overlap["data"]]
    assert len(matrix) == 3
    assert all(matrix[i][i] == 1.0 and matrix[i][j] == matrix[j][i] for i in range(3) for j in range(3))
    assert per_caption["headers"] == ["#", "caption", "tokens", "dims kept", "plain cos", "modular cos"]
    assert "Truncated" in note and "caption 3 (302 tokens)" in note
    lengths = [str(len(ids)) for ids in processor.tokenizer(captions[:2])["input_ids"]]
    assert [row[2] for row in per_caption["data"]] == [*lengths, "302 (cut to 248)"]

    model = SmartCLIPModel.from_pretrained(served.model_dir).eval()
    tokens = processor(text=captions[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        masks = model.get_text_masks(tokens["input_ids"], tokens["attention_mask"])
    assert [row[3] for row in per_caption["data"]][:2] == masks.sum(dim=-1).int().tolist()

    _, _, without_image, note = served.client.predict(captions[0], None, api_name="/inspect_masks")
    assert without_image["headers"] == ["#", "caption", "tokens", "dims kept"] and "Upload an image" in note


BAD_INPUTS = [
    ("/zero_shot", lambda s: (s.not_an_image, LABELS, TEMPLATE), "notes.txt is not an image"),
    ("/zero_shot", lambda s: (s.image, " , ,", TEMPLATE), "Enter at least one label"),
    ("/zero_shot", lambda s: (s.image, LABELS, "a photo"), "has no '{}'"),
    ("/zero_shot", lambda s: (s.image, LABELS, "{0.__class__.__mro__}{{}}"), "has braces other than '{}'"),
    ("/zero_shot", lambda s: (s.image, LABELS, "{0:>300000000}{{}}"), "has braces other than '{}'"),
    ("/zero_shot", lambda s: (s.image, LABELS, "a {:>9} photo"), "has braces other than '{}'"),
    ("/zero_shot", lambda s: (s.huge, LABELS, TEMPLATE), "huge.png is 12,000 x 12,000 pixels; the limit is 50,000,000"),
    ("/search_captions", lambda s: (s.huge, "plain", 3), "huge.png is 12,000 x 12,000 pixels"),
    ("/zero_shot", lambda s: (None, LABELS, TEMPLATE), "Upload an image"),
    ("/search_images", lambda s: ("   ", "modular", 3), "Enter a caption"),
    ("/search_images", lambda s: ("a" * 7000, "modular", 3), "7,000 characters long; the limit is 5,000"),
    ("/search_images", lambda s: ("a red circle", "fancy", 3), "scoring='fancy'; expected one of ('plain', 'modular')"),
    ("/search_captions", lambda s: (s.not_an_image, "plain", 3), "notes.txt is not an image"),
    ("/search_captions", lambda s: (s.image, "plain", 0), "top k=0; expected a number from 1 to 16"),
    ("/inspect_masks", lambda s: ("\n \n", None), "Enter a caption"),
    ("/inspect_masks", lambda s: ("red\n" * 17, None), "17 captions given; the limit is 16"),
]


@pytest.mark.parametrize(
    ("endpoint", "arguments", "message"), BAD_INPUTS, ids=[f"{e}:{m[:18]}" for e, _, m in BAD_INPUTS]
)
def test_bad_input_gets_a_message_and_the_app_keeps_serving(served, endpoint, arguments, message):
    with pytest.raises(AppError, match=re.escape(message)):
        served.client.predict(*arguments(served), api_name=endpoint)
    assert_zero_shot_answer(zero_shot(served))


def test_gallery_folder_skips_and_counts_unreadable_files(served):
    gallery = demo_app.load_gallery_folder(served.gallery_dir)
    assert gallery.skipped == [UNREADABLE] and len(gallery.images) == 6
    assert f"1 unreadable file(s) skipped: {UNREADABLE}" in gallery.summary()
    with pytest.raises(ValueError, match="not a folder"):
        demo_app.load_gallery_folder(served.gallery_dir / "scene_0.png")


def test_twenty_concurrent_requests_are_all_answered(served):
    calls = [("/zero_shot", (served.image, LABELS, TEMPLATE))] * 10 + [
        ("/search_images", ("a small blue square at the bottom right.", "modular", 3)),
        ("/search_captions", (served.image, "plain", 3)),
        ("/inspect_masks", ("a large red circle at the top left.\na small blue square.", served.image)),
    ] * 3 + [("/search_images", ("a large green cross.", "plain", 2))]
    assert len(calls) == 20

    def timed(endpoint, arguments):
        start = time.perf_counter()
        result = served.client.submit(*arguments, api_name=endpoint).result(timeout=120)
        return endpoint, result, time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(len(calls)) as pool:
        answers = list(pool.map(lambda call: timed(*call), calls))
    wall = time.perf_counter() - start
    latencies = sorted(latency for _, _, latency in answers)
    print(f"\n[demo] 20 concurrent requests in {wall:.2f} s; latency median {statistics.median(latencies):.2f} s, "
          f"max {latencies[-1]:.2f} s")

    assert len(answers) == 20
    for endpoint, result, _ in answers:
        if endpoint == "/zero_shot":
            assert_zero_shot_answer(result)
        elif endpoint == "/search_images":
            items, table, _ = result
            assert 2 <= len(items) == len(table["data"]) <= 3
        elif endpoint == "/search_captions":
            assert len(result[0]["data"]) == 3
        else:
            assert Path(result[0]).is_file() and len(result[2]["data"]) == 2
    assert_zero_shot_answer(zero_shot(served))


def test_the_app_made_no_outgoing_connection(served):
    zero_shot(served)
    assert served.outgoing == []


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo_app.main(["--help"])
    assert exit_info.value.code == 0
    squeezed = "".join(capsys.readouterr().out.split())  # argparse wraps lines, also at hyphens
    for text in ("--model PATH_OR_REPO_ID", "--host HOST", "--port PORT", "--gallery DIR", "127.0.0.1", "7860",
                 demo_app.DEFAULT_MODEL_DIR, "smartclip-compare", "captions.txt", "metadata.jsonl"):
        assert "".join(text.split()) in squeezed


def test_without_a_model_it_says_how_to_make_one(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != demo_app.MODEL_ENV_VAR}
    finished = subprocess.run(
        [sys.executable, "-m", "smartclip_demo.app"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert finished.returncode != 0
    assert "smartclip-compare" in finished.stderr and demo_app.DEFAULT_MODEL_DIR in finished.stderr
    assert "Traceback" not in finished.stderr


def demo_error(argv: list[str], capsys) -> str:
    """The one line `smartclip-demo` ends with on stderr; fails unless it exits with status 2."""
    with pytest.raises(SystemExit) as exit_info:
        demo_app.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_a_model_that_cannot_be_loaded_is_a_message(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "gallery").mkdir()
    (tmp_path / "gallery" / "captions.txt").write_text("a red circle\n")
    error = demo_error(["--model", str(tmp_path / "empty"), "--gallery", str(tmp_path / "missing")], capsys)
    assert "--gallery" in error and "not a folder" in error
    error = demo_error(["--model", str(tmp_path / "empty"), "--gallery", str(tmp_path / "gallery")], capsys)
    assert error.startswith("smartclip-demo: error: could not load the model")


def test_a_taken_port_is_a_message(served, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        error = demo_error(["--model", str(served.model_dir), "--gallery", str(served.gallery_dir), "--port", str(port)],
                           capsys)
    assert f"cannot serve on 127.0.0.1:{port}" in error


def third_party_imports(source: str) -> set[str]:
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    return imported - set(sys.stdlib_module_names)


def test_space_folder_is_complete_and_holds_no_weights_or_secrets(tmp_path, monkeypatch):
    files = write_space_folder(tmp_path / "space", "someone/smartclip-tiny", gallery_size=3)
    space = tmp_path / "space"
    on_disk = sorted(p.relative_to(space).as_posix() for p in space.rglob("*") if p.is_file())
    assert files == on_disk
    assert {"app.py", "requirements.txt", "README.md", "space_config.json", "gallery/captions.txt"} <= set(files)
    assert len([f for f in files if f.endswith(".png")]) == 3

    assert (space / "app.py").read_bytes() == Path(demo_app.__file__).read_bytes()
    readme = (space / "README.md").read_text()
    metadata = readme.split("---")[1]
    for line in ("sdk: gradio", "app_file: app.py", f"sdk_version: {gradio.__version__}", "- someone/smartclip-tiny"):
        assert line in [entry.strip() for entry in metadata.splitlines()]
    assert "https://huggingface.co/someone/smartclip-tiny" in readme

    # Every package app.py imports is in requirements.txt (the smartclip package is optional there).
    requirements = {re.split("[<>=]", line)[0] for line in (space / "requirements.txt").read_text().split()}
    needed = third_party_imports((space / "app.py").read_text()) - {"modeling_smartclip", "smartclip_data"}
    assert {"pillow" if name == "PIL" else name for name in needed} <= requirements
    assert {"torch", "transformers", "gradio"} <= requirements

    assert not [f for f in files if Path(f).suffix in {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx"}]
    text = "\n".join((space / f).read_text(errors="ignore") for f in files if not f.endswith(".png"))
    assert not re.search(r"hf_[A-Za-z0-9]{20,}", text) and "HF_TOKEN" not in text

    # The Space's copy of the app finds its model and its gallery from the files written next to it.
    spec = importlib.util.spec_from_file_location("space_app", space / "app.py")
    space_app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(space_app)
    monkeypatch.delenv(demo_app.MODEL_ENV_VAR, raising=False)
    assert space_app.default_model_source() == "someone/smartclip-tiny"
    gallery = space_app.load_gallery_folder(space / "gallery")
    assert len(gallery.images) == 3 and not gallery.skipped and gallery.captions
    assert json.loads((space / "space_config.json").read_text()) == {"model": "someone/smartclip-tiny"}

    with pytest.raises(ValueError):
        write_space_folder(tmp_path / "bad", "not a repo id")


def test_templates_are_filled_literally():
    labels = ["red circle", "{0.__class__}", "a {} b"]
    assert demo_app.fill_template("a photo of a {}.", labels) == {
        "a photo of a red circle.": "red circle", "a photo of a {0.__class__}.": "{0.__class__}",
        "a photo of a a {} b.": "a {} b",
    }
    assert demo_app.fill_template("{} or {}", ["x"]) == {"x or x": "x"}
    assert demo_app.fill_template("  ", ["x"]) == {"x": "x"}
    for template in ("{0}", "{}{", "{!r}", "{label}", "}{}"):
        with pytest.raises(ValueError, match="braces other than"):
            demo_app.fill_template(template, ["x"])


def test_a_huge_image_is_refused_before_it_is_decoded(tmp_path):
    huge = write_huge_png(tmp_path / "huge.png")
    assert huge.stat().st_size < 100_000
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"huge.png is 12,000 x 12,000 pixels; the limit is 50,000,000 pixels"):
        demo_app.read_upload({"path": str(huge), "orig_name": "huge.png"})
    assert time.perf_counter() - start < 0.2  # decoding it takes over a second and 430 MB


def test_imagefolder_gallery_uses_the_training_reader_for_its_captions(tmp_path):
    folder = write_gallery_folder(tmp_path / "imagefolder", size=3)
    (folder / "captions.txt").unlink()
    (folder / UNREADABLE).unlink()
    captions = {f"scene_{i}.png": f"caption of scene {i}." for i in range(3)}
    (folder / "metadata.jsonl").write_text(
        "\n".join(json.dumps({"file_name": name, "text": text}) for name, text in captions.items()) + "\n"
    )
    write_huge_png(folder / "huge.png")
    with (folder / "metadata.jsonl").open("a") as metadata:
        metadata.write(json.dumps({"file_name": "huge.png", "text": "too large to decode"}) + "\n")

    gallery = demo_app.load_gallery_folder(folder)
    assert gallery.names == list(captions) and len(gallery.images) == 3
    assert gallery.captions == list(captions.values())
    assert gallery.skipped == ["huge.png"]


def test_a_checkpoint_with_missing_weights_does_not_load(served, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(served.model_dir, broken)
    state = load_file(broken / "model.safetensors")
    del state["logit_scale"]
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing .*: logit_scale"):
        demo_app.SmartCLIPDemo.from_pretrained(str(broken))
    error = demo_error(["--model", str(broken), "--gallery", str(served.gallery_dir)], capsys)
    assert "could not load the model" in error and "logit_scale" in error
