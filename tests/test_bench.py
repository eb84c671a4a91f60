"""The benchmarks: every script runs at a tiny size and writes valid results; the measuring helpers measure what they
say; the proposed faster variants compute exactly what the package computes. Nothing here asserts a speed."""

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
BENCHMARKS = ("train_step", "loss", "inference", "text_length", "scaling", "retrieval", "selection")


@pytest.fixture
def bench():
    """Imports a benchmark module by name, as `python -m bench.<name>` runs it."""
    return lambda name: importlib.import_module(f"bench.{name}")


def test_quick_run_writes_every_benchmark(tmp_path):
    out = tmp_path / "bench"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.run_all", "--quick", "--out-dir", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    assert results["quick"] is True
    sections = {section["name"]: section for section in results["benchmarks"]}
    assert tuple(sections) == BENCHMARKS
    for section in sections.values():
        assert {"title", "machine", "settings", "labels", "rows", "notes"} <= set(section)
        assert section["machine"]["torch_threads"] == 1
    for name in ("train_step", "loss", "inference", "text_length", "scaling", "retrieval"):
        rows = sections[name]["rows"]
        assert rows, name
        for row in rows:
            for side in ("ours", "baseline"):
                figure = row[side]
                assert figure["min"] <= figure["median"] <= figure["max"], (name, row["name"])
            assert math.isclose(row["ratio"], row["ours"]["median"] / row["baseline"]["median"])
            if row["goal"] is not None:
                assert row["status"].startswith("met" if row["met"] else "missed")

    # the scaling run compares the same training with one and two processes: the losses agree
    scaling = sections["scaling"]["rows"][0]
    assert len(scaling["losses_1_process"]) == len(scaling["losses_2_processes"]) >= 2
    assert scaling["first_loss_difference"] < 1e-5
    assert scaling["first_grad_norm_relative_difference"] < 1e-4
    # no (B, B, D) tensor: the largest allocation of the loss is far below the per-pair form's size
    for row in sections["loss"]["rows"]:
        if "largest_tensor_mib" in row:
            assert row["largest_tensor_mib"] < row["naive_pairwise_mib"] / 4
    markdown = (out / "results.md").read_text()
    assert markdown.startswith("Machine: ")
    assert markdown.count("| figure |") == len(BENCHMARKS)

    # re-running one benchmark keeps the others' results
    rerun = [sys.executable, "-m", "bench.run_all", "--quick", "--out-dir", str(out), "--only", "text_length"]
    assert subprocess.run(rerun, cwd=REPO, capture_output=True, text=True, timeout=120).returncode == 0
    rerun_sections = {s["name"]: s for s in json.loads((out / "results.json").read_text())["benchmarks"]}
    assert tuple(rerun_sections) == BENCHMARKS
    assert rerun_sections["loss"] == sections["loss"]


def test_peak_memory_sees_temporaries(bench):
    measure = bench("measure")

    def two_buffers_then_one():
        first = torch.ones(1_000_000)  # 4 MB
        second = first * 2  # 4 MB more while both live
        del first
        return second

    memory = measure.peak_memory(two_buffers_then_one, torch.device("cpu"))
    assert 8_000_000 <= memory.peak_bytes < 8_100_000
    assert memory.largest_allocation_bytes == 4_000_000


def test_saved_tensor_bytes_counts_distinct_storages(bench):
    measure = bench("measure")
    x = torch.randn(100, 10, requires_grad=True)
    output, saved = measure.saved_tensor_bytes(lambda: (x * x).sum())  # x saved twice: one storage
    assert output.shape == ()
    assert saved == x.untyped_storage().nbytes() + output.untyped_storage().nbytes()


def test_time_runs_interleaves_and_skips_warmup(bench):
    measure = bench("measure")
    calls = []
    figures = measure.time_runs({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=2)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]
    assert all(f.repeats == 3 and f.min <= f.median <= f.max for f in figures.values())
    with pytest.raises(ValueError, match="repeats=0"):
        measure.time_runs({"a": lambda: None}, repeats=0)


def test_goal_status(bench):
    report = bench("report")
    assert report.Goal(1.05).status(1.0).startswith("met")
    assert report.Goal(1.05).status(1.1) == "missed by 0.05"
    assert report.Goal(0.95, at_most=False).status(0.9) == "missed by 0.05"
    assert str(report.Goal(0.95, at_most=False)) == ">= 0.95"
