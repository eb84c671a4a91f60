"""Sim-CLIP's attack, objective and command on a tiny random CLIP (the robust evaluation: test_simclip_eval.py)."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from modeling_smartclip import SmartCLIPModel, SmartCLIPProcessor
from smartclip_data.scenes import make_scenes
from smartclip_eval.robust import PixelNormalisation
from smartclip_methods.simclip.attack import pgd_embedding_attack
from smartclip_methods.simclip.export import export_vision_encoder
from smartclip_methods.simclip.objective import ImageEncoder, SimCLIPLoss
from smartclip_methods.simclip.train import main
from smartclip_train.collator import CaptionCollator

EPS = 4 / 255


@pytest.fixture(scope="module")
def batch(processor):
    scenes = make_scenes(num_train=6, num_test=1, seed=1)["train"]
    return CaptionCollator(processor)([scenes[i] for i in range(6)])


def tiny_model(clip_dir) -> SmartCLIPModel:
    torch.manual_seed(0)
    return SmartCLIPModel.from_clip(clip_dir).train()


def nudge(model: SmartCLIPModel, scale: float = 0.05) -> None:
    """Moves the student's vision weights, so that it no longer equals its teacher."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.vision_model.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))


def student_loss(model, batch, objective):
    """The objective as `SmartCLIPTrainer.compute_loss` calls it."""
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values")}
    outputs = model(**inputs, output_text_masks=objective.needs_text_masks, return_logits=False)
    return objective(model, outputs, batch)


# ----- the attack ---------------------------------------------------------------------------------------------------


def test_attack_stays_in_the_ball_and_the_pixel_range_and_increases_the_distance(clip_dir, processor, batch):
    model = tiny_model(clip_dir).eval()
    teacher = ImageEncoder.frozen_copy(model)
    nudge(model, 0.01)
    normalisation = PixelNormalisation.from_processor(processor)
    pixels = normalisation.inverse(batch["pixel_values"])
    pixels[:, :, :4] = 1.0  # saturated rows: the pixel range binds there
    pixels[:, :, 4:8] = 0.0
    target = teacher(normalisation(pixels))

    def encode(x):
        return model.get_image_features(normalisation(x)).pooler_output

    def distance(x):
        return (encode(x) - target).square().sum(dim=1)

    torch.manual_seed(0)
    adversarial = pgd_embedding_attack(encode, pixels, target, eps=EPS, steps=5, step_size=1 / 255)
    assert (adversarial - pixels).abs().max() <= EPS + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert (adversarial - pixels).abs().max() > EPS / 2  # it moved
    random_point = (pixels + torch.empty_like(pixels).uniform_(-EPS, EPS)).clamp(0, 1)
    with torch.no_grad():
        attacked, clean, random = distance(adversarial), distance(pixels), distance(random_point)
    assert (attacked > clean).all() and (attacked > random).all()
    assert not any(param.grad is not None for param in model.parameters())  # only the input was differentiated


def test_attack_with_eps_zero_returns_the_clean_pixels(clip_dir, processor, batch):
    model = tiny_model(clip_dir)
    pixels = PixelNormalisation.from_processor(processor).inverse(batch["pixel_values"])
    out = pgd_embedding_attack(lambda x: model.get_image_features(x).pooler_output, pixels, torch.zeros(6, 16), eps=0.0)
    assert torch.equal(out, pixels)


# ----- the objective ------------------------------------------------------------------------------------------------


def test_teacher_gets_no_gradient_and_its_weights_do_not_change(clip_dir, processor, batch):
    model = tiny_model(clip_dir)
    objective = SimCLIPLoss.from_model(model, processor, steps=2, symmetric_weight=0.5, clean_weight=0.5)
    before = {name: value.clone() for name, value in objective.teacher.state_dict().items()}
    model.text_model.requires_grad_(False)  # as the command freezes it
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    for _ in range(2):
        loss, logs = student_loss(model, batch, objective)
        loss.backward()
        assert all(param.grad is None for param in objective.teacher.parameters())
        assert model.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0
        assert model.visual_projection.weight.grad.abs().sum() > 0
        assert model.text_projection.weight.grad is None and model.logit_scale.grad is None
        assert all(param.grad is None for param in model.mask_head.parameters())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert set(logs) == {"loss_adversarial", "loss_symmetric", "loss_clean", "cos_clean_to_teacher"}
    for name, value in objective.teacher.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert not torch.equal(model.visual_projection.weight, before["visual_projection.weight"])  # the student moved
    assert model.training  # the attack's eval mode was undone


def test_eps_zero_loss_is_the_clean_siamese_loss(clip_dir, processor, batch):
    original = tiny_model(clip_dir)
    model = tiny_model(clip_dir)
    objective = SimCLIPLoss.from_model(model, processor, eps=0.0)
    nudge(model)
    loss, _ = student_loss(model, batch, objective)
    pixel_values = batch["pixel_values"]
    with torch.no_grad():
        student = model.get_image_features(pixel_values).pooler_output
        teacher = original.get_image_features(pixel_values).pooler_output
    expected = -F.cosine_similarity(student, teacher, dim=-1).mean()
    torch.testing.assert_close(loss, expected)
    assert loss > -0.999  # the nudge made it differ from -1


