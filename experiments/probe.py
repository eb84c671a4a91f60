"""A linear probe of frozen image embeddings: what the image side keeps, whatever the text side does with it.

SmartCLIP's theory says the image embedding keeps the union of the concepts that any caption mentions. On the
built-in scenes that is checkable directly: from the image embedding alone, a linear classifier per slot must tell
which shape and which colour sits there, or that the slot is empty. A model that forgot a concept (Direct FT's
damage) loses it here too, whatever scoring its texts use.
"""

import torch
import torch.nn.functional as F

from smartclip_data.scenes import COLOURS, SHAPES, SLOTS
from smartclip_data.sources import load_image

# Per slot, two attributes; class 0 of each is "empty slot".
PROBE_ATTRIBUTES = {"shape": ("empty", *SHAPES), "colour": ("empty", *COLOURS)}


def scene_slot_labels(objects_per_scene: list[list[dict]]) -> torch.Tensor:
    """`(n_scene, n_slot, 2)` long: per scene and slot, the index of the object's shape and of its colour in
    `PROBE_ATTRIBUTES` (0 for an empty slot)."""
    labels = torch.zeros(len(objects_per_scene), len(SLOTS), len(PROBE_ATTRIBUTES), dtype=torch.long)
    for scene, objects in enumerate(objects_per_scene):
        for obj in objects:
            slot = SLOTS.index(obj["slot"])
            for a, (attribute, classes) in enumerate(PROBE_ATTRIBUTES.items()):
                labels[scene, slot, a] = classes.index(obj[attribute])
    return labels


def fit_linear_probe(
    train_embeds: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    weight_decay: float = 1e-3,
    max_iter: int = 200,
) -> torch.nn.Linear:
    """Multinomial logistic regressions, one per task, on standardised features, fitted to convergence with L-BFGS.

    Args:
        train_embeds: `(n, D)` features.
        train_labels: `(n, n_task)` long, each in `[0, num_classes)`.
        num_classes: classes per task.
        weight_decay: L2 penalty on the weights (keeps the fit finite on separable data).

    Returns:
        A `Linear(D, n_task * num_classes)` that maps features standardised with the training mean and standard
        deviation (see `linear_probe`) to the tasks' logits.
    """
    n_task = train_labels.shape[1]
    probe = torch.nn.Linear(train_embeds.shape[1], n_task * num_classes, dtype=train_embeds.dtype)
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = probe(train_embeds).reshape(len(train_embeds) * n_task, num_classes)  # (n * n_task, C)
        loss = F.cross_entropy(logits, train_labels.reshape(-1)) + weight_decay * probe.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe


def linear_probe(
    train_embeds: torch.Tensor, train_labels: torch.Tensor, test_embeds: torch.Tensor, test_labels: torch.Tensor,
    num_classes: int,
) -> torch.Tensor:
    """Fits `fit_linear_probe` on the training pairs and returns each task's test accuracy: `(n_task,)`.

    Features are standardised with the training set's mean and standard deviation, so the L2 penalty weighs every
    dimension alike whatever the embedding's scale.
    """
    if train_labels.dim() != 2 or test_labels.shape[1:] != train_labels.shape[1:]:
        raise ValueError(
            f"labels of shape {tuple(train_labels.shape)} (train) and {tuple(test_labels.shape)} (test); expected "
            "(n, n_task) each, with the same tasks."
        )
    mean, std = train_embeds.mean(dim=0), train_embeds.std(dim=0).clamp_min(1e-6)
    with torch.enable_grad():
        probe = fit_linear_probe((train_embeds - mean) / std, train_labels, num_classes)
    with torch.no_grad():
        logits = probe((test_embeds - mean) / std).reshape(len(test_embeds), -1, num_classes)  # (n, n_task, C)
    return (logits.argmax(dim=-1) == test_labels).float().mean(dim=0)


@torch.no_grad()
def image_embeddings(model, processor, images, batch_size: int = 256) -> torch.Tensor:
    """Unit-norm image embeddings `(n, D)` of `images` (anything `load_image` reads), in float32 on the CPU."""
    embeds = []
    for start in range(0, len(images), batch_size):
        batch = [load_image(image) for image in images[start : start + batch_size]]
        pixel_values = processor(images=batch, return_tensors="pt")["pixel_values"].to(model.device, model.dtype)
        features = model.get_image_features(pixel_values=pixel_values).pooler_output  # (b, D)
        embeds.append((features / features.norm(dim=-1, keepdim=True)).float().cpu())
    return torch.cat(embeds)


def scene_probe(model, processor, train_split, test_split) -> dict[str, float]:
    """The slot probe on a scenes model: fitted on `train_split`'s image embeddings, scored on `test_split`'s.

    Returns `{"shape_acc", "colour_acc"}`, each the test accuracy averaged over the slots (5 classes: empty or one
    of 4 values; always answering "empty", the commonest class, scores about 0.25).
    """
    was_training = model.training
    model.eval()
    try:
        train_embeds = image_embeddings(model, processor, train_split["image"])
        test_embeds = image_embeddings(model, processor, test_split["image"])
    finally:
        model.train(was_training)
    train_labels = scene_slot_labels(train_split["objects"]).flatten(1)  # (n, n_slot * 2), slot-major
    test_labels = scene_slot_labels(test_split["objects"]).flatten(1)
    num_classes = max(len(classes) for classes in PROBE_ATTRIBUTES.values())
    accuracy = linear_probe(train_embeds, train_labels, test_embeds, test_labels, num_classes)
    accuracy = accuracy.reshape(len(SLOTS), len(PROBE_ATTRIBUTES)).mean(dim=0)  # (2,): mean over slots
    return {f"{attribute}_acc": value.item() for attribute, value in zip(PROBE_ATTRIBUTES, accuracy)}


__all__ = ["PROBE_ATTRIBUTES", "fit_linear_probe", "image_embeddings", "linear_probe", "scene_probe",
           "scene_slot_labels"]
