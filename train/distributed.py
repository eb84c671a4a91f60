"""Multi-process plumbing: gathering features from every rank, so that a contrastive loss sees the global batch, and
starting and ending process groups so that no run, test or benchmark can hang.

With the global loss, each rank computes the same loss on the gathered `(global_batch, D)` features; with the local
loss (`modeling_smartclip.losses`), each rank scores its own rows against the gathered ones. Either way the gather
is differentiable: its backward sums, into each rank's own rows, the gradients that every rank's loss sends to
them, and DDP's averaging over ranks turns that sum into the gradient of the global loss (for the global loss,
the sum is `world_size` times the true gradient of the rows, and the averaging divides it back), so the update
equals one process training on the whole batch.

Ending a group: a gloo group freed while one of its collectives is still being released (DDP's `Reducer` freed at
interpreter exit, say) can deadlock, its destructor waiting for a worker thread that waits for the GIL. `shut_down`
frees what holds the group and waits for every rank's pending work before destroying it; `spawn` bounds the wait for
spawned ranks.
"""

import contextlib
import datetime
import gc
import time
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F


def world_size() -> int:
    """Number of processes in the default group; 1 when `torch.distributed` is not initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _AllGather(torch.autograd.Function):
    """`all_gather` with a backward: each rank gets the sum over ranks of the gradients of its own slot.

    `torch.distributed.nn.functional.all_gather` is deprecated in torch 2.13 in favour of
    `torch.distributed._functional_collectives`, a private module whose backward needs `reduce_scatter`; this works
    on every backend (gloo included) with the public `all_gather` and `all_reduce`.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)  # (world_size * n, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss sends gradients to every slot
        return grad.chunk(world_size())[dist.get_rank()]


def _sizes(local_size: int, device: torch.device) -> list[int]:
    """The first-dimension size on every rank, in rank order."""
    size = torch.tensor([local_size], device=device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    return [int(s) for s in sizes]


def gather_features(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Concatenates each `(local_batch, ...)` tensor over all ranks, in rank order, keeping autograd.

    All tensors must share their first dimension on a rank. Ranks may hold different batch sizes (the last batch of
    a stream, say): rows are padded to the largest size for the collective and the padding is cut off again.
    Returns the inputs unchanged in a single process.
    """
    if world_size() == 1:
        return tensors
    sizes = _sizes(len(tensors[0]), tensors[0].device)
    largest = max(sizes)
    gathered = []
    for tensor in tensors:
        padding = [0, 0] * (tensor.dim() - 1) + [0, largest - len(tensor)]  # F.pad lists the last dim first
        parts = _AllGather.apply(F.pad(tensor, padding)).split(largest)
        gathered.append(torch.cat([part[:size] for part, size in zip(parts, sizes)]))
    return tuple(gathered)


def rank_offset(local_size: int, device: torch.device) -> int:
    """Index of this rank's first row in `gather_features`' output (the local loss's label offset); 0 in a single
    process."""
    if world_size() == 1:
        return 0
    return sum(_sizes(local_size, device)[: dist.get_rank()])


def shut_down() -> None:
    """Ends this process's part in the default group, if there is one, in a way that cannot deadlock.

    Call it on every rank once the work is done, outside the frames holding the `DistributedDataParallel` model (a
    Trainer keeps it in reference cycles, hence the collection). The barrier waits for every rank's pending
    collectives, so no rank tears its group down while another still talks to it.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()  # the DDP Reducer (and the Trainer's cycles holding it) goes before the group it holds
    dist.barrier()
    dist.destroy_process_group()


@contextlib.contextmanager
def process_group(rank: int, world_size: int, port: int, timeout: float = 120.0) -> Iterator[None]:
    """A gloo group of `world_size` processes on this machine, ended by `shut_down` when the block succeeds.

    A collective that waits longer than `timeout` seconds for another rank raises instead of waiting forever. Keep
    the DDP model inside a function called in the block, so that it is freed before the group goes.
    """
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout))
    try:
        yield
        shut_down()
    finally:
        if dist.is_initialized():  # the block failed: no barrier, the other ranks may be anywhere
            dist.destroy_process_group()


def spawn(fn: Callable, args: tuple, nprocs: int, timeout: float) -> None:
    """`torch.multiprocessing.spawn(fn, args, nprocs)` that ends within `timeout` seconds: ranks still running then
    are killed and `TimeoutError` names them; a rank that fails stops the others and raises, as `spawn` does."""
    context = mp.spawn(fn, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(deadline - time.monotonic(), 0.0)):
        if time.monotonic() >= deadline:
            running = [rank for rank, process in enumerate(context.processes) if process.is_alive()]
            for process in context.processes:
                process.kill()
                process.join()
            raise TimeoutError(f"ranks {running} of {fn.__name__} still running after {timeout:.0f} s; killed.")


__all__ = ["gather_features", "process_group", "rank_offset", "shut_down", "spawn", "world_size"]
