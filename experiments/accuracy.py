"""Accuracy per unit of compute. The one-command demo's SmartCLIP and CLIP runs, metric vs training step.

Reads `outputs/compare/results.json` (written by `smartclip-compare`: one entry per arm, e.g. `scratch/clip`, with the
Trainer's `log_history` and the final evaluation under each scoring, `plain` and `modular`) and writes PNGs:

- `accuracy_<key>.png`: each metric the Trainer logged (loss, mask density, any `eval_*`) against the training step,
  one line per arm (`smartclip_experiments.plots.plot_training_curves`);
- `accuracy_final.png`: the headline test metrics of each arm at its last step, per scoring.

Every arm of a stage trains the same towers on the same batches for the same steps, so a step is the same compute up to
the training-step ratio of `bench/train_step.py`. Without the results file the script says so and skips.

    python -m smartclip_experiments.accuracy [--results outputs/compare/results.json] [--plots outputs/accuracy]
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt

from modeling_smartclip.configuration_smartclip import SCORINGS
from smartclip_eval.tables import save_results

from .plots import plot_training_curves

TITLE = "Accuracy per unit of compute: metric vs training step"
DEFAULT_RESULTS = Path("outputs/compare/results.json")
BOOKKEEPING = {
    "step", "epoch", "learning_rate", "grad_norm", "total_flos", "train_runtime", "train_samples_per_second",
    "train_steps_per_second", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second",
}
HEADLINE = ("scenes_long/image_retrieval_recall@1", "scenes_zeroshot/acc1", "scenes_atomic/acc")


def find_runs(results, name: str = "") -> dict[str, dict]:
    """Every object holding a `log_history` list in a nested JSON object, keyed by the path of keys to it."""
    found = {}
    if isinstance(results, dict):
        if isinstance(results.get("log_history"), list):
            return {name or "run": results}
        for key, value in results.items():
            found.update(find_runs(value, f"{name}/{key}" if name else str(key)))
    elif isinstance(results, list):
        for index, value in enumerate(results):
            found.update(find_runs(value, f"{name}/{index}" if name else str(index)))
    return found


def logged_metrics(histories: dict[str, list[dict]]) -> list[str]:
    """The numeric keys logged with a step in any run, bookkeeping left out."""
    keys = {
        key for history in histories.values() for entry in history if "step" in entry
        for key, value in entry.items() if isinstance(value, (int, float)) and key not in BOOKKEEPING
    }
    return sorted(keys)


def last_value(history: list[dict], key: str) -> tuple[int, float] | None:
    points = [(entry["step"], entry[key]) for entry in history if key in entry and "step" in entry]
    return points[-1] if points else None


def final_evaluation(runs: dict[str, dict]) -> dict[str, dict]:
    """`{run: {"steps": n, "plain/<metric>": value, "modular/<metric>": value, ...}}` for the headline metrics."""
    table = {}
    for name, run in runs.items():
        steps = max((entry["step"] for entry in run["log_history"] if "step" in entry), default=0)
        values = {
            f"{scoring}/{metric}": run[scoring][metric]
            for scoring in SCORINGS if isinstance(run.get(scoring), dict)
            for metric in HEADLINE if metric in run[scoring]
        }
        if values:
            table[name] = {"steps": steps, **values}
    return table


def plot_final(table: dict[str, dict], path: Path) -> None:
    """One panel per headline metric: each run's value at its last step, one bar per scoring."""
    figure, axes = plt.subplots(1, len(HEADLINE), figsize=(4 * len(HEADLINE), 4), squeeze=False)
    names = list(table)
    for axis, metric in zip(axes[0], HEADLINE):
        for offset, scoring in enumerate(SCORINGS):
            values = [table[name].get(f"{scoring}/{metric}", 0.0) for name in names]
            axis.bar([i + 0.4 * offset for i in range(len(names))], values, width=0.4, label=scoring)
        axis.set_xticks([i + 0.2 for i in range(len(names))], [f"{n}\n({table[n]['steps']} steps)" for n in names],
                        rotation=60, fontsize=6)
        axis.set_title(metric, fontsize=9)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run(args) -> dict:
    results_path = args.results
    settings = {"results": str(results_path)}
    runs = find_runs(json.loads(results_path.read_text())) if results_path.exists() else {}
    if not runs:
        reason = "not found; run `smartclip-compare` first" if not results_path.exists() else "holds no log_history"
        message = f"skipped: {results_path} {reason}."
        print(f"[accuracy] {message}")
        return {"name": "accuracy", "title": TITLE, "settings": settings, "rows": [], "notes": [message]}

    args.plots.mkdir(parents=True, exist_ok=True)
    histories = {name: run["log_history"] for name, run in runs.items()}
    rows = []
    for key in logged_metrics(histories):
        plot_path = args.plots / f"accuracy_{key}.png"
        plot_training_curves(histories, str(plot_path), key=key)
        finals = {name: last_value(history, key) for name, history in histories.items()}
        rows.append({"name": f"{key} vs training step", "plot": str(plot_path), "final": finals})
        print(f"  {key}: last (step, value) per run {finals}")
    table = final_evaluation(runs)
    if table:
        plot_path = args.plots / "accuracy_final.png"
        plot_final(table, plot_path)
        rows.append({"name": "test metrics at the last step", "plot": str(plot_path), "table": table})
        print(f"  test metrics at the last step: {table}")
    notes = [f"runs found in {results_path}: {sorted(runs)}; one PNG per logged metric, plus the final test metrics."]
    return {"name": "accuracy", "title": TITLE, "settings": settings, "rows": rows, "notes": notes}


def arguments() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="smartclip-compare's results JSON")
    p.add_argument("--plots", type=Path, default=Path("outputs/accuracy"),
                   help="folder for the PNG plots and accuracy.json")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = arguments().parse_args(argv)
    result = run(args)
    save_results(result, args.plots / "accuracy.json")
    print(f"wrote {args.plots / 'accuracy.json'}")
    return result


if __name__ == "__main__":
    main()
