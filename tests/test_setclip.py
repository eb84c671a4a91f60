"""Set-CLIP losses and data step: each term against a plain loop, the plug-in on a tiny model, the batches."""

import math

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage
from torch.utils.data import DataLoader

from modeling_smartclip import SmartCLIPModel, masked_similarity
from modeling_smartclip.configuration_smartclip import LAMBDA_SPARSITY
from smartclip_train.collator import CaptionCollator
from smartclip_train.objectives import TrainingLoss
from smartclip_methods.setclip.pairing import PairedUnpairedDataset, SetCLIPCollator, SimCLRAugment
from smartclip_methods.setclip.train import SetCLIPArguments, main
from smartclip_data.scenes import make_scenes
from smartclip_methods.setclip.objective import (
    RELEASED_MK_MMD_BANDWIDTHS,
    SetCLIPLoss,
    attention_dropout,
    kde_density,
    mmd_loss,
    nt_xent,
    paired_contrastive,
    sdd_loss,
    supervised_contrastive,
)


def unit(rows: int, dim: int = 5, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(rows, dim, generator=generator, dtype=torch.float64), dim=-1)


# ----- plain-loop references, written from the released formulas --------------------------------------------------


def squared_distance(u, v):
    return sum((float(a) - float(b)) ** 2 for a, b in zip(u, v))


def loop_density(points, z, h):
    n, dims = len(points), len(points[0])
    variance = 0.0
    for k in range(dims):
        mean = sum(float(p[k]) for p in points) / n
        variance += sum((float(p[k]) - mean) ** 2 for p in points) / (n - 1)
    total = sum(math.exp(-squared_distance(a, z) / (4 * h**2 * variance)) for a in points)
    return 3 / 16 * total / (2 * math.pi * h**2)


def loop_j(a, b, h):
    total = 0.0
    for point in a:
        p, q = loop_density(a, point, h), loop_density(b, point, h)
        total += p * math.log(p / q) + q * math.log(q / p)
    return total


def loop_spread(a):
    return sum((max(float(p[k]) for p in a) - min(float(p[k]) for p in a)) ** 2 for k in range(len(a[0])))


def loop_sdd(x, y, h):
    return (loop_j(x, y, h) + loop_j(y, x, h)) * (1 / loop_spread(x) + 1 / loop_spread(y))


def loop_mmd(x, y, bandwidths):
    def k(u, v):
        return sum(math.exp(-squared_distance(u, v) / b) for b in bandwidths)

    def mean_k(a, b):
        return sum(k(u, v) for u in a for v in b) / (len(a) * len(b))

    return mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y)


def log_softmax_at(scores, target):
    top = max(scores)
    return scores[target] - top - math.log(sum(math.exp(s - top) for s in scores))


def loop_supervised(x, y, paired, tau):
    text_terms, image_terms = [], []
    for i in range(len(x)):
        if paired[i]:
            text_terms.append(-log_softmax_at([float(y[i] @ x[j]) / tau for j in range(len(x))], i))
            image_terms.append(-log_softmax_at([float(x[i] @ y[j]) / tau for j in range(len(y))], i))
    return (sum(text_terms) / len(text_terms) + sum(image_terms) / len(image_terms)) / 2


def loop_nt_xent(a, b, tau):
    rows = [r / r.norm() for r in list(a) + list(b)]
    n, losses = len(a), []
    for i in range(2 * n):
        others = [j for j in range(2 * n) if j != i]
        scores = [float(rows[i] @ rows[j]) / tau for j in others]
        losses.append(-log_softmax_at(scores, others.index((i + n) % (2 * n))))
    return sum(losses) / len(losses)


# ----- the terms ---------------------------------------------------------------------------------------------------


def test_supervised_contrastive_matches_loop():
    x, y = unit(7, seed=1), unit(7, seed=2)
    paired = torch.tensor([True, False, True, True, False, False, True])  # pairs need not come first
    got = supervised_contrastive(x, y, paired, temperature=0.05)
    assert got.item() == pytest.approx(loop_supervised(x, y, paired, 0.05), rel=1e-9)
    # unpaired items are negatives: moving an unpaired image changes the loss
    x_moved = x.clone()
    x_moved[1] = y[0]
    assert supervised_contrastive(x_moved, y, paired).item() > got.item()
    assert supervised_contrastive(x, y, torch.zeros(7, dtype=torch.bool)).item() == 0


