"""Data selection (`smartclip-select`): the negCLIPLoss and NormSim formulas, exact top-k cuts over chunked arrays,
and end-to-end runs with a tiny random CLIP teacher: skipped rows, batch-size independence, seeds, resume, streaming."""

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset, Features, Image, Value, load_dataset, load_from_disk
from PIL import Image as PILImage

from modeling_smartclip import SmartCLIPModel, SmartCLIPProcessor
from modeling_smartclip.masking import masked_similarity
from smartclip_data.sources import DataArguments
from tests.support import with_caption_specific_masks
from smartclip_methods.select.pipeline import SelectArguments, main, run_selection
from smartclip_methods.select.embed import GrowingArray
from smartclip_methods.select.scores import batch_neg_clip_loss, neg_clip_loss, norm_sim, random_batches
from smartclip_methods.select.selection import (
    DECISIONS, DROPPED_NEG_CLIP_LOSS, EMPTY_CAPTION, KEPT, UNREADABLE_IMAGE, apply_cut, target_count, top_k_cut,
)

CAPTIONS = ["a red circle.", "a blue square.", "a green cross.", "a yellow triangle.", "a small red square.",
            "a large blue circle.", "a green triangle at the top left.", "a cross.", "a square.", "a circle.",
            "a red cross.", "a blue triangle.", "a large green square.", "a yellow circle."]
CORRUPT, EMPTY = 3, 7  # rows with garbage image bytes and with an empty caption


def unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def score(texts, images, rows=None, **kwargs) -> np.ndarray:
    rows = np.arange(len(texts)) if rows is None else rows
    out = np.full(len(texts), np.nan, np.float32)
    return neg_clip_loss(np.asarray(texts), np.asarray(images), rows, out, **kwargs)


# ----- formulas -------------------------------------------------------------------------------------------------------


def test_neg_clip_loss_is_minus_tau_times_the_per_pair_clip_loss():
    # Three hand-made pairs in 2-D: pair 0 matches, pair 1's caption is between two images, pair 2 is mismatched.
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    texts = F.normalize(torch.tensor([[1.0, 0.1], [1.0, 1.0], [0.0, 1.0]]), dim=-1)
    tau = 0.5
    logits = images @ texts.T / tau  # (image, caption)
    labels = torch.arange(3)
    per_pair_loss = (F.cross_entropy(logits, labels, reduction="none") + F.cross_entropy(logits.T, labels, reduction="none")) / 2
    expected = -tau * per_pair_loss
    np.testing.assert_allclose(score(texts, images, tau=tau, batch_size=3, num_batchings=1), expected, rtol=1e-6)
    # The formula written out for pair 1.
    dots = images @ texts.T
    by_hand = dots[1, 1] - tau / 2 * torch.logsumexp(dots[1] / tau, 0) - tau / 2 * torch.logsumexp(dots[:, 1] / tau, 0)
    assert score(texts, images, tau=tau, batch_size=3, num_batchings=1)[1] == pytest.approx(by_hand.item(), rel=1e-6)
    assert expected.argmax() == 0 and expected.argmin() == 2


def test_neg_clip_loss_in_caption_chunks_and_with_modular_scoring():
    texts, images = unit(9, 6, 0), unit(9, 6, 1)
    masks = (torch.rand(9, 6, generator=torch.Generator().manual_seed(2)) > 0.4).float()
    labels = torch.arange(9)
    for scoring, similarity in (("plain", texts @ images.T), ("modular", masked_similarity(texts, images, masks))):
        logits = similarity / 0.01  # (caption, image)
        expected = -0.01 * (F.cross_entropy(logits, labels, reduction="none") + F.cross_entropy(logits.T, labels, reduction="none")) / 2
        for chunk_size in (2, 4, 9):
            got = batch_neg_clip_loss(texts, images, 0.01, masks, scoring, chunk_size)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_neg_clip_loss_averages_random_batchings_and_a_seed_repeats_them():
    texts, images = unit(10, 5, 3), unit(10, 5, 4)
    rows = np.array([0, 1, 2, 4, 5, 6, 7, 8, 9])  # row 3 is not scored
    scores = score(texts, images, rows, tau=0.1, batch_size=4, num_batchings=3, seed=7)
    generator, expected = np.random.default_rng(7), np.zeros(10)
    for _ in range(3):
        batches = random_batches(rows, 4, generator)
        assert sorted(len(batch) for batch in batches) == [3, 3, 3]  # near-equal batches, not 4 + 4 + 1
        for batch in batches:
            expected[batch] += batch_neg_clip_loss(texts[batch], images[batch], 0.1).numpy() / 3
    np.testing.assert_allclose(scores[rows], expected[rows], rtol=1e-5)
    assert np.isnan(scores[3])
    np.testing.assert_array_equal(score(texts, images, rows, tau=0.1, batch_size=4, num_batchings=3, seed=7), scores)
    assert not np.allclose(score(texts, images, rows, tau=0.1, batch_size=4, num_batchings=3, seed=8), scores, equal_nan=True)


