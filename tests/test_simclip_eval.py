"""Robust zero-shot evaluation (`smartclip_eval.robust`, `smartclip-eval --attack`) on a tiny random CLIP."""

import json

import pytest
import torch

from modeling_smartclip import SmartCLIPModel, SmartCLIPProcessor
from smartclip_data.scenes import make_scenes
from smartclip_eval.cli import main as eval_main
from smartclip_eval.evaluate import _Encoder, class_prompts, evaluate_model
from smartclip_eval.robust import PixelNormalisation, ZeroShotClassifier, attack_batch, robust_zeroshot
from smartclip_eval.sets import ClassificationSet, scene_eval_sets

SCORINGS = ("plain", "modular")


@pytest.fixture(scope="module")
def zeroshot_set() -> ClassificationSet:
    scenes = make_scenes(num_train=0, num_test=6, seed=0)["test"]
    (eval_set,) = [s for s in scene_eval_sets(scenes) if isinstance(s, ClassificationSet)]
    return eval_set


@pytest.fixture(scope="module")
def model_and_processor(clip_dir):
    torch.manual_seed(0)
    return SmartCLIPModel.from_clip(clip_dir).eval(), SmartCLIPProcessor.from_pretrained(clip_dir)


def clean_accuracy(model, processor, eval_set) -> dict[str, float]:
    results = evaluate_model(model, processor, [eval_set], SCORINGS)
    return {scoring: results[scoring][f"{eval_set.name}/acc1"] for scoring in SCORINGS}


@pytest.mark.parametrize("attack", ["pgd", "apgd"])
def test_eps_zero_is_the_clean_evaluation(model_and_processor, zeroshot_set, attack):
    model, processor = model_and_processor
    robust = robust_zeroshot(model, processor, zeroshot_set, SCORINGS, attack, [0.0], steps=3)
    clean = clean_accuracy(model, processor, zeroshot_set)
    assert 0 < clean["plain"] < 1  # a number that an attack could change
    for scoring in SCORINGS:
        assert robust[scoring] == {f"{zeroshot_set.name}/acc1_{attack}_eps0": clean[scoring]}


@pytest.mark.parametrize("attack", ["pgd", "apgd"])
def test_attacks_stay_in_the_ball_and_lower_accuracy(model_and_processor, zeroshot_set, attack):
    model, processor = model_and_processor
    eps = 32 / 255  # a random tiny tower's embeddings barely move within smaller budgets
    robust = robust_zeroshot(model, processor, zeroshot_set, ["plain"], attack, [eps], steps=5)
    clean = clean_accuracy(model, processor, zeroshot_set)["plain"]
    assert robust["plain"][f"{zeroshot_set.name}/acc1_{attack}_eps32"] < clean

    normalisation = PixelNormalisation.from_processor(processor)
    pixel_values = processor(images=list(zeroshot_set.images[:4]), return_tensors="pt")["pixel_values"]
    pixels = normalisation.inverse(pixel_values).clamp(0, 1)
    with torch.no_grad():
        classes = class_prompts(_Encoder(model, processor, batch_size=64), zeroshot_set)
    classifier = ZeroShotClassifier(model, classes, normalisation, "plain")
    adversarial = attack_batch(classifier, pixels, zeroshot_set.labels[:4], attack, eps, steps=5)
    assert (adversarial - pixels).abs().max() <= eps + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1


@pytest.mark.parametrize("attack", ["pgd", "apgd"])
def test_a_model_blind_to_the_image_is_as_accurate_under_attack(clip_dir, zeroshot_set, attack):
    torch.manual_seed(0)
    model = SmartCLIPModel.from_clip(clip_dir).eval()
    processor = SmartCLIPProcessor.from_pretrained(clip_dir)
    with torch.no_grad():  # the pooled image state is the final LayerNorm's bias, whatever the image
        model.vision_model.post_layernorm.weight.zero_()
        model.vision_model.post_layernorm.bias.normal_()
    robust = robust_zeroshot(model, processor, zeroshot_set, SCORINGS, attack, [8 / 255], steps=5)
    clean = clean_accuracy(model, processor, zeroshot_set)
    for scoring in SCORINGS:
        assert robust[scoring][f"{zeroshot_set.name}/acc1_{attack}_eps8"] == clean[scoring]


def test_command_writes_robust_accuracy_beside_clean(tmp_path, clip_dir):
    output = tmp_path / "results.json"
    eval_main(["--model", str(clip_dir), "--builtin", "--num_test_scenes", "4", "--attack", "pgd",
               "--eps", "0,2/255", "--attack_steps", "2", "--output", str(output)])
    plain = json.loads(output.read_text())["plain"]
    assert plain["scenes_zeroshot/acc1_pgd_eps0"] == plain["scenes_zeroshot/acc1"]
    assert "scenes_zeroshot/acc1_pgd_eps2" in plain
    assert not any("_pgd_" in key for key in plain if not key.startswith("scenes_zeroshot/"))


@pytest.mark.parametrize(
    "flags, message",
    [(["--attack", "fgsm"], "invalid choice"), (["--attack", "pgd", "--eps=-1/255"], "eps"),
     (["--attack", "pgd", "--attack_steps", "0"], "steps"), (["--attack", "pgd", "--eps", "2/two"], "--eps")],
)
def test_bad_attack_flags_exit_with_status_2(tmp_path, flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        eval_main(["--model", str(tmp_path), *flags])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("smartclip-eval: error:") and message in error, error