def test_kde_density_matches_loop():
    points, at = unit(6, seed=3), unit(4, seed=4)
    got = kde_density(points, at, h=0.5)
    want = [loop_density(points, z, 0.5) for z in at]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    # the bandwidth enters as 4 h^2 sigma^2, so h = 1 differs from the released 0.5
    assert kde_density(points, at, h=1.0)[0].item() == pytest.approx(loop_density(points, at[0], 1.0), rel=1e-9)


@pytest.mark.parametrize("h", [0.5, 0.8])
def test_sdd_matches_loop(h):
    x, y = unit(6, seed=5), unit(5, seed=6)
    assert sdd_loss(x, y, h).item() == pytest.approx(loop_sdd(x, y, h), rel=1e-8)


@pytest.mark.parametrize("bandwidths", [(1.0,), (0.5, 2.0, 10.0)])
def test_mmd_matches_loop(bandwidths):
    x, y = unit(6, seed=7), unit(4, seed=8)
    assert mmd_loss(x, y, bandwidths).item() == pytest.approx(loop_mmd(x, y, bandwidths), rel=1e-9)


def test_released_multi_kernel_bank_is_twice_the_sigmas():
    x, y = unit(5, seed=9), unit(5, seed=10)
    sigmas = [b / 2 for b in RELEASED_MK_MMD_BANDWIDTHS]
    want = loop_mmd(x, y, [2 * s for s in sigmas])
    assert len(sigmas) == 19 and sigmas[0] == pytest.approx(1e-6)
    assert mmd_loss(x, y, RELEASED_MK_MMD_BANDWIDTHS).item() == pytest.approx(want, rel=1e-9)


def test_nt_xent_matches_loop():
    a, b = unit(4, seed=11) * 3.0, unit(4, seed=12)  # cosine similarity: the scale of a view does not matter
    assert nt_xent(a, b, temperature=0.05).item() == pytest.approx(loop_nt_xent(a, b, 0.05), rel=1e-9)


def test_distribution_terms_vanish_on_identical_sets_only():
    x, y = unit(8, seed=13), unit(8, seed=14)
    assert sdd_loss(x, x).item() == 0
    assert abs(mmd_loss(x, x).item()) < 1e-12
    assert sdd_loss(x, y).item() > 0
    assert mmd_loss(x, y).item() > 0
    # a permutation of the same set is the same distribution: no pairing information is needed
    assert abs(sdd_loss(x, x[torch.randperm(8)]).item()) < 1e-12


