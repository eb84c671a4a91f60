"""The Long-CLIP objective: its PCA, its value against a direct computation, its gradients, the command line (two
ranks against one process, global and local: tests/test_distributed.py)."""

import json
import math

import pytest
import torch

from smartclip_train.objectives import LongCLIPLoss, build_objective
from smartclip_train.train import main as train_main

from .test_distributed import OBJECTIVES, tiny_model_and_batch, with_first_sentences

PCA_DIM = OBJECTIVES["longclip"]["pca_dim"]  # below the 6-image batch's rank: the decomposition is not the identity


def forward_and_loss(model, batch: dict, objective: LongCLIPLoss) -> tuple[torch.Tensor, dict]:
    model_inputs = {name: batch[name] for name in ("input_ids", "attention_mask", "pixel_values")}
    return objective(model, model(**model_inputs, return_logits=False), batch)


def reference_loss(image, long_text, short_text, scale: float, k: int, smoothing: float) -> float:
    """Long-CLIP's loss written out: PCA by SVD, then per-row cross-entropy with label smoothing, in float64."""
    mean = image.mean(dim=0)
    u, s, vh = torch.linalg.svd(image - mean, full_matrices=False)
    coarse = (u[:, :k] * s[:k]) @ vh[:k] + mean
    coarse = coarse / coarse.norm(dim=1, keepdim=True)

    def smoothed_cross_entropy(logits):  # rows are queries, the diagonal holds the right answers
        total = 0.0
        for i, row in enumerate(logits.tolist()):
            log_norm = math.log(sum(math.exp(v) for v in row))
            log_probs = [v - log_norm for v in row]
            total += -(1 - smoothing) * log_probs[i] - smoothing * sum(log_probs) / len(row)
        return total / len(logits)

    def symmetric(logits):
        return (smoothed_cross_entropy(logits) + smoothed_cross_entropy(logits.T)) / 2

    return symmetric(scale * long_text @ image.T) + symmetric(scale * short_text @ coarse.T)


def test_pca_is_the_rank_k_reconstruction_with_the_mean_added_back():
    features = torch.randn(40, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mean = features.mean(dim=0)
    u, s, vh = torch.linalg.svd(features - mean, full_matrices=False)
    for k in (1, 3, 9):
        expected = (u[:, :k] * s[:k]) @ vh[:k] + mean  # the best rank-k fit of the centred rows (Eckart-Young)
        torch.testing.assert_close(LongCLIPLoss.principal_components(features, k), expected)
    once = LongCLIPLoss.principal_components(features, 3)
    torch.testing.assert_close(LongCLIPLoss.principal_components(once, 3), once)  # a projection

    # Rows on a 2-dimensional affine plane: any k >= 2 reconstructs them exactly.
    plane = torch.randn(40, 2, dtype=torch.float64) @ torch.randn(2, 10, dtype=torch.float64) + torch.randn(10)
    for k in (2, 5):
        torch.testing.assert_close(LongCLIPLoss.principal_components(plane, k), plane)
    few = features[:5]
    assert LongCLIPLoss.principal_components(few, 4) is few  # 5 centred rows have rank <= 4: nothing to drop


def test_pca_gradients_match_finite_differences():
    features = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: LongCLIPLoss.principal_components(x, 2), (features,))


def test_loss_equals_a_direct_computation_on_a_hand_made_batch():
    model, batch = tiny_model_and_batch()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(20.0))
        loss, logs = forward_and_loss(model, with_first_sentences(batch), LongCLIPLoss(pca_dim=PCA_DIM, label_smoothing=0.1))
        outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        pixel_values=batch["pixel_values"])
        short = model.get_text_features(batch["first_input_ids"], batch["first_attention_mask"]).pooler_output
    expected = reference_loss(
        outputs.image_embeds, outputs.text_embeds, short / short.norm(dim=1, keepdim=True), 20.0, PCA_DIM, 0.1
    )
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert logs["loss_long"] + logs["loss_short"] == pytest.approx(expected, rel=1e-9)
    assert logs["logit_scale"] == pytest.approx(20.0)


def test_gradients_reach_both_towers_and_the_temperature_but_not_the_mask_head():
    model, batch = tiny_model_and_batch()
    model.mask_head.requires_grad_(False)  # what training with this objective does
    loss, _ = forward_and_loss(model, with_first_sentences(batch), build_objective("longclip", pca_dim=PCA_DIM))
    loss.backward()
    grads = {name: param.grad for name, param in model.named_parameters() if param.grad is not None}
    assert all(torch.isfinite(grad).all() for grad in grads.values())
    for name in ("logit_scale", "text_projection.weight", "visual_projection.weight",
                 "text_model.embeddings.token_embedding.weight", "vision_model.embeddings.patch_embedding.weight"):
        assert grads[name].abs().sum() > 0, name
    assert not any(name.startswith("mask_head.") for name in grads)


def test_a_batch_without_first_sentences_is_a_clear_error():
    model, batch = tiny_model_and_batch()
    with pytest.raises(ValueError, match="first_sentence=True"):
        forward_and_loss(model, batch, LongCLIPLoss())
    with pytest.raises(ValueError, match="pca_dim=0"):
        LongCLIPLoss(pca_dim=0)


def test_smartclip_train_runs_the_longclip_objective(tmp_path):
    train_main([
        "--objective", "longclip", "--output_dir", str(tmp_path), "--max_steps", "2", "--logging_steps", "1",
        "--per_device_train_batch_size", "8", "--num_train_scenes", "16", "--num_test_scenes", "4",
        "--p_long", "1", "--p_sentence", "0", "--p_short", "0", "--scratch_hidden_size", "32", "--use_cpu",
        "--report_to", "none", "--save_strategy", "no",
    ])
    history = json.loads((tmp_path / "trainer_state.json").read_text())["log_history"]
    assert all(entry["loss_short"] > 0 and entry["loss_long"] > 0 for entry in history if "loss" in entry)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["scoring"], config["mask_head_trained"]) == ("plain", False)
