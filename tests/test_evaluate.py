"""The evaluation pipeline, its loaders and the `smartclip-eval` command, on a tiny random SmartCLIP."""

import json
import math

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image, Sequence, Value
from PIL import Image as PILImage

from modeling_smartclip import SmartCLIPModel
from smartclip_eval.sets import (
    SCENE_CLASSES,
    atomic_probe_set,
    classification_set_from_dataset,
    classification_set_from_folder,
    load_coco_captions,
    load_urban1k,
    retrieval_set_from_dataset,
    scene_eval_sets,
)
from smartclip_eval.evaluate import _Encoder, class_prompts, evaluate_model, format_table, main
from smartclip_data.scenes import describe, make_scenes

RETRIEVAL = [f"{d}_R@{k}" for d in ("t2i", "i2t") for k in (1, 5, 10)]
EXPECTED_KEYS = (
    {f"scenes_long/{m}" for m in RETRIEVAL}
    | {f"scenes_multi/{m}" for m in RETRIEVAL}
    | {f"scenes_zeroshot/{m}" for m in ("acc1", "acc5", "mean_per_class_recall")}
    | {"scenes_atomic/acc", "scenes_atomic/acc_held_out"}
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
    return evaluate_model(model, processor, scene_eval_sets(scenes), scorings=("plain", "modular"), batch_size=8)


def _save_images(folder, names):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in names:
        PILImage.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / name)


def test_builtin_evaluation_has_every_metric_under_both_scorings(builtin_results):
    assert set(builtin_results) == {"plain", "modular", "mask_stats", "counts"}
    for scoring in ("plain", "modular"):
        assert set(builtin_results[scoring]) == EXPECTED_KEYS
        assert all(0.0 <= v <= 1.0 for v in builtin_results[scoring].values()), builtin_results[scoring]
    stats = builtin_results["mask_stats"]
    assert set(stats) == {"scenes/density_long", "scenes/density_sentence", "scenes/sentence_in_long"}
    assert all(0.0 <= v <= 1.0 for v in stats.values())
    counts = builtin_results["counts"]
    assert counts["scenes_long"] == {"images": 16, "texts": 16}
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
    assert set(results) == {"plain", "counts"}
    assert results["plain"] == builtin_results["plain"]
    model.config.loss_type = "clip"  # the CLIP-loss baseline is scored plainly by default
    try:
        assert "modular" not in evaluate_model(model, processor, scene_eval_sets(scenes)[:1], batch_size=8)
    finally:
        model.config.loss_type = "smartclip"


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
    prompts = [template.format("red circle") for template in eval_set.templates]
    tokens = processor(text=prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        embeds, masks = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
    mean = embeds.mean(dim=0)
    torch.testing.assert_close(classes.text_embeds[red_circle], mean / mean.norm(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(classes.text_masks[red_circle], masks.amax(dim=0))


def test_atomic_probe_candidates_share_the_slot_and_include_the_right_prompt(scenes):
    probe = atomic_probe_set(scenes)
    objects = [obj for row in scenes["objects"] for obj in row]
    assert probe.candidates.shape == (len(objects), 32)
    for i, obj in enumerate(objects):
        candidates = [probe.prompts[j] for j in probe.candidates[i]]
        assert candidates[probe.target[i]] == describe(obj)
        assert all(prompt.endswith(f"at the {obj['slot']}.") for prompt in candidates)
        assert len(set(candidates)) == 32


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
    assert results["plain"]["urban1k/t2i_R@5"] == 1.0  # 3 images: everything is in the top 5
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
    results = evaluate_model(model, processor, [eval_set], batch_size=4)
    assert 0.0 <= results["modular"]["coco/i2t_R@1"] <= 1.0
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
    results = evaluate_model(model, processor, [retrieval, zeroshot], batch_size=2)
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
    clip = {"plain": {"scenes_long/t2i_R@1": 0.25}, "counts": {}}
    table = format_table({"smartclip": builtin_results, "clip": clip})
    lines = table.splitlines()
    assert lines[0] == "| metric | smartclip (plain) | smartclip (modular) | clip (plain) |"
    row = next(line for line in lines if line.startswith("| scenes_long/t2i_R@1 |"))
    assert row.endswith("| 0.250 |")
    row = next(line for line in lines if line.startswith("| scenes_atomic/acc |"))
    assert row.endswith("| – |")  # the CLIP results have no atomic probe
    assert "| mask statistic | smartclip |" in lines


def test_cli_writes_json_for_clip_and_smartclip_folders(tmp_path, clip_dir, model, processor, capsys):
    sizes = ["--num_train_scenes", "8", "--num_test_scenes", "8", "--batch_size", "8"]
    main(["--model", str(clip_dir), *sizes, "--output", str(tmp_path / "clip.json")])
    clip_results = json.loads((tmp_path / "clip.json").read_text())
    assert set(clip_results) == {"plain", "counts"}  # a converted CLIP is scored plainly
    assert set(clip_results["plain"]) == EXPECTED_KEYS
    assert "| metric | " in capsys.readouterr().out

    model.save_pretrained(tmp_path / "smartclip")
    processor.save_pretrained(tmp_path / "smartclip")
    main(["--model", str(tmp_path / "smartclip"), *sizes, "--output", str(tmp_path / "smartclip.json")])
    results = json.loads((tmp_path / "smartclip.json").read_text())
    assert set(results) == {"plain", "modular", "mask_stats", "counts"}
    assert results["plain"] == clip_results["plain"]  # same weights, same plain scores