@pytest.mark.parametrize(
    "term",
    [
        lambda x, y: supervised_contrastive(x, y, torch.tensor([True, True, False, False, False, False])),
        lambda x, y: sdd_loss(x, y),
        lambda x, y: mmd_loss(x, y),
        lambda x, y: mmd_loss(x, y, RELEASED_MK_MMD_BANDWIDTHS),
        lambda x, y: nt_xent(x, y),
    ],
    ids=["supervised", "sdd", "mmd", "mmd_bank", "nt_xent"],
)
def test_every_term_sends_gradients_to_both_inputs(term):
    x = unit(6, seed=15).float().requires_grad_()
    y = unit(6, seed=16).float().requires_grad_()
    term(x, y).backward()
    for grad in (x.grad, y.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_terms_reject_bad_inputs():
    x = unit(4)
    with pytest.raises(ValueError, match="at least 2"):
        sdd_loss(x[:1], x[:1])
    with pytest.raises(ValueError, match="same D"):
        mmd_loss(x, unit(4, dim=3))
    with pytest.raises(ValueError, match="bool"):
        supervised_contrastive(x, x, torch.ones(4))
    with pytest.raises(ValueError, match="bandwidths"):
        mmd_loss(x, x, ())


# ----- the data step -----------------------------------------------------------------------------------------------


def numbered_dataset(size: int) -> Dataset:
    """Item i: a flat image of grey level i and the caption "item i", so a row's sources can be read back."""
    images = [PILImage.new("RGB", (8, 8), (i, i, i)) for i in range(size)]
    return Dataset.from_dict(
        {"image": images, "long_caption": [f"item {i}" for i in range(size)]},
        features=Features({"image": Image(), "long_caption": Value("string")}),
    )


def sources(example: dict) -> tuple[int, int]:
    return example["image"].getpixel((0, 0))[0], int(example["long_caption"].split()[1])


def test_blocks_hold_a_fixed_share_of_pairs_and_unpaired_rows_from_separate_pools():
    data = PairedUnpairedDataset(numbered_dataset(60), batch_size=6, paired_fraction=0.2, pair_share=1 / 3, seed=3)
    examples = list(data)
    assert len(examples) == len(data) == 6 * math.ceil(48 / 4)
    paired_pool, unpaired_pool = set(data.paired.tolist()), set(data.unpaired.tolist())
    assert len(paired_pool) == 12 and not paired_pool & unpaired_pool
    for start in range(0, len(examples), 6):
        block = examples[start : start + 6]
        assert [e["paired"] for e in block] == [True, True, False, False, False, False]
        for example in block:
            image, text = sources(example)
            if example["paired"]:
                assert image == text and image in paired_pool
            else:
                assert image in unpaired_pool and text in unpaired_pool
    unpaired = [sources(e) for e in examples if not e["paired"]]
    # one epoch passes over the unpaired pool, images and captions in independent orders
    assert {image for image, _ in unpaired} == unpaired_pool == {text for _, text in unpaired}
    assert sum(image == text for image, text in unpaired) < len(unpaired) / 4


def test_without_an_unpaired_pool_every_row_is_a_pair():
    for data in (
        PairedUnpairedDataset(numbered_dataset(20), batch_size=4, paired_fraction=1.0),
        PairedUnpairedDataset(numbered_dataset(20), batch_size=4, paired_fraction=0.5, unpaired=False),
    ):
        examples = list(data)
        assert len(examples) == 4 * (len(data.paired) // 4)
        assert all(e["paired"] and sources(e)[0] == sources(e)[1] for e in examples)


def test_pools_need_a_map_style_dataset_and_enough_pairs():
    with pytest.raises(ValueError, match="map-style"):
        PairedUnpairedDataset(numbered_dataset(12).to_iterable_dataset(), batch_size=4)
    with pytest.raises(ValueError, match="cannot fill one batch"):
        PairedUnpairedDataset(numbered_dataset(12), batch_size=8, paired_fraction=0.5, unpaired=False)


def test_blocks_are_reproducible_from_seed_and_epoch():
    augment = SimCLRAugment()

    def run(seed, epoch):
        data = PairedUnpairedDataset(
            numbered_dataset(30), batch_size=6, paired_fraction=0.2, augment=augment, seed=seed
        )
        data.set_epoch(epoch)
        return [(e["long_caption"], e["image"].tobytes(), e["image_aug"].tobytes()) for e in data]

    first = run(0, 0)
    assert first == run(0, 0)
    assert first != run(0, 1)
    assert first != run(1, 0)


def test_collator_emits_the_mask_and_a_second_view(processor):
    scenes = make_scenes(num_train=12, num_test=1, seed=0)["train"]
    data = PairedUnpairedDataset(scenes, batch_size=6, paired_fraction=0.5, augment=SimCLRAugment(), seed=0)
    collator = SetCLIPCollator(CaptionCollator(processor))
    batches = list(DataLoader(data, batch_size=6, collate_fn=collator))
    assert len(batches) == 2
    for batch in batches:
        assert batch["paired_mask"].tolist() == [True, True, False, False, False, False]
        assert batch["pixel_values_aug"].shape == batch["pixel_values"].shape == (6, 3, 32, 32)
        assert not torch.equal(batch["pixel_values_aug"], batch["pixel_values"])
        assert batch["input_ids"].shape[0] == 6
    with pytest.raises(ValueError, match="one block"):
        next(iter(DataLoader(data, batch_size=4, collate_fn=collator)))
    # rows of an ordinary split (evaluation) are all known pairs
    plain = collator([scenes[0], scenes[1], scenes[2]])
    assert plain["paired_mask"].tolist() == [True] * 3 and "pixel_values_aug" not in plain


def test_augment_keeps_size_and_is_the_identity_when_switched_off():
    rng = np.random.default_rng(0)
    image = PILImage.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    view = SimCLRAugment()(image, np.random.default_rng(1))
    assert view.size == image.size and view.mode == "RGB"
    assert view.tobytes() == SimCLRAugment()(image, np.random.default_rng(1)).tobytes()
    off = SimCLRAugment(min_scale=1.0, ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    assert off(image, np.random.default_rng(2)).tobytes() == image.tobytes()
    flipped = SimCLRAugment(min_scale=1.0, ratio=(1.0, 1.0), flip_p=1.0, jitter_p=0.0, grayscale_p=0.0)
    assert flipped(image, rng).tobytes() == image.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT).tobytes()


# ----- the loss plug-in on a tiny model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene_batch(processor):
    scenes = make_scenes(num_train=16, num_test=1, seed=1)["train"]
    data = PairedUnpairedDataset(scenes, batch_size=6, paired_fraction=0.25, augment=SimCLRAugment(), seed=0)
    return next(iter(DataLoader(data, batch_size=6, collate_fn=SetCLIPCollator(CaptionCollator(processor)))))


def model_outputs(clip_dir, batch, **overrides):
    torch.manual_seed(0)
    model = SmartCLIPModel.from_clip(clip_dir, **overrides).train()
    inputs = {key: batch[key] for key in ("input_ids", "pixel_values", "attention_mask")}
    outputs = model(**inputs, output_text_masks=True)  # as SmartCLIPTrainer runs it for an objective that reads masks
    return model, outputs


@pytest.mark.parametrize("base", ["clip", "smartclip"])
def test_setclip_loss_trains_both_towers(clip_dir, scene_batch, base):
    model, outputs = model_outputs(clip_dir, scene_batch)
    loss_fn = SetCLIPLoss(base=base)
    loss, logs = loss_fn(model, outputs, scene_batch)
    assert torch.isfinite(loss)
    assert logs["paired_share"] == pytest.approx(2 / 6)
    weights = {"clip": 1.0, "sdd": 0.7, "mmd": 0.2, "image_ssl": 0.15, "text_ssl": 0.15}
    if base == "smartclip":
        weights["sparsity"] = LAMBDA_SPARSITY  # the config's default, as the modular loss has it
    assert logs.keys() - {"paired_share"} == weights.keys()
    assert loss.item() == pytest.approx(sum(w * logs[name] for name, w in weights.items()), rel=1e-5)
    # the supervised term scores with the plain cosine or with caption b's mask on every image
    y, x = outputs.text_embeds, outputs.image_embeds
    similarities = y @ x.T if base == "clip" else masked_similarity(y, x, outputs.text_masks)
    want = paired_contrastive(similarities / 0.05, scene_batch["paired_mask"]).item()
    assert logs["clip"] == pytest.approx(want, rel=1e-5)
    # what the trainer reads to set the model up
    assert isinstance(loss_fn, TrainingLoss)
    want_setup = (True, "modular") if base == "smartclip" else (False, "plain")
    assert (loss_fn.trains_mask_head, loss_fn.scoring) == want_setup
    loss.backward()
    towers = {"vision_model": model.vision_model, "text_model": model.text_model}
    if base == "smartclip":
        towers["mask_head"] = model.mask_head  # the masked similarity and the sparsity term reach the mask head
    for name, tower in towers.items():
        grads = [p.grad for p in tower.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name


def test_setclip_loss_total_is_the_weighted_sum_and_zero_weights_skip_passes(clip_dir, scene_batch):
    model, outputs = model_outputs(clip_dir, scene_batch)
    batch = {k: v for k, v in scene_batch.items() if k != "pixel_values_aug"}  # not needed when the image term is off
    loss_fn = SetCLIPLoss(clip_weight=1.0, sdd_weight=0.5, mmd_weight=2.0, image_ssl_weight=0.0, text_ssl_weight=0.0)
    loss, logs = loss_fn(model, outputs, batch)
    assert set(logs) == {"clip", "sdd", "mmd", "paired_share"}
    assert loss.item() == pytest.approx(logs["clip"] + 0.5 * logs["sdd"] + 2.0 * logs["mmd"], rel=1e-5)
    x, y = outputs.image_embeds, outputs.text_embeds
    assert logs["clip"] == pytest.approx(supervised_contrastive(x, y, batch["paired_mask"]).item(), rel=1e-5)
    assert logs["sdd"] == pytest.approx(sdd_loss(x, y).item(), rel=1e-5)
    with pytest.raises(ValueError, match="pixel_values_aug"):
        SetCLIPLoss()(model, outputs, batch)
    with pytest.raises(ValueError, match="paired_mask"):
        SetCLIPLoss()(model, outputs, {k: v for k, v in batch.items() if k != "paired_mask"})


def test_self_supervised_terms_run_in_training_mode_only(clip_dir, scene_batch):
    model, outputs = model_outputs(clip_dir, scene_batch)
    model.eval()
    batch = {k: v for k, v in scene_batch.items() if k != "pixel_values_aug"}  # as an evaluation batch
    loss, logs = SetCLIPLoss()(model, outputs, batch)
    assert set(logs) == {"clip", "sdd", "mmd", "paired_share"} and torch.isfinite(loss)


def test_second_text_view_differs_only_through_dropout(clip_dir, scene_batch):
    model, _ = model_outputs(clip_dir, scene_batch)
    ids, mask = scene_batch["input_ids"], scene_batch["attention_mask"]
    with torch.no_grad():
        plain = model.get_text_features(ids, mask).pooler_output
        assert torch.equal(plain, model.get_text_features(ids, mask).pooler_output)  # CLIP's attention dropout is 0
        with attention_dropout(model.text_model, 0.3):
            dropped = model.get_text_features(ids, mask).pooler_output
        assert not torch.allclose(plain, dropped)
        assert torch.equal(plain, model.get_text_features(ids, mask).pooler_output)  # restored afterwards


def test_arguments_build_the_loss_and_the_augmentation():
    args = SetCLIPArguments(setclip_base="smartclip", setclip_sdd_weight=0.6, setclip_image_ssl_weight=0.0)
    loss = args.objective(lambda_sparsity=0.02)
    assert loss.base == "smartclip" and loss.weights["sdd"] == 0.6 and loss.weights["mmd"] == 0.2
    assert loss.lambda_sparsity == 0.02
    assert args.augment() is None
    assert SetCLIPArguments(setclip_augment_flip_p=0.0).augment().flip_p == 0.0
    with pytest.raises(ValueError, match="base"):
        SetCLIPLoss(base="siglip")
    with pytest.raises(ValueError, match="not all 0"):
        SetCLIPLoss(clip_weight=0, sdd_weight=0, mmd_weight=0, image_ssl_weight=0, text_ssl_weight=0)


def test_setclip_flags_live_in_their_own_command(capsys):
    from smartclip_train.train import main as core_main

    with pytest.raises(SystemExit):
        core_main(["--help"])
    core_help = capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    setclip_help = capsys.readouterr().out
    assert "setclip" not in core_help and "paired_fraction" not in core_help and "augment" not in core_help
    assert "--setclip_paired_fraction" in setclip_help and "--setclip_augment_flip_p" in setclip_help
    assert "--objective" in core_help


def test_setclip_command_trains_a_few_steps(tmp_path):
    main([
        "--output_dir", str(tmp_path / "run"), "--max_steps", "2", "--per_device_train_batch_size", "6",
        "--num_train_scenes", "24", "--num_test_scenes", "6", "--setclip_paired_fraction", "0.5",
        "--report_to", "none", "--use_cpu", "--save_strategy", "no", "--scratch_hidden_size", "32",
        "--scratch_num_layers", "1", "--scratch_projection_dim", "16",
    ])
    assert (tmp_path / "run" / "model.safetensors").is_file()
