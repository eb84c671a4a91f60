"""Measuring: timed runs, peak memory, FLOPs, what autograd saves, and where the time goes.

A figure is the median of `repeats` timed runs after `warmup` untimed ones, reported with its min and max. When two
things are compared (SmartCLIP and CLIP), their runs alternate, so that load from other processes on a shared
machine falls on both sides alike.
"""

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count


@dataclass
class Figure:
    """A measured quantity: median, min and max over the repeats, in `unit`."""

    median: float
    min: float
    max: float
    unit: str
    repeats: int
    cpu_median: float | None = None  # the median in process CPU time, which other processes' load disturbs less

    def rate(self, items: float, unit: str) -> "Figure":
        """Seconds per run turned into `items` per second (min and max swap)."""
        cpu = items / self.cpu_median if self.cpu_median else None
        return Figure(items / self.median, items / self.max, items / self.min, unit, self.repeats, cpu)

    def __str__(self) -> str:
        return f"{self.median:.4g} {self.unit} [{self.min:.4g}, {self.max:.4g}]"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(
    runs: dict[str, Callable[[], object]], repeats: int, warmup: int = 1, device: torch.device | None = None
) -> dict[str, Figure]:
    """Seconds per call of each function, their calls interleaved (the order reversed every other round): `warmup`
    untimed rounds, then `repeats` timed ones.

    Wall-clock time is the figure; the process's CPU time is kept beside it (`cpu_median`).
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats}; expected at least 1 timed run.")
    device = device or torch.device("cpu")
    wall = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    for round_index in range(warmup + repeats):
        order = list(runs.items()) if round_index % 2 == 0 else list(runs.items())[::-1]  # neither always goes first
        for name, fn in order:
            synchronize(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            synchronize(device)
            if round_index >= warmup:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - cpu_start)
    return {
        name: Figure(statistics.median(s), min(s), max(s), "s", len(s), statistics.median(cpu[name]))
        for name, s in wall.items()
    }


@dataclass
class Memory:
    """Peak bytes torch allocated above the starting level, and the largest single allocation (CPU only)."""

    peak_bytes: int
    largest_allocation_bytes: int | None


def peak_memory(fn: Callable[[], object], device: torch.device) -> Memory:
    """Peak bytes that torch allocates on `device` while `fn` runs, above what was allocated before it.

    CUDA: `torch.cuda.max_memory_allocated`. CPU: torch's profiler reports every CPU allocation and free of a tensor
    (`profile_memory=True`: the `[memory]` events of its trace, `Bytes` > 0 for an allocation and < 0 for a free);
    their running sum, in time order, peaks at the answer, and the largest positive one is the largest tensor made.
    Tensors that `fn` returns stay counted.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del result
        return Memory(peak, None)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profiler:
        result = fn()
    del result
    with tempfile.TemporaryDirectory() as folder:
        trace_path = Path(folder) / "trace.json"
        profiler.export_chrome_trace(str(trace_path))
        events = json.loads(trace_path.read_text())["traceEvents"]
    is_cpu_allocation = lambda e: e.get("name") == "[memory]" and e["args"].get("Device Type") == 0
    allocations = sorted((e["ts"], e["args"]["Bytes"]) for e in events if is_cpu_allocation(e))
    current = peak = largest = 0
    for _, size in allocations:
        current += size
        peak = max(peak, current)
        largest = max(largest, size)
    return Memory(peak, largest)


def profile_difference(runs: dict[str, Callable[[], object]], calls: int = 2, top: int = 8) -> list[dict]:
    """Where the time of the first run goes beyond the second's: torch.profiler's self CPU time per operator, summed
    over `calls` calls of each, and the `top` operators whose time grew the most (milliseconds per call)."""
    if len(runs) != 2:
        raise ValueError(f"profile_difference compares two runs; got {len(runs)}: {list(runs)}.")
    per_op = []
    for fn in runs.values():
        fn()  # warm-up outside the profile
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            for _ in range(calls):
                fn()
        per_op.append({e.key: (e.self_cpu_time_total / 1e3 / calls, e.count // calls) for e in profiler.key_averages()})
    ours, baseline = per_op
    rows = [
        {
            "op": op,
            "ms_ours": round(ours.get(op, (0.0, 0))[0], 2),
            "ms_baseline": round(baseline.get(op, (0.0, 0))[0], 2),
            "calls_ours": ours.get(op, (0.0, 0))[1],
            "calls_baseline": baseline.get(op, (0.0, 0))[1],
        }
        for op in set(ours) | set(baseline)
    ]
    rows.sort(key=lambda r: r["ms_baseline"] - r["ms_ours"])
    names = list(runs)
    print(f"  profile, self CPU ms per call, {names[0]} vs {names[1]} (largest increases):")
    for r in rows[:top]:
        calls = f"{r['calls_ours']} vs {r['calls_baseline']} calls"
        print(f"    {r['op']}: {r['ms_ours']} vs {r['ms_baseline']} ms ({calls})")
    return rows[:top]


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward_flops(grad_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_shape, query_shape, key_shape, value_shape)


# torch's counter knows the CUDA attention kernels only; the CPU flash kernel takes the same (B, H, T, d) shapes.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
}


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of the matrix products, convolutions and attention that `fn` runs (forward and
    backward), by `torch.utils.flop_counter`: exact, so it tells inherent extra work from noise and overhead.

    Call it with autograd enabled: under `no_grad` the counter's module tracking fails on SmartCLIP's attention
    pooling (torch 2.13).
    """
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        fn()
    return counter.get_total_flops()


def saved_tensor_bytes(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Runs `fn` under autograd and returns `(output, bytes)`, where `bytes` is what the graph keeps for backward:
    the sum over distinct storages of every tensor saved by the forward pass, plus the output's own storage."""
    storages = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = fn()
    storages[output.untyped_storage().data_ptr()] = output.untyped_storage().nbytes()
    return output, sum(storages.values())


__all__ = [
    "Figure", "Memory", "count_flops", "peak_memory", "profile_difference", "saved_tensor_bytes", "synchronize",
    "time_runs",
]
