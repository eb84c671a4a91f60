"""PNG plots of a run: training curves and the mask usage per concept."""

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt
import torch

from smartclip_data.scenes import COLOURS, SHAPES, SIZES, SLOTS


def plot_training_curves(log_histories: dict[str, list[dict]], path: str, key: str = "loss") -> None:
    """One line per run: `key` against the training step, from each Trainer's `state.log_history`."""
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, history in log_histories.items():
        points = [(entry["step"], entry[key]) for entry in history if key in entry]
        if points:
            axis.plot(*zip(*points), label=name)
    axis.set_xlabel("training step")
    axis.set_ylabel(key)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def concept_mask_usage(masks: torch.Tensor, sentences: list[str]) -> tuple[list[str], torch.Tensor]:
    """Mean mask of the sentences that mention each concept of the built-in scenes.

    Args:
        masks: `(n_sentences, D)` binary masks of one-object sentences.
        sentences: the sentences, e.g. "a large red circle at the top left.".

    Returns:
        `(concepts, usage)` with `usage` of shape `(n_concepts, D)`, each row in [0, 1].
    """
    concepts = [*COLOURS, *SHAPES, *SIZES, *SLOTS]
    rows = []
    for concept in concepts:
        mentions = torch.tensor([f" {concept} " in f" {sentence.rstrip('.')} " for sentence in sentences])
        rows.append(masks[mentions].float().mean(dim=0) if mentions.any() else masks.new_zeros(masks.shape[1]))
    return concepts, torch.stack(rows)


def plot_mask_usage(masks: torch.Tensor, sentences: list[str], path: str, title: str = "") -> None:
    """Heatmap: concepts x embedding dimensions, the share of sentences naming the concept that switch a dim on."""
    concepts, usage = concept_mask_usage(masks, sentences)
    figure, axis = plt.subplots(figsize=(max(6, usage.shape[1] / 8), 4))
    image = axis.imshow(usage.cpu().numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1)
    axis.set_yticks(range(len(concepts)), concepts, fontsize=7)
    axis.set_xlabel("embedding dimension")
    axis.set_title(title or "mask usage per concept", fontsize=9)
    figure.colorbar(image, ax=axis, fraction=0.03)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


__all__ = ["concept_mask_usage", "plot_mask_usage", "plot_training_curves"]
