"""The evaluation's outputs: a markdown table of metrics by model and scoring, and the results as strict JSON."""

import json
import math
from pathlib import Path

from modeling_smartclip.configuration_smartclip import SCORINGS

# Decimals kept in the JSON: more would be noise at any evaluation size we run.
DECIMALS = 4


def _cell(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def format_table(results_by_model: dict[str, dict]) -> str:
    """A markdown table of metrics (rows) by model and scoring (columns), and one each of mask statistics and mask
    diagnostics if any.

    `results_by_model` maps a model's name to what `evaluate_model` returned for it; a model evaluated under plain
    scoring only simply has no modular column.
    """
    columns = [(model, s) for model, results in results_by_model.items() for s in SCORINGS if s in results]
    rows = list(dict.fromkeys(metric for model, s in columns for metric in results_by_model[model][s]))
    lines = [
        "| metric | " + " | ".join(f"{model} ({s})" for model, s in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    lines += [
        f"| {metric} | " + " | ".join(_cell(results_by_model[m][s].get(metric)) for m, s in columns) + " |"
        for metric in rows
    ]
    for group, header in (("mask_stats", "mask statistic"), ("mask_diagnostics", "mask diagnostic")):
        masked = [model for model, results in results_by_model.items() if group in results]
        if masked:
            stats = list(dict.fromkeys(k for model in masked for k in results_by_model[model][group]))
            lines += ["", f"| {header} | " + " | ".join(masked) + " |", "|---|" + "---|" * len(masked)]
            lines += [
                f"| {stat} | " + " | ".join(_cell(results_by_model[m][group].get(stat)) for m in masked) + " |"
                for stat in stats
            ]
    return "\n".join(lines)


def save_results(results: dict, path: "str | Path") -> None:
    """Writes `results` as strict JSON, every measured float rounded to `DECIMALS` places; a NaN (e.g. `acc5` with
    fewer than 5 classes) becomes `null`. A top-level `"settings"` entry holds inputs, not measurements: it is written
    exactly, so a later run can tell whether it had the same settings (a rounded learning rate of 1e-5 reads 0.0)."""

    def strict(value):
        if isinstance(value, dict):
            return {k: strict(v) for k, v in value.items()}
        if isinstance(value, float):
            return None if math.isnan(value) else round(value, DECIMALS)
        return value

    rounded = {key: value if key == "settings" else strict(value) for key, value in results.items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(rounded, indent=2, allow_nan=False) + "\n", encoding="utf-8")


__all__ = ["DECIMALS", "format_table", "save_results"]