def test_the_attack_makes_the_loss_larger_than_the_clean_loss(clip_dir, processor, batch):
    model = tiny_model(clip_dir)
    objective = SimCLIPLoss.from_model(model, processor, clean_weight=1.0)
    nudge(model, 0.01)
    _, logs = student_loss(model, batch, objective)
    assert logs["loss_adversarial"] > logs["loss_clean"] + 1e-4


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(eps=-1 / 255), "eps >= 0"), (dict(steps=0), "steps >= 1"), (dict(step_size=0.0), "step size"),
     (dict(clean_weight=-1.0), "weights >= 0"), (dict(momentum=1.0), "momentum")],
)
def test_objective_rejects_bad_settings(clip_dir, processor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        SimCLIPLoss.from_model(tiny_model(clip_dir), processor, **kwargs)


def test_objective_rejects_a_teacher_that_trains(clip_dir, processor):
    model = tiny_model(clip_dir)
    with pytest.raises(ValueError, match="frozen"):
        trainable = ImageEncoder(model.vision_model, model.visual_projection)
        SimCLIPLoss(trainable, PixelNormalisation.from_processor(processor))


# ----- the command --------------------------------------------------------------------------------------------------


def run_flags(output_dir, model_dir) -> list[str]:
    return [
        "--model_name_or_path", str(model_dir), "--output_dir", str(output_dir), "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--num_train_scenes", "16", "--num_test_scenes", "4",
        "--report_to", "none", "--use_cpu", "--save_strategy", "no", "--learning_rate", "1e-3",
        "--simclip_steps", "2",
    ]


@pytest.mark.parametrize("start", ["clip", "smartclip_modular"])
def test_command_trains_the_vision_side_only_and_saves_the_student_alone(tmp_path, clip_dir, start):
    model_dir = clip_dir
    if start == "smartclip_modular":  # a SmartCLIP whose (trained) head scores modularly must keep both
        model_dir = tmp_path / "start"
        starting = SmartCLIPModel.from_clip(clip_dir)
        config = starting.config
        config.scoring, config.loss_type, config.mask_head_trained = "modular", "smartclip", True
        starting.save_pretrained(model_dir)
        SmartCLIPProcessor.from_pretrained(clip_dir).save_pretrained(model_dir)
    main(run_flags(tmp_path / "run", model_dir))
    before = SmartCLIPModel.from_clip(clip_dir).state_dict() if start == "clip" else starting.state_dict()
    after = load_file(tmp_path / "run" / "model.safetensors")
    assert after.keys() == before.keys()  # the student alone: no teacher copy
    # from_clip draws a fresh mask head, so a CLIP start's head is compared in the SmartCLIP case only
    compared = [name for name in before if start != "clip" or not name.startswith("mask_head.")]
    changed = {name for name in compared if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith(("vision_model.", "visual_projection.")) for name in changed), changed
    saved = SmartCLIPModel.from_pretrained(tmp_path / "run")
    expected = ("modular", True) if start == "smartclip_modular" else ("plain", False)
    assert (saved.config.scoring, saved.config.mask_head_trained) == expected


@pytest.mark.parametrize(
    "flags, message",
    [(["--simclip_eps=-1/255"], "--simclip_eps"), (["--simclip_steps", "0"], "steps"),
     (["--simclip_eps", "four"], "--simclip_eps"), (["--freeze_vision_model"], "--freeze_vision_model")],
)
def test_bad_flags_are_one_line_errors_with_exit_status_2(tmp_path, clip_dir, flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(run_flags(tmp_path / "run", clip_dir) + flags)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("smartclip-train-simclip: error:") and message in lines[0], lines
    assert not (tmp_path / "run").exists()


# ----- export -------------------------------------------------------------------------------------------------------


def test_exported_vision_encoder_loads_in_transformers_and_gives_the_same_embeddings(tmp_path, clip_dir, batch):
    model = tiny_model(clip_dir)
    nudge(model)  # a fine-tuned tower, not the CLIP it came from
    model.save_pretrained(tmp_path / "robust")
    SmartCLIPProcessor.from_pretrained(clip_dir).save_pretrained(tmp_path / "robust")
    files = export_vision_encoder(tmp_path / "robust", tmp_path / "vision")
    assert "model.safetensors" in files and "preprocessor_config.json" in files
    encoder = CLIPVisionModelWithProjection.from_pretrained(tmp_path / "vision")
    image_processor = CLIPImageProcessor.from_pretrained(tmp_path / "vision")
    images = list(make_scenes(num_train=3, num_test=1, seed=2)["train"]["image"])
    pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model.eval().get_image_features(pixel_values).pooler_output
        got = encoder(pixel_values=pixel_values).image_embeds
    torch.testing.assert_close(got, expected)
