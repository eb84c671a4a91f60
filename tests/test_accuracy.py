"""`smartclip_experiments.accuracy`: the metric-vs-step plots of a `smartclip-compare` results file."""

import json
from pathlib import Path

from smartclip_experiments import accuracy


def fake_compare_results(path: Path) -> Path:
    """A `smartclip-compare` results file: two arms with their Trainer log histories and final evaluations."""
    history = lambda losses: [{"step": 10 * (i + 1), "loss": loss, "epoch": i} for i, loss in enumerate(losses)]
    results = {
        "settings": {"seed": 0},
        "scratch/smartclip": {
            "log_history": history([3.0, 2.0, 1.5]) + [{"step": 30, "eval_loss": 1.7}],
            "plain": {"scenes_long/image_retrieval_recall@1": 0.1, "scenes_atomic/acc": 0.3},
            "modular": {"scenes_long/image_retrieval_recall@1": 0.6, "scenes_atomic/acc": 0.7},
        },
        "scratch/clip": {
            "log_history": history([3.1, 2.6, 2.2]), "plain": {"scenes_long/image_retrieval_recall@1": 0.2},
        },
    }
    path.write_text(json.dumps(results))
    return path


def test_plots_read_both_runs_log_histories(tmp_path):
    results_file = fake_compare_results(tmp_path / "compare.json")
    result = accuracy.main(["--results", str(results_file), "--plots", str(tmp_path / "plots")])
    result = json.loads((tmp_path / "plots" / "accuracy.json").read_text())
    plots = {row["name"]: row for row in result["rows"]}
    assert set(plots) == {"loss vs training step", "eval_loss vs training step", "test metrics at the last step"}
    assert plots["loss vs training step"]["final"] == {"scratch/smartclip": [30, 1.5], "scratch/clip": [30, 2.2]}
    assert plots["test metrics at the last step"]["table"] == {
        "scratch/smartclip": {
            "steps": 30, "plain/scenes_long/image_retrieval_recall@1": 0.1, "plain/scenes_atomic/acc": 0.3,
            "modular/scenes_long/image_retrieval_recall@1": 0.6, "modular/scenes_atomic/acc": 0.7,
        },
        "scratch/clip": {"steps": 30, "plain/scenes_long/image_retrieval_recall@1": 0.2},
    }
    assert all(Path(row["plot"]).read_bytes()[:4] == b"\x89PNG" for row in plots.values())


def test_skips_without_results(tmp_path):
    result = accuracy.run(accuracy.arguments().parse_args(["--results", str(tmp_path / "missing.json")]))
    assert result["rows"] == []
    assert result["notes"][0].startswith("skipped:")
