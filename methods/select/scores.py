"""Per-pair scores of a teacher's embeddings: negCLIPLoss (the pair's CLIP loss within random batches) and NormSim
(how close an image is to a target task's images).

Wang et al., *CLIPLoss and Norm-Based Data Selection Methods for Multimodal Contrastive Learning*, NeurIPS 2024
(arXiv 2405.19547; v2 calls negCLIPLoss "s-CLIPLoss"). With image embeddings `f`, caption embeddings `g` and a
random batch `B` that contains pair `i`:

    negCLIPLoss_i = f_i.g_i - tau/2 log sum_{j in B} exp(f_i.g_j / tau) - tau/2 log sum_{j in B} exp(f_j.g_i / tau)
    NormSim_p(f_i) = (sum_j |f_i.t_j|^p)^(1/p)   over the target images t_j (p = inf: max_j |f_i.t_j|)

negCLIPLoss is `-tau` times the pair's symmetric CLIP loss at temperature `tau`; subtracting the batch normaliser
from CLIPScore lowers pairs whose caption or image matches many others (generic captions, duplicates).

The pool's arrays may be memory-mapped files: a batch of `B` rows and one `(chunk_size, B)` block of similarities
are the most this module holds at a time.
"""

import math

import numpy as np
import torch

from modeling_smartclip.masking import similarity


@torch.no_grad()
def batch_neg_clip_loss(
    text_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    tau: float = 0.01,
    text_masks: torch.Tensor | None = None,
    scoring: str = "plain",
    chunk_size: int = 1024,
) -> torch.Tensor:
    """negCLIPLoss of each pair `(text_i, image_i)` of one batch, the batch's other pairs as negatives.

    Args:
        text_embeds: `(B, D)` unit-norm caption embeddings.
        image_embeds: `(B, D)` unit-norm image embeddings; row i is caption i's image.
        tau: the temperature.
        text_masks: `(B, D)` 0/1 caption masks, needed by `scoring="modular"`.
        scoring: `"plain"` (CLIP's cosine, the paper's) or `"modular"` (SmartCLIP's masked cosine, where the
            similarity of caption a and image b is `cos(image_b * mask_a, text_a)`).
        chunk_size: captions per block; one `(chunk_size, B)` block of similarities is built at a time.

    Returns:
        `(B,)` float32 scores, higher for a better pair.
    """
    size = len(text_embeds)
    image_embeds_squared = image_embeds.square() if scoring == "modular" else None
    positive = image_embeds.new_empty(size)
    text_lse = image_embeds.new_empty(size)  # log sum_j exp(S[i, j] / tau): caption i against every image
    image_lse = image_embeds.new_full((size,), -math.inf)  # log sum_j exp(S[j, i] / tau): image i, every caption
    for start in range(0, size, chunk_size):
        rows = slice(start, start + chunk_size)
        masks = None if text_masks is None else text_masks[rows]
        block = similarity(
            text_embeds[rows], image_embeds, masks, scoring, image_embeds_squared=image_embeds_squared
        )  # (chunk, B): caption start + r against every image
        positive[rows] = block.diagonal(offset=start)
        block /= tau
        text_lse[rows] = block.logsumexp(dim=1)
        # The image side sums over captions, i.e. down the columns: accumulated across caption blocks.
        image_lse = torch.logaddexp(image_lse, block.logsumexp(dim=0))
    return positive - tau / 2 * (text_lse + image_lse)


def random_batches(rows: np.ndarray, batch_size: int, generator: np.random.Generator) -> list[np.ndarray]:
    """`rows` shuffled and cut into `ceil(len / batch_size)` batches of near-equal size, each sorted.

    Near-equal rather than full batches plus a remainder (the paper's code): a small last batch would give its
    pairs a smaller normaliser and so a systematically higher score. Sorting a batch changes nothing in its scores
    and reads a memory-mapped array in file order.
    """
    num_batches = max(1, math.ceil(len(rows) / batch_size))
    return [np.sort(batch) for batch in np.array_split(generator.permutation(rows), num_batches)]


def neg_clip_loss(
    text_embeds: np.ndarray,
    image_embeds: np.ndarray,
    rows: np.ndarray,
    out: np.ndarray,
    tau: float = 0.01,
    batch_size: int = 32768,
    num_batchings: int = 10,
    seed: int = 0,
    text_masks: np.ndarray | None = None,
    scoring: str = "plain",
    chunk_size: int = 1024,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """negCLIPLoss of the pairs `rows`, averaged over `num_batchings` independent random batchings.

    Args:
        text_embeds, image_embeds: `(N, D)` unit-norm float32 arrays (memory-mapped or not).
        rows: `(n,)` indices of the pairs to score; the batches are drawn among them only.
        out: `(N,)` float32 array (e.g. a memory-mapped file) that receives the scores at `rows`; other rows are
            left as they are.
        batch_size: `B`; with `B >= n` every batching is the whole set, so it is scored once.
        seed: the batchings' seed: the same seed gives the same scores.
        text_masks: `(N, D)` 0/1 caption masks, for `scoring="modular"`.

    Returns:
        `out`.
    """
    if tau <= 0 or batch_size < 1 or num_batchings < 1:
        raise ValueError(
            f"tau={tau}, batch_size={batch_size}, num_batchings={num_batchings}; expected tau > 0 and batch_size, "
            "num_batchings >= 1."
        )
    if scoring == "modular" and text_masks is None:
        raise ValueError("scoring='modular' needs the caption masks (text_masks); got None.")
    if len(rows) <= batch_size:
        num_batchings = 1  # one batch holding every pair: each batching would give the same scores
    generator = np.random.default_rng(seed)
    out[rows] = 0.0
    for _ in range(num_batchings):
        for batch in random_batches(rows, batch_size, generator):
            load = lambda array: torch.from_numpy(np.asarray(array[batch], dtype=np.float32)).to(device)
            masks = load(text_masks) if scoring == "modular" else None
            scores = batch_neg_clip_loss(load(text_embeds), load(image_embeds), tau, masks, scoring, chunk_size)
            out[batch] += scores.cpu().numpy() / num_batchings
    return out


@torch.no_grad()
def norm_sim(
    image_embeds: np.ndarray,
    target_embeds: np.ndarray,
    rows: np.ndarray,
    out: np.ndarray,
    p: float = math.inf,
    chunk_size: int = 4096,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """NormSim_p of the images `rows` against the target images: `(sum_j |f_i.t_j|^p)^(1/p)`.

    Args:
        image_embeds: `(N, D)` unit-norm pool image embeddings (memory-mapped or not).
        target_embeds: `(m, D)` unit-norm target image embeddings, held in memory (target sets are small: a
            downstream task's images).
        rows, out: as in `neg_clip_loss`.
        p: `2` or `math.inf` (the max absolute dot product).

    Returns:
        `out`.
    """
    if p not in (2, math.inf):
        raise ValueError(f"p={p}; expected 2 or inf.")
    if len(target_embeds) == 0:
        raise ValueError("NormSim needs at least one target image embedding; got none.")
    target = torch.from_numpy(np.asarray(target_embeds, dtype=np.float32)).to(device)  # (m, D)
    for start in range(0, len(rows), chunk_size):
        chunk = rows[start : start + chunk_size]
        images = torch.from_numpy(np.asarray(image_embeds[chunk], dtype=np.float32)).to(device)  # (chunk, D)
        out[chunk] = torch.linalg.vector_norm(images @ target.T, ord=p, dim=1).cpu().numpy()  # (chunk,)
    return out


__all__ = ["batch_neg_clip_loss", "neg_clip_loss", "norm_sim", "random_batches"]
