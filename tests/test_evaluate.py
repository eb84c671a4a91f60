"""The evaluation pipeline, its loaders and the `smartclip-eval` command, on a tiny random SmartCLIP."""

import hashlib
import json
import math
import sys
import warnings
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image, Sequence, Value
from PIL import Image as PILImage

from modeling_smartclip import SmartCLIPModel
from smartclip_eval import evaluate
from smartclip_eval.sets import (
    OPENAI_IMAGENET_TEMPLATES,
    SCENE_CLASSES,
    atomic_probe_set,
    classification_set_from_dataset,
    classification_set_from_folder,
    load_coco_captions,
    load_urban1k,
    read_templates,
    retrieval_set_from_dataset,
    scene_eval_sets,
)
from smartclip_eval.cli import choose_split, eval_sets_from_args, main, parse_args
from smartclip_eval.evaluate import _Encoder, _mean_overlap, class_prompts, evaluate_model
from smartclip_eval.tables import format_table
from smartclip_data.scenes import describe, make_scenes

RETRIEVAL = [f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)]
EXPECTED_KEYS = (
    {f"scenes_long/{m}" for m in RETRIEVAL}
    | {f"scenes_multi/{m}" for m in RETRIEVAL}
    | {f"scenes_zeroshot/{m}" for m in ("acc1", "acc5", "mean_per_class_recall")}
    | {"scenes_atomic/acc", "scenes_atomic/acc_held_out"}
    | {f"scenes_{attribute}/{m}" for attribute in ("colour", "shape") for m in ("acc", "acc_held_out")}
)


@pytest.fixture(scope="module")
def model(clip_dir):
    torch.manual_seed(0)
    return SmartCLIPModel.from_clip(clip_dir).eval()


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(num_train=8, num_test=16)["test"]


@pytest.fixture(scope="module")
def builtin_results(model, processor, scenes):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated scoring helper on the way
        return evaluate_model(model, processor, scene_eval_sets(scenes), scorings=("plain", "modular"), batch_size=8)


def _save_images(folder, names):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in names:
        PILImage.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / name)


def test_builtin_evaluation_has_every_metric_under_both_scorings(builtin_results):
    assert set(builtin_results) == {"plain", "modular", "mask_stats", "mask_diagnostics", "counts"}
    for scoring in ("plain", "modular"):
        assert set(builtin_results[scoring]) == EXPECTED_KEYS
        assert all(0.0 <= v <= 1.0 for v in builtin_results[scoring].values()), builtin_results[scoring]
    stats = builtin_results["mask_stats"]
    assert set(stats) == {
        "scenes/density_long", "scenes/density_sentence", "scenes/sentence_in_long", "scenes/sentence_overlap"
    }
    assert all(0.0 <= v <= 1.0 for v in stats.values())
    counts = builtin_results["counts"]
    assert counts["scenes_long"] == {"images": 16, "texts": 16, "unreadable_images": 0}
    assert counts["scenes_atomic"]["objects"] == counts["scenes_zeroshot"]["images"]
    assert counts["scenes_multi"]["texts"] <= counts["scenes_atomic"]["objects"]  # repeated sentences merged
    assert counts["scenes_atomic"]["held_out_objects"] > 0


def test_scene_sentences_are_right_for_every_image_they_describe(scenes):
    multi = scene_eval_sets(scenes)[1]
    assert len(multi.texts) == len(set(multi.texts))
    expected = [[text in captions for captions in scenes["short_captions"]] for text in multi.texts]
    assert multi.text_to_image.tolist() == expected


def test_plain_only_has_no_modular_keys_and_same_plain_numbers(model, processor, scenes, builtin_results):
    results = evaluate_model(model, processor, scene_eval_sets(scenes), scorings=("plain",), batch_size=8)
    assert set(results) == {"plain", "mask_diagnostics", "counts"}  # the embedding's alignment under any scoring
    assert results["plain"] == builtin_results["plain"]
    # By default a head that was never trained (CLIP, the CLIP baseline, the random-mask control) is scored plainly.
    assert "modular" not in evaluate_model(model, processor, scene_eval_sets(scenes)[:1], batch_size=8)
    model.config.mask_head_trained = True
    try:
        assert "modular" in evaluate_model(model, processor, scene_eval_sets(scenes)[:1], batch_size=8)
    finally:
        model.config.mask_head_trained = False


