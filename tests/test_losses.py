"""`modeling_smartclip/losses.py`: the CLIP and modular losses, as `forward` computes them and as the ranks' local
losses add up to the global one."""

import math

import pytest
import torch
from transformers.models.clip.modeling_clip import image_text_contrastive_loss

from modeling_smartclip import SmartCLIPModel, clip_loss, masked_similarity, modular_loss


def test_modular_logits_and_loss_come_from_the_masked_similarity(smartclip, batch):
    with torch.no_grad():
        out = smartclip(**batch, return_loss=True)
    scale = smartclip.logit_scale.exp()
    logits = scale * masked_similarity(out.text_embeds, out.image_embeds, out.text_masks)
    labels = torch.arange(len(logits))
    expected_loss = (
        (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
        + smartclip.config.lambda_sparsity * out.text_mask_probs.sum(dim=-1).mean()
    )
    torch.testing.assert_close(out.loss, expected_loss)

    smartclip.config.scoring = "modular"
    try:
        with torch.no_grad():
            modular = smartclip(**batch)
    finally:
        smartclip.config.scoring = "plain"
    torch.testing.assert_close(modular.logits_per_text, logits)
    assert not torch.allclose(modular.logits_per_text, out.logits_per_text)


def test_clip_loss_type_equals_transformers_clip_loss(clip, clip_dir, batch):
    model = SmartCLIPModel.from_clip(clip, loss_type="clip").eval()
    with torch.no_grad():
        ours = model(**batch, return_loss=True).loss
        reference = image_text_contrastive_loss(clip(**batch).logits_per_text)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("loss_type", ["smartclip", "clip"])
def test_logit_scale_is_clamped_at_ln_100_in_the_loss(clip, batch, loss_type):
    model = SmartCLIPModel.from_clip(clip, loss_type=loss_type, scoring="modular").eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100))
        at_cap = model(**batch, return_loss=True).loss
        model.logit_scale.fill_(95.0)  # exp(95) overflows float32
        beyond = model(**batch, return_loss=True)
    assert torch.isfinite(beyond.loss) and torch.isfinite(beyond.logits_per_text).all()
    torch.testing.assert_close(beyond.loss, at_cap)
    out = model(**batch, return_loss=True)
    out.loss.backward()
    assert model.logit_scale.grad.item() == 0.0  # clamped, as CLIP's clamp: no push further up
    args, cap = (out.text_embeds, out.image_embeds), torch.tensor(math.log(100))
    torch.testing.assert_close(clip_loss(*args, model.logit_scale), clip_loss(*args, cap))
    masks = torch.ones_like(out.text_embeds)
    torch.testing.assert_close(modular_loss(*args, masks, masks, model.logit_scale), modular_loss(*args, masks, masks, cap))


def test_forward_loss_is_modular_loss_and_needs_no_logits(clip, batch):
    model = SmartCLIPModel.from_clip(clip, scoring="modular")
    out = model(**batch, return_loss=True)
    expected = modular_loss(out.text_embeds, out.image_embeds, out.text_masks, out.text_mask_probs, model.logit_scale,
                            model.config.lambda_align, model.config.lambda_sparsity)
    torch.testing.assert_close(out.loss, expected)
    no_logits = model(**batch, return_loss=True, return_logits=False)
    assert no_logits.logits_per_image is None and no_logits.logits_per_text is None
    torch.testing.assert_close(no_logits.loss, out.loss)
    assert model(**batch, return_logits=False, output_text_masks=True).loss is None

def test_local_losses_of_the_ranks_average_to_the_global_loss_with_its_gradients():
    """In one process: two 'ranks' of 3 rows each, scored against the whole batch, give the global loss."""
    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(6, 8, generator=generator, dtype=torch.float64)
    leaves = [
        torch.randn(6, 8, generator=generator, dtype=torch.float64).requires_grad_(),
        torch.randn(6, 8, generator=generator, dtype=torch.float64).requires_grad_(),
        (probs > 0.5).double().requires_grad_(),
        probs.requires_grad_(),
        torch.tensor(2.0, dtype=torch.float64, requires_grad=True),
    ]
    text, image, masks, probs, scale = leaves
    for name in ("clip", "modular"):
        if name == "clip":
            global_loss = clip_loss(text, image, scale)
            local = [clip_loss(text[r], image[r], scale, text, image, r.start) for r in (slice(0, 3), slice(3, 6))]
        else:
            global_loss = modular_loss(text, image, masks, probs, scale)
            local = [
                modular_loss(text[r], image[r], masks[r], probs[r], scale, all_text_embeds=text, all_image_embeds=image,
                             all_text_masks=masks, label_offset=r.start)
                for r in (slice(0, 3), slice(3, 6))
            ]
        averaged = (local[0] + local[1]) / 2
        torch.testing.assert_close(averaged, global_loss, msg=name)
        for got, want in zip(torch.autograd.grad(averaged, leaves, allow_unused=True),
                             torch.autograd.grad(global_loss, leaves, allow_unused=True)):
            if want is not None:
                torch.testing.assert_close(got, want, msg=name)
