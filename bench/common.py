"""What every benchmark shares: threads, the machine line, timing, peak memory, goals, result rows, JSON.

A figure is the median of `repeats` timed runs after `warmup` untimed ones, reported with its min and max. When two
things are compared (SmartCLIP and CLIP), their runs alternate, so that load from other processes on a shared
machine falls on both sides alike.
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"


# ----- set-up ---------------------------------------------------------------------------------------------------------


def fix_threads(threads: int) -> int:
    """Pins torch's intra-op thread count and prints it (every figure depends on it)."""
    if threads < 1:
        raise ValueError(f"threads={threads}; expected a positive number of CPU threads.")
    torch.set_num_threads(threads)
    print(f"torch threads: {torch.get_num_threads()} (of {os.cpu_count()} CPUs)")
    return torch.get_num_threads()


def resolve_device(device: str) -> torch.device:
    """`"auto"` picks CUDA when available, else CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}; expected 'auto', 'cpu' or 'cuda'.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch sees no CUDA device.")
    return torch.device(device)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    """The machine a run was measured on, as recorded next to every figure."""
    info = {
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(terse=True),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def machine_line(info: dict) -> str:
    where = info.get("gpu", f"{info['cpu']}, {info['torch_threads']} of {info['cpu_count']} CPU threads")
    return f"{where}; torch {info['torch']}, transformers {info['transformers']}, Python {info['python']}"


def parser(description: str) -> argparse.ArgumentParser:
    """Arguments every benchmark takes; scripts add their own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats: checks the script, not speed")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu' or 'cuda'")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per figure (default: the script's)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    p.add_argument("--out", type=Path, default=None, help="where to write this benchmark's JSON")
    return p


# ----- measuring ------------------------------------------------------------------------------------------------------


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


# ----- reporting ------------------------------------------------------------------------------------------------------


@dataclass
class Goal:
    """A target for a ratio (ours / baseline): `at_most` for costs (time, memory), `at_least` for throughputs."""

    target: float
    at_most: bool = True

    def __str__(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self.target:g}"

    def status(self, ratio: float) -> str:
        """`"met, 0.02 to spare"` or `"missed by 0.04"`: how far the ratio is from the target."""
        gap = self.target - ratio if self.at_most else ratio - self.target
        return f"met, {gap:.3g} to spare" if gap >= 0 else f"missed by {-gap:.3g}"


def memory_figure(memory: Memory) -> Figure:
    """A single memory measurement as a figure in MiB (it does not vary between runs, so it is measured once)."""
    mib = memory.peak_bytes / 2**20
    return Figure(mib, mib, mib, "MiB", 1)


def row(name: str, ours: Figure, baseline: Figure | None = None, goal: Goal | None = None, **extra) -> dict:
    """One result row: our figure, the baseline's, their ratio of medians and how far it is from `goal`.

    Prints the row as it is made, so a long run shows progress.
    """
    ratio = ours.median / baseline.median if baseline is not None else None
    cpu_ratio = None
    if baseline is not None and ours.cpu_median and baseline.cpu_median:
        cpu_ratio = ours.cpu_median / baseline.cpu_median
    result = {
        "name": name,
        "ours": asdict(ours),
        "baseline": asdict(baseline) if baseline is not None else None,
        "ratio": ratio,
        "cpu_time_ratio": cpu_ratio,
        "goal": str(goal) if goal is not None else None,
        "met": None if goal is None or ratio is None else goal.status(ratio).startswith("met"),
        "status": goal.status(ratio) if goal is not None and ratio is not None else None,
        **extra,
    }
    line = f"  {name}: {ours}"
    if baseline is not None:
        line += f" vs {baseline} -> ratio {ratio:.3f}"
        if cpu_ratio is not None:
            line += f" (CPU-time ratio {cpu_ratio:.3f})"
    if result["status"]:
        line += f" (goal {goal}: {result['status']})"
    if extra.get("detail"):
        line += f"\n    {extra['detail']}"
    print(line, flush=True)
    return result


def section(
    name: str,
    title: str,
    device: torch.device,
    settings: dict,
    rows: list[dict],
    notes: list[str],
    labels: tuple[str, str] = ("SmartCLIP", "CLIP"),
) -> dict:
    """A benchmark's whole result: what was measured, where, with which settings, and the rows; `labels` name the
    two sides of each row's ratio."""
    return {
        "name": name,
        "title": title,
        "machine": machine(device),
        "settings": settings,
        "labels": list(labels),
        "rows": rows,
        "notes": notes,
    }


def _cell(figure: dict | None) -> str:
    if figure is None:
        return ""
    spread = f" [{figure['min']:.4g}, {figure['max']:.4g}]" if figure["repeats"] > 1 else ""
    return f"{figure['median']:.4g}{spread} {figure['unit']}"


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _table(table: dict[str, dict]) -> list[str]:
    """A `{row: {column: value}}` mapping as markdown table lines."""
    columns = list(dict.fromkeys(column for values in table.values() for column in values))
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, values in table.items():
        cells = [f"{values[c]:.3g}" if isinstance(values.get(c), float) else str(values.get(c, "")) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def markdown(sections: list[dict]) -> str:
    """The results as markdown: the machine line, then per benchmark a table (median [min, max]) and its notes."""
    lines = []
    if sections:
        lines += [f"Machine: {machine_line(sections[0]['machine'])}.", ""]
    for result in sections:
        lines += [f"### {result['title']}", ""]
        figures = [r for r in result["rows"] if "ours" in r]
        if figures:
            ours, baseline = result["labels"]
            lines += [
                f"| figure | {ours} | {baseline} | ratio | CPU-time ratio | FLOP ratio | goal | status |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for r in figures:
                detail = f" ({r['detail']})" if r.get("detail") else ""
                lines.append(
                    f"| {r['name']}{detail} | {_cell(r['ours'])} | {_cell(r['baseline'])} | {_number(r['ratio'])} | "
                    f"{_number(r.get('cpu_time_ratio'))} | {_number(r.get('flop_ratio'))} | {r['goal'] or ''} | "
                    f"{r['status'] or ''} |"
                )
            lines.append("")
        for r in result["rows"]:
            if "final" in r:
                lines.append(f"- {r['name']}: `{r['plot']}`; last (step, value) per run: {r['final']}")
            if "table" in r:
                lines += [f"- {r['name']}: `{r['plot']}`", "", *_table(r["table"]), ""]
        lines += [f"- {note}" for note in result["notes"]]
        lines.append("")
    return "\n".join(lines)


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def main_for(
    name: str, run: Callable[[argparse.Namespace], dict], arguments: argparse.ArgumentParser, argv=None
) -> dict:
    """A benchmark script's `main`: parse, fix threads, run, write `--out` (default `bench/out/<name>.json`)."""
    args = arguments.parse_args(argv)
    fix_threads(args.threads)
    result = run(args)
    write_json(args.out or OUT_DIR / f"{name}.json", result)
    return result


__all__ = [
    "BENCH_DIR", "OUT_DIR", "Figure", "Goal", "Memory", "count_flops", "fix_threads", "machine", "machine_line",
    "main_for", "markdown", "memory_figure", "parser", "peak_memory", "profile_difference", "resolve_device", "row",
    "saved_tensor_bytes", "section", "synchronize", "time_runs", "write_json",
]
