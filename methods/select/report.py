"""The selection's report: score histograms with the cuts (PNG) and per-score summaries, read from the score arrays
in chunks."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a training machine
import matplotlib.pyplot as plt
import numpy as np

from .selection import KEPT, Cut, chunks

LABELS = {"neg_clip_loss": "negCLIPLoss", "norm_sim": "NormSim"}


def _usable_values(values: np.ndarray, decisions: np.ndarray, rows: slice, kept_only: bool = False) -> np.ndarray:
    block = np.asarray(decisions[rows])
    usable = block == KEPT if kept_only else np.isfinite(np.asarray(values[rows]))
    return np.asarray(values[rows])[usable]


def summary(values: np.ndarray, decisions: np.ndarray) -> dict[str, float] | None:
    """Count, mean, min and max of the scored rows (NaN marks rows that were not scored)."""
    count, total, low, high = 0, 0.0, np.inf, -np.inf
    for rows in chunks(len(values)):
        block = _usable_values(values, decisions, rows)
        if len(block):
            count, total = count + len(block), total + float(block.sum(dtype=np.float64))
            low, high = min(low, float(block.min())), max(high, float(block.max()))
    return {"count": count, "mean": total / count, "min": low, "max": high} if count else None


def histograms(scores: dict[str, np.ndarray], decisions: np.ndarray, cuts: dict[str, Cut | None], path: Path,
               bins: int = 60) -> Path:
    """One panel per score: every scored pair and the kept pairs, with the cut as a dashed line."""
    figure, axes = plt.subplots(1, len(scores), figsize=(5.5 * len(scores), 3.8), squeeze=False)
    for axis, (name, values) in zip(axes[0], scores.items()):
        stats = summary(values, decisions)
        if stats is None:
            continue
        edges = np.linspace(stats["min"], stats["max"] + 1e-9, bins + 1)
        scored, kept = np.zeros(bins, np.int64), np.zeros(bins, np.int64)
        for rows in chunks(len(values)):
            scored += np.histogram(_usable_values(values, decisions, rows), edges)[0]
            kept += np.histogram(_usable_values(values, decisions, rows, kept_only=True), edges)[0]
        axis.stairs(scored, edges, fill=True, color="0.8", label=f"scored ({scored.sum():,})")
        axis.stairs(kept, edges, fill=True, color="tab:blue", alpha=0.7, label=f"kept ({kept.sum():,})")
        cut = cuts.get(name)
        if cut is not None and np.isfinite(cut.threshold):
            axis.axvline(cut.threshold, color="tab:red", linestyle="--", label=f"cut {cut.threshold:.4g}")
        axis.set(xlabel=LABELS.get(name, name), ylabel="pairs", yscale="log")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


__all__ = ["histograms", "summary"]