def test_norm_sim_is_the_p_norm_of_the_dot_products_with_the_target():
    images, target = unit(7, 5, 5), unit(4, 5, 6)
    rows = np.arange(7)
    dots = images @ target.T
    for p, expected in ((math.inf, dots.abs().amax(dim=1)), (2, dots.square().sum(dim=1).sqrt())):
        got = norm_sim(images.numpy(), target.numpy(), rows, np.zeros(7, np.float32), p, chunk_size=3)
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="expected 2 or inf"):
        norm_sim(images.numpy(), target.numpy(), rows, np.zeros(7, np.float32), 1)


# ----- exact cuts -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 17, 40, 63])
def test_top_k_cut_keeps_exactly_k_breaking_ties_by_row(k):
    rng = np.random.default_rng(k)
    values = rng.integers(-3, 4, 100).astype(np.float32) * np.float32(0.25)  # many ties, negatives, zeros
    values[[5, 6]] = [-0.0, 0.0]
    eligible = rng.random(100) < 0.65
    decisions = np.where(eligible, KEPT, UNREADABLE_IMAGE).astype(np.uint8)
    cut = top_k_cut(values, k, lambda rows: decisions[rows] == KEPT, chunk_rows=7)
    kept = apply_cut(values, cut, decisions, DROPPED_NEG_CLIP_LOSS, chunk_rows=7)
    candidates = np.flatnonzero(eligible)
    order = candidates[np.lexsort((candidates, -values[candidates]))]  # by value, then by row
    assert kept == k
    np.testing.assert_array_equal(np.flatnonzero(decisions == KEPT), np.sort(order[:k]))
    assert (decisions[~eligible] == UNREADABLE_IMAGE).all()


def test_target_count_and_growing_array(tmp_path):
    assert [target_count(f, 10) for f in (0, 0.25, 0.3, 0.35, 1)] == [0, 3, 3, 4, 10]
    array = GrowingArray(tmp_path / "a.npy", np.float32, (3,))
    array.append(np.ones((2, 3)))
    array.append(np.zeros((1, 3)))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), [[1, 1, 1], [1, 1, 1], [0, 0, 0]])
    GrowingArray(tmp_path / "a.npy", np.float32, (3,), rows=1)  # reopened at 1 row: the rest is cut off
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), [[1, 1, 1]])


# ----- end to end -----------------------------------------------------------------------------------------------------


def png_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    """A `save_to_disk` pool of 14 pairs (`image`, `caption`, `id`): one corrupt image, one empty caption."""
    images = [{"bytes": b"not an image" if i == CORRUPT else png_bytes(i), "path": None} for i in range(len(CAPTIONS))]
    captions = ["" if i == EMPTY else caption for i, caption in enumerate(CAPTIONS)]
    features = Features({"image": Image(), "caption": Value("string"), "id": Value("int64")})
    pool = Dataset.from_dict({"image": images, "caption": captions, "id": list(range(len(CAPTIONS)))}, features=features)
    path = tmp_path_factory.mktemp("pool") / "pool"
    pool.save_to_disk(str(path))
    return path


