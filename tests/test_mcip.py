"""MCIP plug-in: its two ArcMargin losses, what each stage trains, the label column's errors, and image-to-image
mAP / R@1 by hand and in `smartclip-eval` (two ranks against one process: `test_mcip_distributed.py`)."""

import io
import math

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage
from safetensors.torch import load_file
from transformers import TrainerCallback

from modeling_smartclip.loading import load_model_and_processor
from smartclip_data.scenes import make_scenes
from smartclip_eval.cli import run
from smartclip_eval.image_retrieval import image_retrieval_metrics, image_retrieval_set_from_dataset, scene_class
from smartclip_methods.mcip.batches import MCIPCollator
from smartclip_methods.mcip.losses import ArcMargin, multi_caption_arc_margin
from smartclip_methods.mcip.train import MCIPArguments, main, run_mcip_training
from smartclip_train.collator import CaptionCollator
from smartclip_train.train import parse_args


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


# ----- losses -----------------------------------------------------------------------------------------------------


def test_arc_margin_with_zero_margin_is_softmax_cross_entropy_on_scaled_cosines():
    torch.manual_seed(0)
    embeddings, labels = torch.randn(7, 5), torch.tensor([0, 1, 2, 3, 1, 0, 2])
    arc = ArcMargin(num_classes=4, embedding_size=5, scale=12.0, margin=0.0)
    cosines = F.normalize(embeddings, dim=-1) @ F.normalize(arc.W, dim=0)  # (7, 4)
    torch.testing.assert_close(arc(embeddings, labels), F.cross_entropy(12.0 * cosines, labels))
    # and the margin is ArcFace's: the target logit becomes s cos(theta + m)
    arc_m = ArcMargin(num_classes=4, embedding_size=5, scale=12.0, margin=0.3)
    arc_m.W.data = arc.W.data.clone()
    target = cosines[torch.arange(7), labels]
    margined = cosines.scatter(1, labels[:, None], torch.cos(torch.acos(target) + 0.3)[:, None])
    torch.testing.assert_close(arc_m(embeddings, labels), F.cross_entropy(12.0 * margined, labels))


@pytest.mark.parametrize("margin", [0.0, 0.3])
def test_one_caption_per_image_is_arc_margin_with_the_captions_as_proxies(margin):
    images = unit(6, 8, seed=1).requires_grad_()
    captions = unit(6, 8, seed=2)
    loss = multi_caption_arc_margin(images, captions[:, None], torch.ones(6, 1, dtype=torch.bool),
                                    torch.arange(6)[:, None], scale=10.0, margin=margin)
    arc = ArcMargin(num_classes=6, embedding_size=8, scale=10.0, margin=margin)
    arc.W.data = captions.T.clone()
    expected = arc(images, torch.arange(6))
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss, images)
    (expected_grad,) = torch.autograd.grad(expected, images)
    torch.testing.assert_close(grad, expected_grad)


