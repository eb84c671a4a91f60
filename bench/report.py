"""Reporting: the machine a run was measured on, goals, result rows and sections, markdown and JSON."""

import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers

from .measure import Figure, Memory


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


__all__ = ["Goal", "machine", "machine_line", "markdown", "memory_figure", "row", "section", "write_json"]
