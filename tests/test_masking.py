"""`modeling_smartclip/masking.py`: the masked similarity against one-pair-at-a-time references (values and
gradients), its lean backward, and the mask head (straight-through gradients, union pooling)."""

import pytest
import torch

from modeling_smartclip import SmartCLIPModel, masked_similarity
from tests.support import naive_linear_in_mask_similarity, naive_masked_similarity


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 64])
def test_masked_similarity_equals_naive_reference(chunk_size):
    generator = torch.Generator().manual_seed(0)
    text, image = torch.randn(7, 16, generator=generator, dtype=torch.float64), torch.randn(5, 16, dtype=torch.float64)
    masks = (torch.rand(7, 16, generator=generator) > 0.5).double()
    expected = naive_masked_similarity(text, image, masks)
    torch.testing.assert_close(masked_similarity(text, image, masks, chunk_size), expected)
    # The image-to-text direction is the transpose: image b against every caption, each through its own mask.
    torch.testing.assert_close(masked_similarity(text, image, masks, chunk_size).T, naive_masked_similarity(text, image, masks).T)
    squared = image.square()
    torch.testing.assert_close(masked_similarity(text, image, masks, chunk_size, squared), expected)
    # The training path (inputs that need gradients) computes the same values.
    torch.testing.assert_close(masked_similarity(text.requires_grad_(), image, masks, chunk_size).detach(), expected)


@pytest.mark.parametrize("pooling", ["attention", "union"])
def test_gradients_reach_mask_head_through_straight_through_estimator(clip, batch, pooling):
    model = SmartCLIPModel.from_clip(clip, mask_pooling=pooling)
    out = model(**batch, return_loss=True)
    assert set(out.text_masks.unique().tolist()) <= {0.0, 1.0}
    # Only the masked contrastive term: the sparsity term alone would also reach the head, without the estimator.
    model.config.lambda_sparsity = 0.0
    model(**batch, return_loss=True).loss.backward()
    for name, parameter in model.mask_head.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_union_mask_ignores_padding_and_is_the_max_over_tokens(clip, processor):
    model = SmartCLIPModel.from_clip(clip, mask_pooling="union").eval()
    tokens = processor.tokenizer(["a red circle at the top left."], return_tensors="pt")
    padded = processor.tokenizer(["a red circle at the top left."], return_tensors="pt", padding="max_length", max_length=30)
    with torch.no_grad():
        mask = model.get_text_masks(tokens["input_ids"], tokens["attention_mask"])
        torch.testing.assert_close(model.get_text_masks(padded["input_ids"], padded["attention_mask"]), mask)
        hidden = model.text_model(**tokens).last_hidden_state
        head = model.mask_head
        per_token = head.to_logits(head.norm(head.block(head.input_projection(hidden), None)))[0]  # (T, D)
        one_by_one = torch.stack([(torch.sigmoid(logits) > head.threshold).float() for logits in per_token])
    torch.testing.assert_close(mask[0], one_by_one.amax(dim=0))


def test_an_empty_mask_scores_zero_with_a_finite_gradient():
    text = torch.randn(2, 8, requires_grad=True)
    image = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    masks = torch.tensor([[0.0] * 8, [1.0] * 8], requires_grad=True)
    similarity = masked_similarity(text, image, masks)
    assert torch.all(similarity[0] == 0)
    similarity.sum().backward()
    assert torch.isfinite(masks.grad).all() and masks.grad.abs().max() < 1e4


@pytest.mark.parametrize("backward_rows", [1024, 2])
def test_training_path_of_masked_similarity_matches_naive_values_and_gradients(monkeypatch, backward_rows):
    monkeypatch.setattr("modeling_smartclip.masking.BACKWARD_ROWS", backward_rows)
    generator = torch.Generator().manual_seed(0)
    text = torch.randn(6, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    image = torch.randn(5, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    masks = (torch.rand(6, 8, generator=generator) > 0.5).double()
    masks[0] = 0.0  # an empty mask: the clamp's floor
    masks.requires_grad_()
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(6, 5, generator=generator, dtype=torch.float64)

    ours = masked_similarity(text, image, masks, scale=scale)
    expected_values = 3.0 * naive_masked_similarity(text.detach(), image.detach(), masks.detach())
    torch.testing.assert_close(ours.detach(), expected_values)
    grads = torch.autograd.grad((ours * weights).sum(), (text, image, masks, scale))
    naive = naive_linear_in_mask_similarity(text, image, masks, scale)
    expected = torch.autograd.grad((naive * weights).sum(), (text, image, masks, scale))
    for got, want, name in zip(grads, expected, ("text", "image", "masks", "scale")):
        torch.testing.assert_close(got, want, msg=name)

    soft_masks = torch.rand(6, 8, generator=generator, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t, i, m, s: masked_similarity(t, i, m, scale=s), (text, image, soft_masks, scale)
    )


def test_training_path_keeps_one_pairwise_tensor_for_backward():
    text, image = torch.randn(40, 8, requires_grad=True), torch.randn(30, 8, requires_grad=True)
    masks = (torch.rand(40, 8) > 0.5).float().requires_grad_()
    pairwise = []

    def pack(tensor):
        if tensor.shape == (40, 30):
            pairwise.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        masked_similarity(text, image, masks, scale=torch.tensor(2.0, requires_grad=True))
    assert len(pairwise) == 1
