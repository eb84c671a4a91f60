"""Question 6: accuracy per unit of compute. The one-command demo's SmartCLIP and CLIP runs, metric vs training step.

Reads `outputs/compare/results.json` (written by `smartclip-compare`), finds every run's Trainer `log_history`, and
plots each logged metric against the training step, one line per run, one PNG per metric (`smartclip_train.plots`).
Both runs use the same towers and batch, so a step is the same compute up to the training-step ratio of question 1.
Without the results file the benchmark says so and skips.

    python bench/accuracy.py [--results outputs/compare/results.json] [--plots bench/out]
"""

import json
from pathlib import Path

import torch

from common import OUT_DIR, main_for, parser, section
from smartclip_train.plots import plot_training_curves

TITLE = "Accuracy per unit of compute: metric vs training step"
DEFAULT_RESULTS = Path("outputs/compare/results.json")
BOOKKEEPING = {"step", "epoch", "learning_rate", "grad_norm", "total_flos", "train_runtime", "train_samples_per_second",
               "train_steps_per_second", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}


def find_log_histories(results, name: str = "") -> dict[str, list[dict]]:
    """Every `log_history` list in a nested JSON object, keyed by the path of keys that leads to it ("runs/clip")."""
    found = {}
    if isinstance(results, dict):
        for key, value in results.items():
            if key == "log_history" and isinstance(value, list):
                found[name or "run"] = value
            else:
                found.update(find_log_histories(value, f"{name}/{key}" if name else str(key)))
    elif isinstance(results, list):
        for index, value in enumerate(results):
            found.update(find_log_histories(value, f"{name}/{index}" if name else str(index)))
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


def run(args) -> dict:
    results_path = args.results
    settings = {"results": str(results_path)}
    histories = find_log_histories(json.loads(results_path.read_text())) if results_path.exists() else {}
    if not histories:
        reason = "not found; run `smartclip-compare` first" if not results_path.exists() else "holds no log_history"
        message = f"skipped: {results_path} {reason}."
        print(f"[accuracy] {message}")
        return section("accuracy", TITLE, torch.device("cpu"), settings, [], [message])

    args.plots.mkdir(parents=True, exist_ok=True)
    rows = []
    for key in logged_metrics(histories):
        plot_path = args.plots / f"accuracy_{key}.png"
        plot_training_curves(histories, str(plot_path), key=key)
        finals = {name: last_value(history, key) for name, history in histories.items()}
        rows.append({"name": f"{key} vs training step", "plot": str(plot_path), "final": finals})
        print(f"  {key}: final (step, value) per run {finals}; plot {plot_path}")
    notes = [f"runs found in {results_path}: {sorted(histories)}; one PNG per logged metric."]
    return section("accuracy", TITLE, torch.device("cpu"), settings, rows, notes)


def arguments():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="smartclip-compare's results JSON")
    p.add_argument("--plots", type=Path, default=OUT_DIR, help="folder for the PNG plots")
    return p


if __name__ == "__main__":
    main_for("accuracy", run, arguments())