def test_all_ones_masks_make_modular_equal_plain(clip_dir, processor, scenes):
    model = SmartCLIPModel.from_clip(clip_dir).eval()
    with torch.no_grad():  # every mask logit +10: the mask keeps every dimension, so modular scoring is cosine
        model.mask_head.to_logits.weight.zero_()
        model.mask_head.to_logits.bias.fill_(10.0)
    results = evaluate_model(model, processor, scene_eval_sets(scenes), scorings=("plain", "modular"), batch_size=8)
    for key, value in results["plain"].items():
        assert results["modular"][key] == pytest.approx(value, abs=1e-6), key
    assert results["mask_stats"]["scenes/density_long"] == 1.0


def test_class_prompts_average_embeddings_and_take_the_union_of_masks(model, processor, scenes):
    eval_set = scene_eval_sets(scenes)[2]
    classes = class_prompts(_Encoder(model, processor, batch_size=7), eval_set)
    red_circle = SCENE_CLASSES.index("red circle")
    prompts = [template.replace("{}", "red circle") for template in eval_set.templates]
    tokens = processor(text=prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        embeds, masks = model.encode_text_and_masks(tokens["input_ids"], tokens["attention_mask"])
    mean = embeds.mean(dim=0)
    torch.testing.assert_close(classes.text_embeds[red_circle], mean / mean.norm(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(classes.text_masks[red_circle], masks.amax(dim=0))


@pytest.mark.parametrize("sizes, per_slot", [(True, 32), (False, 16)])
def test_atomic_probe_candidates_share_the_slot_and_include_the_right_prompt(sizes, per_slot):
    scenes = make_scenes(num_train=0, num_test=16, sizes=sizes)["test"]
    probe = atomic_probe_set(scenes)
    objects = [obj for row in scenes["objects"] for obj in row]
    assert probe.candidates.shape == (len(objects), per_slot)
    for i, obj in enumerate(objects):
        candidates = [probe.prompts[j] for j in probe.candidates[i]]
        assert candidates[probe.target[i]] == describe(obj)
        assert all(prompt.endswith(f"at the {obj['slot']}.") for prompt in candidates)
        assert len(set(candidates)) == per_slot


def test_mean_overlap_is_the_jaccard_index_of_distinct_captions():
    masks = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    # pairs: (0, 1) 1/3, (0, 2) 0/2, (1, 2) 0/2; each counted both ways
    assert _mean_overlap(masks) == pytest.approx((1 / 3) / 3)
    assert _mean_overlap(torch.ones(3, 4)) == 1.0
    assert _mean_overlap(torch.zeros(2, 4)) == 1.0  # two empty masks are the same mask
    assert math.isnan(_mean_overlap(torch.ones(1, 4)))


def test_urban1k_folder_reads_first_lines(tmp_path, model, processor):
    _save_images(tmp_path / "image", ["b.jpg", "a.jpg", "c.jpg"])
    (tmp_path / "caption").mkdir()
    for stem in "abc":
        (tmp_path / "caption" / f"{stem}.txt").write_text(f"a red circle {stem}\nsecond line ignored\n")
    eval_set = load_urban1k(tmp_path)
    assert eval_set.texts == ["a red circle a", "a red circle b", "a red circle c"]
    assert [p.name for p in eval_set.images] == ["a.jpg", "b.jpg", "c.jpg"]
    assert eval_set.text_to_image.tolist() == [0, 1, 2]
    results = evaluate_model(model, processor, [eval_set], scorings=("plain",), batch_size=2)
    assert results["plain"]["urban1k/image_retrieval_recall@5"] == 1.0  # 3 images: everything is in the top 5
    (tmp_path / "caption" / "c.txt").unlink()
    with pytest.raises(ValueError, match="c.jpg"):
        load_urban1k(tmp_path)


def test_coco_json_keeps_five_captions_per_image(tmp_path, model, processor):
    _save_images(tmp_path / "val", ["1.jpg", "2.jpg", "3.jpg"])
    annotations = [{"image_id": 1, "caption": f"a red circle {i}"} for i in range(7)]
    annotations += [{"image_id": 2, "caption": "a blue square"}, {"image_id": 2, "caption": "a green cross"}]
    coco = {"images": [{"id": i, "file_name": f"{i}.jpg"} for i in (1, 2, 3)], "annotations": annotations}
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    eval_set = load_coco_captions(tmp_path / "captions.json", tmp_path / "val")
    assert eval_set.texts == [f"a red circle {i}" for i in range(5)] + ["a blue square", "a green cross"]
    assert eval_set.text_to_image.tolist() == [0] * 5 + [1] * 2  # image 3 has no caption: left out
    results = evaluate_model(model, processor, [eval_set], scorings=("plain", "modular"), batch_size=4)
    assert 0.0 <= results["modular"]["coco/text_retrieval_recall@1"] <= 1.0
    (tmp_path / "val" / "2.jpg").unlink()
    with pytest.raises(ValueError, match="2.jpg"):
        load_coco_captions(tmp_path / "captions.json", tmp_path / "val")


def test_datasets_split_with_list_captions_and_label_column(images, model, processor):
    features = Features(
        {"img": Image(), "long": Value("string"), "short": Sequence(Value("string")),
         "label": ClassLabel(names=["red_circle", "blue square"])}
    )
    dataset = Dataset.from_dict(
        {"img": images, "long": ["a red circle.", "", "a blue square."], "short": [["red", "circle"], [], ["blue"]],
         "label": [0, 1, 1]},
        features=features,
    )
    retrieval = retrieval_set_from_dataset(dataset, "img", ["long", "short"], "toy")
    assert retrieval.texts == ["a red circle.", "red", "circle", "a blue square.", "blue"]
    assert retrieval.text_to_image.tolist() == [0, 0, 0, 1, 1] and len(retrieval.images) == 2
    zeroshot = classification_set_from_dataset(dataset, "img", "label", "toy_zeroshot")
    assert zeroshot.class_names == ["red circle", "blue square"]
    results = evaluate_model(model, processor, [retrieval, zeroshot], scorings=("plain", "modular"), batch_size=2)
    assert math.isnan(results["modular"]["toy_zeroshot/acc5"])  # 2 classes, as CLIP_benchmark
    with pytest.raises(ValueError, match="not a ClassLabel"):
        classification_set_from_dataset(dataset, "img", "long", "bad")
    with pytest.raises(ValueError, match="'caption'"):
        retrieval_set_from_dataset(dataset, "img", "caption", "bad")


def test_zeroshot_folder_uses_subfolder_names(tmp_path):
    _save_images(tmp_path / "red_circle", ["x.png", "y.png"])
    _save_images(tmp_path / "blue_square", ["z.jpg"])
    eval_set = classification_set_from_folder(tmp_path, name="shapes")
    assert eval_set.class_names == ["blue square", "red circle"]
    assert eval_set.labels.tolist() == [0, 1, 1]


def test_format_table_puts_scorings_side_by_side(builtin_results):
    clip = {"plain": {"scenes_long/image_retrieval_recall@1": 0.25}, "counts": {}}
    table = format_table({"smartclip": builtin_results, "clip": clip})
    lines = table.splitlines()
    assert lines[0] == "| metric | smartclip (plain) | smartclip (modular) | clip (plain) |"
    row = next(line for line in lines if line.startswith("| scenes_long/image_retrieval_recall@1 |"))
    assert row.endswith("| 0.250 |")
    row = next(line for line in lines if line.startswith("| scenes_atomic/acc |"))
    assert row.endswith("| – |")  # the CLIP results have no atomic probe
    assert "| mask statistic | smartclip |" in lines


def test_cli_writes_json_for_clip_and_smartclip_folders(tmp_path, clip_dir, model, processor, capsys):
    sizes = ["--num_test_scenes", "8", "--batch_size", "8"]
    assert main(["--model", str(clip_dir), *sizes, "--output", str(tmp_path / "clip.json")]) is None
    clip_results = json.loads((tmp_path / "clip.json").read_text())
    assert set(clip_results) == {"model", "scorings", "datasets", "plain", "mask_diagnostics", "counts"}  # plainly
    assert set(clip_results["plain"]) == EXPECTED_KEYS | {"scenes_i2i/mAP", "scenes_i2i/R@1"}  # the CLI adds I2I
    captured = capsys.readouterr()
    assert "| metric | " in captured.out
    assert "scenes_long images" in captured.err and "captions" in captured.err  # progress bars while encoding

    model.save_pretrained(tmp_path / "smartclip")
    processor.save_pretrained(tmp_path / "smartclip")
    output = ["--output", str(tmp_path / "smartclip.json")]
    main(["--model", str(tmp_path / "smartclip"), *sizes, "--scorings", "plain,modular", *output])
    results = json.loads((tmp_path / "smartclip.json").read_text())
    assert set(results) == {"model", "scorings", "datasets", "plain", "modular", "mask_stats", "mask_diagnostics",
                            "counts"}
    assert results["plain"] == clip_results["plain"]  # same weights, same plain scores
    config_hash = hashlib.sha256((tmp_path / "smartclip" / "config.json").read_bytes()).hexdigest()
    assert results["model"] == {"path": str(tmp_path / "smartclip"), "config_sha256": config_hash}
    assert results["scorings"] == ["plain", "modular"]
    assert results["datasets"]["scenes_long"] == "built-in scenes, test split (8 scenes, seed 0)"
    assert results["counts"]["scenes_long"]["images"] == 8
    numbers = [v for group in ("plain", "modular", "mask_stats", "mask_diagnostics") for v in results[group].values()
               if v is not None]
    assert all(round(v, 4) == v for v in numbers)


def test_console_script_exits_0_and_prints_the_table_on_stdout(tmp_path, clip_dir, monkeypatch, capsys):
    """What the installed `smartclip-eval` wrapper does: `sys.exit(main())`. A returned dict would be printed to
    stderr and give exit status 1."""
    (script,) = entry_points(group="console_scripts", name="smartclip-eval")
    argv = ["smartclip-eval", "--model", str(clip_dir), "--num_test_scenes", "4", "--output", str(tmp_path / "r.json")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(script.load()())
    assert exit_info.value.code is None  # exit status 0
    captured = capsys.readouterr()
    assert "| scenes_long/image_retrieval_recall@1 |" in captured.out
    assert "image_retrieval_recall" not in captured.err


def test_builtin_evaluation_generates_no_training_scenes(monkeypatch, clip_dir):
    calls = []

    def recording_make_scenes(**kwargs):
        calls.append(kwargs)
        return make_scenes(**kwargs)

    monkeypatch.setattr("smartclip_eval.cli.make_scenes", recording_make_scenes)
    eval_sets, sources = eval_sets_from_args(parse_args(["--model", str(clip_dir), "--num_test_scenes", "3"]))
    assert calls == [{"num_train": 0, "num_test": 3, "seed": 0}]
    assert len(eval_sets[0].images) == 3 and set(sources) == {s.name for s in eval_sets}
    # The test split is the one a training run with any number of training scenes held out.
    held_out = make_scenes(num_train=5, num_test=3)["test"]
    assert eval_sets[0].texts == list(dict.fromkeys(held_out["long_caption"]))


def test_unreadable_images_are_skipped_and_counted(tmp_path, model, processor, caplog):
    _save_images(tmp_path / "image", ["a.jpg", "b.jpg", "c.jpg"])
    (tmp_path / "image" / "b.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "caption").mkdir()
    for stem in "abc":
        (tmp_path / "caption" / f"{stem}.txt").write_text(f"a red circle {stem}\n")
    retrieval = load_urban1k(tmp_path)
    _save_images(tmp_path / "classes" / "red_circle", ["x.png", "y.png"])
    _save_images(tmp_path / "classes" / "blue_square", ["z.png"])
    (tmp_path / "classes" / "red_circle" / "x.png").write_bytes(b"\x89PNG truncated")
    zeroshot = classification_set_from_folder(tmp_path / "classes")
    results = evaluate_model(model, processor, [retrieval, zeroshot], scorings=("plain",), batch_size=2)
    assert results["counts"]["urban1k"] == {"images": 2, "texts": 2, "unreadable_images": 1}
    assert results["counts"]["classes"]["images"] == 2 and results["counts"]["classes"]["unreadable_images"] == 1
    assert results["plain"]["urban1k/image_retrieval_recall@5"] == 1.0
    assert "skipping unreadable urban1k image 1" in caplog.text
    for stem in "ac":
        (tmp_path / "image" / f"{stem}.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="none of its 3 images could be read"):
        evaluate_model(model, processor, [load_urban1k(tmp_path)], scorings=("plain",))


def test_default_split_is_test_or_the_only_split(tmp_path, clip_dir):
    folder = tmp_path / "pairs"
    _save_images(folder / "train", ["0.png", "1.png"])
    rows = [{"file_name": f"{i}.png", "text": f"a red circle {i}"} for i in range(2)]
    (folder / "train" / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = parse_args(["--model", str(clip_dir), "--dataset", str(folder), "--caption_column", "text"])
    eval_sets, sources = eval_sets_from_args(args)
    assert eval_sets[0].texts == ["a red circle 0", "a red circle 1"]
    assert sources["pairs"] == f"{folder}, split train"
    _save_images(folder / "test", ["2.png"])
    (folder / "test" / "metadata.jsonl").write_text(json.dumps({"file_name": "2.png", "text": "a blue square"}) + "\n")
    assert choose_split(str(folder)) == "test"
    Dataset.from_dict({"text": ["x"]}).save_to_disk(tmp_path / "single")
    assert choose_split(str(tmp_path / "single")) == "test"  # one unnamed split: any name reads it


def test_a_corrupt_safetensors_file_is_a_one_line_error_naming_it(tmp_path, model, processor, capsys):
    model.save_pretrained(tmp_path / "broken")
    processor.save_pretrained(tmp_path / "broken")
    weights = tmp_path / "broken" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tmp_path / "broken"), "--num_test_scenes", "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    message = err.strip().splitlines()[-1]
    assert message.startswith("smartclip-eval: error: ") and str(weights) in message and "Traceback" not in err


def test_openai_templates_ship_as_data_with_their_source():
    shipped = json.loads((Path(evaluate.__file__).with_name("imagenet_templates.json")).read_text())
    assert "openai/CLIP" in shipped["source"] and "Prompt_Engineering_for_ImageNet.ipynb" in shipped["source"]
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80 == len(set(OPENAI_IMAGENET_TEMPLATES))
    assert OPENAI_IMAGENET_TEMPLATES[0] == "a bad photo of a {}." and "itap of a {}." in OPENAI_IMAGENET_TEMPLATES


def test_templates_and_classnames_files(tmp_path, clip_dir, model, processor):
    (tmp_path / "templates.txt").write_text("a photo of a {}.\n\nart of the {}.\n")
    (tmp_path / "cb.json").write_text(json.dumps(["a photo of a {c}."]))  # CLIP_benchmark's placeholder
    (tmp_path / "names.json").write_text(json.dumps(["blue square", "red circle"]))
    assert read_templates(tmp_path / "templates.txt") == ("a photo of a {}.", "art of the {}.")
    assert read_templates(tmp_path / "cb.json") == ("a photo of a {}.",)
    for bad in ("no placeholder.", "{0.__class__}{}", "{}{}", "{:>300000000}"):
        (tmp_path / "bad.txt").write_text(bad)
        with pytest.raises(ValueError, match="placeholder"):
            read_templates(tmp_path / "bad.txt")

    _save_images(tmp_path / "folder" / "n001", ["x.png"])
    _save_images(tmp_path / "folder" / "n002", ["y.png"])
    args = parse_args([
        "--model", str(clip_dir), "--zeroshot_folder", str(tmp_path / "folder"),
        "--templates", str(tmp_path / "templates.txt"), "--classnames", str(tmp_path / "names.json"),
    ])
    (zeroshot,), sources = eval_sets_from_args(args)
    assert zeroshot.class_names == ["blue square", "red circle"] and len(zeroshot.templates) == 2
    assert sources["folder"] == f"{tmp_path / 'folder'}, templates {tmp_path / 'templates.txt'}"
    results = evaluate_model(model, processor, [zeroshot], scorings=("plain",))
    assert results["counts"]["folder"]["templates"] == 2
    (tmp_path / "names.json").write_text(json.dumps(["one name"]))
    with pytest.raises(ValueError, match="2 class subfolders but 1 class names"):
        eval_sets_from_args(args)