def test_padding_and_captions_sharing_an_images_text_are_not_negatives():
    images, captions = unit(3, 8, seed=3), unit(3, 2, 8, seed=4)
    valid = torch.tensor([[True, True], [True, False], [True, True]])
    keys = torch.tensor([[0, 1], [2, 9], [3, 4]])
    loss = multi_caption_arc_margin(images, captions, valid, keys, scale=5.0, margin=0.2)
    garbage = captions.clone()
    garbage[1, 1] = unit(8, seed=5)
    assert torch.equal(loss, multi_caption_arc_margin(images, garbage, valid, keys, scale=5.0, margin=0.2))
    # Image 2's second caption has image 0's first caption's text: for image 0 it is a copy of a positive, so it
    # leaves image 0's denominators; by hand, image 0's term for its caption p:
    same = keys.clone()
    same[2, 1] = 0
    cos = images @ captions.reshape(6, 8).T  # (3, 6)
    negatives = [2, 4]  # image 1's caption, image 2's first; image 2's second (now text 0) and padding left out
    terms = []
    for p in (0, 1):
        positive = 5.0 * math.cos(math.acos(cos[0, p]) + 0.2)
        terms.append(torch.logsumexp(torch.tensor([positive, *(5.0 * cos[0, negatives]).tolist()]), 0) - positive)
    others = []
    for i, p in ((1, 2), (2, 4), (2, 5)):  # image 2's second caption still a positive for image 2, a negative for 1
        own_texts = same[i][valid[i]].tolist()
        negs = [q for q in range(6) if q // 2 != i and valid.reshape(6)[q] and same.reshape(6)[q] not in own_texts]
        positive = 5.0 * math.cos(math.acos(cos[i, p]) + 0.2)
        others.append(torch.logsumexp(torch.tensor([positive, *(5.0 * cos[i, negs]).tolist()]), 0) - positive)
    expected = torch.stack(terms + others).mean()
    torch.testing.assert_close(multi_caption_arc_margin(images, captions, valid, same, scale=5.0, margin=0.2),
                               expected.float())


def test_collator_gives_labels_and_the_first_k_distinct_captions(processor):
    scenes = make_scenes(num_train=4, num_test=1, seed=0)["train"]
    examples = [dict(row) for row in scenes]
    batch = MCIPCollator(CaptionCollator(processor), lambda e: scene_class(e["objects"]), num_captions=4)(examples)
    assert batch["class_labels"].tolist() == [scene_class(e["objects"]) for e in examples]
    counts = [min(1 + len(e["short_captions"]), 4) for e in examples]
    assert batch["caption_valid"].sum(dim=1).tolist() == counts
    assert batch["caption_input_ids"].shape[0] == 4 * len(examples)
    # equal keys for equal texts only
    first = processor.tokenizer.decode(batch["caption_input_ids"][0], skip_special_tokens=True)
    assert first.replace(" ", "") == examples[0]["long_caption"].replace(" ", "")


def test_scene_class_is_the_first_objects_slot_shape_and_colour():
    objects = [{"shape": "cross", "colour": "blue", "size": "small", "slot": "bottom right"},
               {"shape": "circle", "colour": "red", "size": "large", "slot": "top right"}]
    same = [{"shape": "circle", "colour": "red", "size": "small", "slot": "top right"}]
    assert scene_class(objects) == scene_class(same) != scene_class(objects[:1])
    assert len({scene_class([{"shape": s, "colour": c, "size": None, "slot": p}])
                for s in ("circle", "square", "triangle", "cross") for c in ("red", "green", "blue", "yellow")
                for p in ("top left", "top right", "bottom left", "bottom right")}) == 64


# ----- stages: what trains ----------------------------------------------------------------------------------------

TINY = ["--max_steps", "2", "--per_device_train_batch_size", "6", "--num_train_scenes", "24", "--num_test_scenes",
        "6", "--report_to", "none", "--use_cpu", "--save_strategy", "no", "--scratch_hidden_size", "32",
        "--scratch_num_layers", "1", "--scratch_projection_dim", "16", "--learning_rate", "1e-2",
        "--mcip_num_captions", "3"]
IMAGE_SIDE = ("vision_model.", "visual_projection.")
TEXT_SIDE = ("text_model.", "text_projection.", "logit_scale")


class Snapshot(TrainerCallback):
    """The weights when training starts and the parameters the optimizer holds."""

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.start = {name: value.detach().clone() for name, value in model.state_dict().items()}
        names = {id(param): name for name, param in model.named_parameters()}
        self.optimized = {names[id(p)] for group in optimizer.param_groups for p in group["params"]}


@pytest.mark.parametrize("stage", ["mcip", "realign"])
def test_a_stage_leaves_the_other_side_bitwise_unchanged_and_out_of_the_optimizer(tmp_path, stage):
    snapshot = Snapshot()
    run_mcip_training(*parse_args(["--output_dir", str(tmp_path), "--stage", stage, *TINY],
                                  extra_arguments=(MCIPArguments,)), callbacks=[snapshot])
    saved = load_file(tmp_path / "model.safetensors")
    assert not any(name.startswith("mcip_class_head") for name in saved)  # the proxies are not part of the model
    frozen, trained = (TEXT_SIDE, IMAGE_SIDE) if stage == "mcip" else (IMAGE_SIDE, TEXT_SIDE)
    frozen += ("mask_head.",)
    for name, start in snapshot.start.items():
        if name.startswith(frozen):
            assert torch.equal(saved[name], start), name
            assert name not in snapshot.optimized
    changed = [
        name for name in saved if name.startswith(trained) and not torch.equal(saved[name], snapshot.start[name])
    ]
    assert changed and all(name in snapshot.optimized for name in changed)
    assert ("mcip_class_head.W" in snapshot.optimized) == (stage == "mcip")


def test_mcip_flags_live_in_their_own_command(capsys):
    from smartclip_train.train import main as core_main

    with pytest.raises(SystemExit):
        core_main(["--help"])
    assert "--stage" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--label_column" in capsys.readouterr().out


# ----- label column errors ----------------------------------------------------------------------------------------


@pytest.fixture
def labelled_folder(tmp_path):
    images = [PILImage.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(4)]
    features = Features(
        {"image": Image(), "caption": Value("string"), "label": Value("int64"), "name": Value("string")}
    )
    Dataset.from_dict({"image": images, "caption": ["a red square."] * 4, "label": [0, 1, 0, 1],
                       "name": ["a", "b", "a", "b"]}, features=features).save_to_disk(tmp_path / "data")
    return tmp_path / "data"


@pytest.mark.parametrize("column, expected", [("klass", "is not a column"), ("name", "not integer class labels")])
def test_a_missing_or_non_integer_label_column_is_a_one_line_error(labelled_folder, tmp_path, capsys, column, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(["--stage", "gpr", "--dataset_name", str(labelled_folder), "--label_column", column, "--from_scratch",
              "--output_dir", str(tmp_path / "run"), *TINY])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("smartclip-train-mcip: error:") and expected in error
    assert "['image', 'caption', 'label', 'name']" in error


def test_an_integer_label_column_trains(labelled_folder, tmp_path, clip_dir):
    run_mcip_training(*parse_args(["--stage", "gpr", "--dataset_name", str(labelled_folder), "--label_column",
                                   "label", "--model_name_or_path", str(clip_dir), "--output_dir",
                                   str(tmp_path / "run"), *TINY, "--max_steps", "1"],
                                  extra_arguments=(MCIPArguments,)))
    assert (tmp_path / "run" / "model.safetensors").is_file()


# ----- image-to-image retrieval ------------------------------------------------------------------------------------


def test_map_and_r1_by_hand_with_ties():
    # Images 0-2 coincide, image 3 lies apart; classes {0, 1} and {2, 3}.
    embeds = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [math.cos(1.0), math.sin(1.0)]])
    metrics = image_retrieval_metrics(embeds, torch.tensor([0, 0, 1, 1]))
    # Query 0: images 1 (relevant) and 2 tie, image 2 is ranked first: AP 1/2, no hit; query 1 likewise.
    # Query 2: images 0 and 1 (irrelevant) tie above image 3: AP 1/3. Query 3: all three tie: AP 1/3.
    assert metrics["mAP"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 3 + 1 / 3) / 4)
    assert metrics["R@1"] == 0.0 and metrics["queries"] == 4
    # Without ties every query finds its one class-mate first (AP 1); image 4 is left out.
    embeds = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.7, 0.7]])
    metrics = image_retrieval_metrics(embeds, torch.tensor([0, 0, 1, 1, 2]))
    assert metrics == {"mAP": pytest.approx(1.0), "R@1": 1.0, "queries": 4}
    # A collapsed model scores chance, not perfection: every image ranks all three irrelevant ones first.
    metrics = image_retrieval_metrics(torch.ones(5, 3), torch.tensor([0, 0, 1, 1, 2]))
    assert metrics == {"mAP": pytest.approx(1 / 4), "R@1": 0.0, "queries": 4}


def test_smartclip_eval_reports_image_to_image_retrieval_of_a_labelled_dataset(labelled_folder, clip_dir, tmp_path):
    results = run(["--model", str(clip_dir), "--dataset", str(labelled_folder), "--i2i_label_column", "label",
                   "--device", "cpu", "--output", str(tmp_path / "results.json")])
    model, processor = load_model_and_processor(str(clip_dir))
    dataset = Dataset.load_from_disk(str(labelled_folder))
    eval_set = image_retrieval_set_from_dataset(dataset, "image", "label", "data_i2i")
    pixels = processor(images=[PILImage.open(io.BytesIO(image["bytes"])) for image in eval_set.images],
                       return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = image_retrieval_metrics(model.get_image_features(pixel_values=pixels).pooler_output,
                                           eval_set.labels)
    assert results["plain"]["data_i2i/mAP"] == pytest.approx(expected["mAP"], abs=1e-4)
    assert results["plain"]["data_i2i/R@1"] == pytest.approx(expected["R@1"], abs=1e-4)
    assert results["counts"]["data_i2i"]["queries"] == 4
    with pytest.raises(ValueError, match="not integer class labels"):
        image_retrieval_set_from_dataset(dataset, "image", "name", "data_i2i")
