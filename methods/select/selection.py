"""Exact top-k selection over score arrays too large for memory, and the two-stage negCLIPLoss -> NormSim filter.

Each pool row gets a decision code (`DECISIONS`), stored in a `(N,)` uint8 array (a memory-mapped file for a large
pool). The top-k cut is found by a radix select on the scores' bits: two passes of a 65,536-bin histogram over the
array, read in chunks, so memory does not grow with the pool and the cut is exact. Ties at the cut are broken by
row order (the earlier row is kept), so exactly `k` rows are kept and the same inputs always keep the same rows.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from smartclip_data.sources import DROP_REASONS

# Decision codes (indices of DECISIONS): kept, skipped before scoring for a training-data drop reason, or dropped by
# one of the two stages.
DECISIONS = ("kept", *DROP_REASONS, "dropped by negCLIPLoss", "dropped by NormSim")
KEPT = 0
UNREADABLE_IMAGE = DECISIONS.index("unreadable image")
EMPTY_CAPTION = DECISIONS.index("empty caption")
INVALID_CAPTION = DECISIONS.index("invalid caption")
DROPPED_NEG_CLIP_LOSS, DROPPED_NORM_SIM = DECISIONS.index("dropped by negCLIPLoss"), DECISIONS.index("dropped by NormSim")
CHUNK_ROWS = 1 << 20
_BITS = 16  # bits per radix pass: 2 passes over float32 keys, 65,536 bins each


def chunks(size: int, chunk_rows: int = CHUNK_ROWS) -> Iterator[slice]:
    for start in range(0, size, chunk_rows):
        yield slice(start, min(start + chunk_rows, size))


def target_count(fraction: float, size: int) -> int:
    """`round(fraction * size)`, halves rounded up: the number of rows a fraction keeps."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction={fraction}; expected a number from 0 to 1.")
    return int(np.floor(fraction * size + 0.5))


def _sortable_keys(values: np.ndarray) -> np.ndarray:
    """uint32 keys ordered as the float32 `values` are: flip every bit of a negative float, the sign bit of the rest."""
    bits = (values + np.float32(0)).view(np.uint32)  # + 0 turns -0.0 into 0.0, which compares equal to it
    return np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31))


def _key_value(key: int) -> float:
    bits = np.uint32(key ^ (1 << 31)) if key >> 31 else np.uint32(~np.uint32(key))
    return float(bits.view(np.float32))


@dataclass(frozen=True)
class Cut:
    """Keeps the rows whose value is above `threshold`, and the first `ties` rows (in row order) equal to it."""

    threshold: float
    ties: int


def top_k_cut(
    values: np.ndarray, k: int, eligible: Callable[[slice], np.ndarray], chunk_rows: int = CHUNK_ROWS
) -> Cut:
    """The `Cut` that keeps exactly the `k` largest of the eligible `values`.

    Args:
        values: `(N,)` float32 scores, memory-mapped or not.
        k: how many to keep, at most the number of eligible rows.
        eligible: `rows -> (len(rows),) bool` for a slice of rows; others are neither counted nor kept.
    """
    if values.dtype != np.float32:
        raise ValueError(f"scores of dtype {values.dtype}; expected float32.")
    if k == 0:
        return Cut(np.inf, 0)
    prefix, above = 0, 0  # the key bits found so far, and how many eligible values lie above their range
    for shift in (_BITS, 0):
        histogram = np.zeros(1 << _BITS, dtype=np.int64)
        for rows in chunks(len(values), chunk_rows):
            keys = _sortable_keys(np.asarray(values[rows])[eligible(rows)])
            if shift == 0:
                keys = keys[keys >> _BITS == prefix >> _BITS]
            histogram += np.bincount((keys >> shift) & ((1 << _BITS) - 1), minlength=1 << _BITS)
        from_top = np.cumsum(histogram[::-1])  # from_top[i]: values in the top i + 1 bins
        position = int(np.searchsorted(from_top, k - above))  # the first bin that reaches k
        if position == len(from_top):
            raise ValueError(f"k={k} but only {above + int(from_top[-1])} rows are eligible.")
        bin_index = (1 << _BITS) - 1 - position
        above += int(from_top[position] - histogram[bin_index])
        prefix |= bin_index << shift
    return Cut(_key_value(prefix), k - above)


def apply_cut(
    values: np.ndarray, cut: Cut, decisions: np.ndarray, dropped: int, chunk_rows: int = CHUNK_ROWS
) -> int:
    """Marks every kept row that `cut` does not keep as `dropped` in `decisions`; returns how many stay kept."""
    ties_left, kept = cut.ties, 0
    for rows in chunks(len(values), chunk_rows):
        block = np.asarray(values[rows])
        eligible = np.asarray(decisions[rows]) == KEPT
        keep = eligible & (block > cut.threshold)
        ties = np.flatnonzero(eligible & (block == cut.threshold))[:ties_left]
        keep[ties] = True
        ties_left -= len(ties)
        decisions[rows] = np.where(eligible & ~keep, dropped, decisions[rows])
        kept += int(keep.sum())
    return kept


def select(
    decisions: np.ndarray,
    neg_clip_loss: np.ndarray,
    fraction: float,
    norm_sim: np.ndarray | None = None,
    fraction_norm_sim: float | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> dict:
    """The two-stage selection, in place on `decisions` (KEPT for every usable row on entry).

    Keeps the top `fraction` of the usable rows by negCLIPLoss, then, within them, the top by NormSim until
    `fraction_norm_sim` of the usable rows remain (the paper's fractions are both of the whole pool).

    Returns:
        `{"neg_clip_loss": Cut, "norm_sim": Cut | None, "usable": n, "kept": k}`.
    """
    usable = sum(int((np.asarray(decisions[rows]) == KEPT).sum()) for rows in chunks(len(decisions), chunk_rows))
    is_kept = lambda rows: np.asarray(decisions[rows]) == KEPT
    cut = top_k_cut(neg_clip_loss, target_count(fraction, usable), is_kept, chunk_rows)
    kept = apply_cut(neg_clip_loss, cut, decisions, DROPPED_NEG_CLIP_LOSS, chunk_rows)
    result = {"neg_clip_loss": cut, "norm_sim": None, "usable": usable, "kept": kept}
    if fraction_norm_sim is not None:
        if norm_sim is None:
            raise ValueError("fraction_norm_sim is set but there are no NormSim scores (no target set).")
        if fraction_norm_sim > fraction:
            raise ValueError(f"fraction_norm_sim={fraction_norm_sim} > fraction={fraction}; expected at most it.")
        k = min(target_count(fraction_norm_sim, usable), kept)
        result["norm_sim"] = top_k_cut(norm_sim, k, is_kept, chunk_rows)
        result["kept"] = apply_cut(norm_sim, result["norm_sim"], decisions, DROPPED_NORM_SIM, chunk_rows)
    return result


__all__ = [
    "Cut", "DECISIONS", "DROPPED_NEG_CLIP_LOSS", "DROPPED_NORM_SIM", "EMPTY_CAPTION", "INVALID_CAPTION", "KEPT",
    "UNREADABLE_IMAGE",
    "apply_cut", "chunks", "select", "target_count", "top_k_cut",
]
