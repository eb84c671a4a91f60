"""Gathering features from every rank, so that a contrastive loss sees the global batch.

Each rank computes the same loss on the gathered `(global_batch, D)` features. The all-gather from
`torch.distributed.nn.functional` is differentiable: its backward sums, into each rank's own rows, the gradients
that every rank's (identical) loss sends to them. That sum is `world_size` times the true gradient of those rows,
and DDP's averaging over ranks divides it back, so the update equals one process training on the whole batch.
"""

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F


def world_size() -> int:
    """Number of processes in the default group; 1 when `torch.distributed` is not initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_features(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Concatenates each `(local_batch, ...)` tensor over all ranks, in rank order, keeping autograd.

    All tensors must share their first dimension on a rank. Ranks may hold different batch sizes (the last batch of
    a stream, say): rows are padded to the largest size for the collective and the padding is cut off again.
    Returns the inputs unchanged in a single process.
    """
    if world_size() == 1:
        return tensors
    local_size = torch.tensor([len(tensors[0])], device=tensors[0].device)
    sizes = [torch.zeros_like(local_size) for _ in range(world_size())]
    dist.all_gather(sizes, local_size)
    sizes = [int(size) for size in sizes]
    largest = max(sizes)
    gathered = []
    for tensor in tensors:
        padding = [0, 0] * (tensor.dim() - 1) + [0, largest - len(tensor)]  # F.pad lists the last dim first
        parts = dist_nn.all_gather(F.pad(tensor, padding))
        gathered.append(torch.cat([part[:size] for part, size in zip(parts, sizes)]))
    return tuple(gathered)


__all__ = ["gather_features", "world_size"]
