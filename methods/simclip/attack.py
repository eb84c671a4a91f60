"""Sim-CLIP's training attack: l_inf PGD in `[0, 1]` pixel space that drives the student's embedding of `x + delta`
away from the frozen teacher's embedding of `x`.

As `pgd` of the released code (github.com/speedlab-git/SimCLIP at 2388a87, `train/pgd_train.py`, called from
`train/adversarial_training_simclip.py` with `mode='max'`): the objective is the squared L2 distance of the
unnormalised embeddings; each step takes the gradient's sign, accumulates it into a velocity with momentum and
takes the sign again, moves by `step_size`, and projects onto the eps ball and the pixel range. The random start
is uniform in the ball, as released, then clipped to the pixel range (the release evaluates its first step outside
`[0, 1]`).
"""

from collections.abc import Callable

import torch

from smartclip_eval.robust import check_attack


def pgd_embedding_attack(
    encode: Callable[[torch.Tensor], torch.Tensor],
    pixels: torch.Tensor,
    target: torch.Tensor,
    eps: float = 4 / 255,
    steps: int = 10,
    step_size: float = 1 / 255,
    momentum: float = 0.9,
    random_start: bool = True,
) -> torch.Tensor:
    """Adversarial pixels maximising `||encode(x_adv) - target||^2` per image.

    Args:
        encode: `(B, 3, H, W)` pixels in `[0, 1]` -> `(B, D)` embeddings (normalisation inside).
        pixels: `(B, 3, H, W)` clean images in `[0, 1]`.
        target: `(B, D)` the embeddings to move away from (the teacher's of `pixels`).

    Returns:
        `(B, 3, H, W)` detached, with `|x_adv - pixels|_inf <= eps` and values in `[0, 1]`. Each image's attack
        depends on that image alone (the distances are summed, and a sign step ignores the scale), so a batch split
        over processes is attacked as the whole batch would be.
    """
    check_attack(eps, steps, step_size, where="Sim-CLIP attack")
    pixels, target = pixels.detach(), target.detach()
    if eps == 0:
        return pixels
    delta = torch.zeros_like(pixels)
    if random_start:
        delta.uniform_(-eps, eps)
    delta = (pixels + delta).clamp(0, 1) - pixels
    velocity = torch.zeros_like(pixels)
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():  # also inside the trainer's no-grad evaluation
            distance = (encode(pixels + delta) - target).square().sum()
        (grad,) = torch.autograd.grad(distance, delta)
        velocity = (momentum * velocity + grad.nan_to_num().sign()).sign()
        delta = (delta.detach() + step_size * velocity).clamp(-eps, eps)
        delta = (pixels + delta).clamp(0, 1) - pixels
    return (pixels + delta).detach()


__all__ = ["pgd_embedding_attack"]