def select(clip_dir, pool_dir, output_dir, on_block=None, streaming=False, **overrides) -> dict:
    settings = dict(teacher=str(clip_dir), output_dir=str(output_dir), batch_size=4, fraction=0.5, device="cpu",
                    clip_batch_size=6, num_batchings=3, progress=False)
    data_args = DataArguments(dataset_name=str(pool_dir), caption_column="caption", streaming=streaming)
    return run_selection(SelectArguments(**{**settings, **overrides}), data_args, on_block=on_block)


def outputs(report: dict) -> tuple[np.ndarray, np.ndarray]:
    """`(decisions, negCLIPLoss scores)` of a run, per source row."""
    return np.load(report["outputs"]["decisions"]), np.load(report["cache"]["scores"]["neg_clip_loss"])


def test_selection_skips_bad_rows_keeps_an_exact_fraction_and_writes_columns_and_report(clip_dir, pool_dir, tmp_path):
    report = select(clip_dir, pool_dir, tmp_path / "out", target_split="train", fraction_normsim=0.3)
    counts = report["counts"]
    assert counts["pool"] == 14 and counts["usable"] == 12
    assert counts["unreadable image"] == 1 and counts["empty caption"] == 1
    assert counts["kept"] == 4 and counts["dropped by negCLIPLoss"] == 6 and counts["dropped by NormSim"] == 2
    decisions, scores = outputs(report)
    assert decisions[CORRUPT] == UNREADABLE_IMAGE and decisions[EMPTY] == EMPTY_CAPTION
    assert np.isnan(scores[[CORRUPT, EMPTY]]).all() and np.isfinite(np.delete(scores, [CORRUPT, EMPTY])).all()
    # The target set was the pool's own split: its corrupt image is skipped and counted too.
    assert report["target_counts"] == {"images": 14, "usable": 13, "unreadable image": 1}

    kept = load_from_disk(report["outputs"]["data"])
    assert kept.column_names == ["image", "caption", "id", "neg_clip_loss", "norm_sim"]
    assert sorted(kept["id"]) == np.flatnonzero(decisions == KEPT).tolist()
    assert kept[0]["image"].size == (32, 32)  # images are decoded again when read
    np.testing.assert_allclose(kept["neg_clip_loss"], scores[kept["id"]], rtol=1e-6)
    # Stage 1 kept the top half of the usable pairs by negCLIPLoss: every pair it dropped scores lower.
    stage_one = np.isin(decisions, [KEPT, DECISIONS.index("dropped by NormSim")])
    assert stage_one.sum() == 6 and scores[stage_one].min() >= scores[decisions == DROPPED_NEG_CLIP_LOSS].max()

    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["counts"] == counts and saved["arguments"]["select"]["fraction"] == 0.5
    assert (tmp_path / "out" / "scores.png").stat().st_size > 0
    assert saved["cuts"]["neg_clip_loss"]["threshold"] == pytest.approx(float(scores[stage_one].min()))

    # Keeping everything keeps every usable pair and still none of the skipped ones (the embeddings are re-used).
    everything = select(clip_dir, pool_dir, tmp_path / "out", fraction=1.0)
    assert everything["cache"]["embeddings_reused"] and everything["counts"]["kept"] == 12
    assert sorted(load_from_disk(everything["outputs"]["data"])["id"]) == [i for i in range(14) if i not in (CORRUPT, EMPTY)]


