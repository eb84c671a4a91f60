"""The mask mechanism's set-up (issue 24): a converted model starts as CLIP, the sparsity term is the paper's,
the controls control, and folders saved before keep their loss."""

import json

import pytest
import torch
from transformers import CLIPModel

from modeling_smartclip import SmartCLIPModel, clip_loss, modular_loss
from modeling_smartclip.losses import sparsity_penalty
from smartclip_data.scratch import scratch_clip_config, scratch_processor
from smartclip_train.objectives import PairedMaskLoss, RandomMaskLoss

CAPTIONS = ["a red circle at the top left.", "a blue square.", "a green cross at the bottom right. a red circle.",
            "a yellow triangle at the top right.", "a large blue circle.", "a small green square at the top left."]


@pytest.fixture(scope="module")
def processor():
    return scratch_processor()


def converted(processor, pooling: str) -> SmartCLIPModel:
    """A SmartCLIP converted from a (random) CLIP, as `from_clip` converts a pretrained one."""
    torch.manual_seed(0)
    clip = CLIPModel(scratch_clip_config(processor, hidden_size=32, num_layers=1, projection_dim=16))
    return SmartCLIPModel.from_clip(clip, mask_pooling=pooling, mask_num_attention_heads=4)


def batch(processor) -> dict:
    inputs = dict(processor.tokenizer(CAPTIONS, padding=True, return_tensors="pt"))
    inputs["pixel_values"] = torch.randn(len(CAPTIONS), 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return inputs


@pytest.mark.parametrize("pooling", ["attention", "union"])
def test_a_converted_model_is_clip_at_step_0(processor, pooling):
    model = converted(processor, pooling).eval()
    with torch.no_grad():
        out = model(**batch(processor), output_text_masks=True)
        assert out.text_masks.min() == 1  # every caption's mask all on
        assert out.text_mask_probs.min() > 0.8  # with a margin ...
        slope = out.text_mask_probs * (1 - out.text_mask_probs)
        assert slope.mean() > 0.05  # ... and a sigmoid that still has a gradient
        clip = clip_loss(out.text_embeds, out.image_embeds, model.logit_scale)
        align = modular_loss(out.text_embeds, out.image_embeds, out.text_masks, out.text_mask_probs,
                             model.logit_scale, lambda_sparsity=0.0)
        torch.testing.assert_close(align, clip)
        model.config.scoring = "modular"
        modular = model(**batch(processor)).logits_per_text
        model.config.scoring = "plain"
        plain = model(**batch(processor)).logits_per_text
    torch.testing.assert_close(modular, plain)


def test_the_sparsity_gradient_per_mask_entry_is_lambda_over_the_batch():
    probs = torch.rand(6, 16, requires_grad=True)
    (0.03 * sparsity_penalty(probs)).backward()
    torch.testing.assert_close(probs.grad, torch.full_like(probs, 0.03 / 6))


def test_the_random_mask_control_draws_the_density_it_is_given():
    outputs = type("Outputs", (), {"text_embeds": torch.zeros(4000, 64), "text_masks": None})()
    masks, _ = RandomMaskLoss(density=0.3).masks(outputs)
    assert abs(masks.mean().item() - 0.3) < 0.01


def test_the_random_mask_control_refuses_an_untrained_heads_density(processor):
    from smartclip_train.train import ModelArguments, objective_from_arguments

    config = converted(processor, "union").config
    with pytest.raises(ValueError, match="--random_mask_density"):
        objective_from_arguments(ModelArguments(objective="random_mask"), config)
    given = objective_from_arguments(ModelArguments(objective="random_mask", random_mask_density=0.4), config)
    assert given.density == 0.4 and not given.needs_text_masks


def test_the_paired_mask_ablation_with_all_on_masks_is_clip_plus_the_l1_term(processor):
    model = converted(processor, "union")
    out = model(**batch(processor), output_text_masks=True, return_logits=False)
    loss, _ = PairedMaskLoss(lambda_sparsity=0.01)(model, out, {})
    expected = clip_loss(out.text_embeds, out.image_embeds, model.logit_scale) + 0.01 * out.text_mask_probs.sum(-1).mean()
    torch.testing.assert_close(loss, expected)


def test_a_folder_saved_before_the_paper_units_keeps_its_loss(processor, tmp_path):
    model = converted(processor, "union")
    model.config.lambda_sparsity = 0.01
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["sparsity_reduction"]  # as 0.1.0 saved it
    (tmp_path / "config.json").write_text(json.dumps(config))

    old = SmartCLIPModel.from_pretrained(tmp_path)
    assert old.config.sparsity_reduction == "mean"
    out = old(**batch(processor), return_loss=True)
    align = modular_loss(out.text_embeds, out.image_embeds, out.text_masks, out.text_mask_probs, old.logit_scale,
                         lambda_sparsity=0.0)
    torch.testing.assert_close(out.loss, align + 0.01 * out.text_mask_probs.mean())
    old.save_pretrained(tmp_path / "again")  # and it stays what it was
    assert SmartCLIPModel.from_pretrained(tmp_path / "again").config.sparsity_reduction == "mean"
