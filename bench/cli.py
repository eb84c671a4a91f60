"""What every benchmark script's command shares: its arguments, the thread count, and `main_for`."""

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import torch

from .report import write_json

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"


def fix_threads(threads: int) -> int:
    """Pins torch's intra-op thread count and prints it (every figure depends on it)."""
    if threads < 1:
        raise ValueError(f"threads={threads}; expected a positive number of CPU threads.")
    torch.set_num_threads(threads)
    print(f"torch threads: {torch.get_num_threads()} (of {os.cpu_count()} CPUs)")
    return torch.get_num_threads()


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


def main_for(
    name: str, run: Callable[[argparse.Namespace], dict], arguments: argparse.ArgumentParser, argv=None
) -> dict:
    """A benchmark script's `main`: parse, fix threads, run, write `--out` (default `bench/out/<name>.json`)."""
    args = arguments.parse_args(argv)
    fix_threads(args.threads)
    result = run(args)
    write_json(args.out or OUT_DIR / f"{name}.json", result)
    return result


__all__ = ["BENCH_DIR", "OUT_DIR", "fix_threads", "main_for", "parser"]