def test_results_do_not_depend_on_the_embedding_batch_size_and_a_seed_repeats_the_selection(clip_dir, pool_dir, tmp_path):
    runs = [select(clip_dir, pool_dir, tmp_path / name, batch_size=size) for name, size in (("a", 3), ("b", 8), ("c", 3))]
    (decisions_a, scores_a), (decisions_b, scores_b), (decisions_c, scores_c) = map(outputs, runs)
    np.testing.assert_allclose(scores_a, scores_b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(decisions_a, decisions_b)
    np.testing.assert_array_equal(scores_a, scores_c)
    np.testing.assert_array_equal(decisions_a, decisions_c)
    other_seed = select(clip_dir, pool_dir, tmp_path / "a", seed=1)  # re-uses run a's embeddings, re-scores
    assert other_seed["cache"]["embeddings_reused"]
    assert not np.array_equal(outputs(other_seed)[1], scores_a, equal_nan=True)


class Interrupted(Exception):
    pass


def test_an_interrupted_embedding_run_resumes_to_the_same_result(clip_dir, pool_dir, tmp_path):
    straight = select(clip_dir, pool_dir, tmp_path / "straight")

    def interrupt(rows_done: int) -> None:
        if rows_done == 8:
            raise Interrupted

    with pytest.raises(Interrupted):
        select(clip_dir, pool_dir, tmp_path / "killed", on_block=interrupt)
    cache = next((tmp_path / "killed" / "cache").glob("pool-*"))
    assert json.loads((cache / "manifest.json").read_text())["rows_done"] == 8
    with open(cache / "image_embeds.npy", "ab") as file:
        file.write(b"\x01" * 100)  # half a block written when the run was killed
    blocks = []
    resumed = select(clip_dir, pool_dir, tmp_path / "killed", on_block=blocks.append)
    assert blocks == [12, 14] and not resumed["cache"]["embeddings_reused"]
    for name in ("image_embeds", "text_embeds", "status"):
        np.testing.assert_array_equal(np.load(cache / f"{name}.npy"), np.load(Path(straight["cache"]["pool"], f"{name}.npy")))
    for got, expected in zip(outputs(resumed), outputs(straight)):
        np.testing.assert_array_equal(got, expected)


def test_streamed_pool_gives_the_same_selection_and_parquet_shards(clip_dir, pool_dir, tmp_path):
    loaded = select(clip_dir, pool_dir, tmp_path / "loaded")
    streamed = select(clip_dir, pool_dir, tmp_path / "streamed", streaming=True, output_format="parquet",
                      parquet_shard_rows=4)
    for got, expected in zip(outputs(streamed), outputs(loaded)):
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    shards = sorted((tmp_path / "streamed" / "data").glob("*.parquet"))
    assert [shard.name for shard in shards] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    kept = load_dataset("parquet", data_files=[str(s) for s in shards], split="train")
    assert sorted(kept["id"]) == sorted(load_from_disk(loaded["outputs"]["data"])["id"])
    assert kept.features["image"] == Image()


def test_command_line_errors_name_the_flag(clip_dir, pool_dir, tmp_path, capsys):
    base = ["--teacher", str(clip_dir), "--output_dir", str(tmp_path), "--dataset_name", str(pool_dir),
            "--caption_column", "caption"]
    for flags, expected in ((["--fraction_normsim", "0.1"], "--fraction_normsim needs a target set"),
                            (["--fraction", "1.5"], "--fraction=1.5"),
                            (["--scoring", "modular", "--progress", "false"],
                             "--scoring modular needs a SmartCLIP teacher whose mask head was trained")):
        with pytest.raises(SystemExit) as exit_info:
            main([*base, *flags])
        assert exit_info.value.code == 2
        assert expected in capsys.readouterr().err.strip().splitlines()[-1]


def test_modular_scoring_with_a_trained_head_teacher(clip_dir, pool_dir, tmp_path):
    teacher = with_caption_specific_masks(SmartCLIPModel.from_clip(clip_dir))
    teacher.config.mask_head_trained = True  # a head that training would have set
    teacher.save_pretrained(tmp_path / "teacher")
    SmartCLIPProcessor.from_clip(clip_dir).save_pretrained(tmp_path / "teacher")
    plain = select(tmp_path / "teacher", pool_dir, tmp_path / "out")
    modular = select(tmp_path / "teacher", pool_dir, tmp_path / "out", scoring="modular")
    assert modular["cache"]["embeddings_reused"] and modular["counts"]["kept"] == plain["counts"]["kept"] == 6
    masks = np.load(Path(modular["cache"]["pool"], "text_masks.npy"))
    assert masks.shape == (14, 16) and set(np.unique(masks)) <= {0, 1}
    plain_scores, modular_scores = outputs(plain)[1], outputs(modular)[1]
    np.testing.assert_array_equal(np.isnan(modular_scores), np.isnan(plain_scores))
    assert not np.allclose(plain_scores, modular_scores, equal_nan=True)
