"""The numbers a run recorded, read for the model card: a results file (`smartclip-eval`, `smartclip-compare`, or
any nested JSON of metrics) or the Trainer's `eval_results.json`. Only JSON is read, and only numbers the run wrote."""

import json
import re
from dataclasses import dataclass
from pathlib import Path

from modeling_smartclip.configuration_smartclip import SCORINGS

NO_SCORING = "n/a"  # a number that does not depend on how pairs are scored (a mask density)
# Entries of a results file that describe the run, not the model: smartclip-eval's sizes of the evaluation sets,
# smartclip-compare's timings.
NOT_MEASUREMENTS = ("counts", "timing")
TRAINER_RESULTS = "eval_results.json"  # what `Trainer.save_metrics("eval", ...)` writes into the output folder
# The Trainer's bookkeeping in that file, which measures the run, not the model.
TRAINER_BOOKKEEPING = re.compile(r"eval_(runtime|samples_per_second|steps_per_second|dropped_.*)|epoch")


@dataclass(frozen=True)
class Measurement:
    """One number of a results file: which model (`None` in a one-model file), under which scoring, which metric."""

    model: str | None
    scoring: str
    metric: str
    value: float


def _numeric_leaves(tree: dict, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], float]]:
    """`(path, value)` of every number in nested dicts.

    Strings, lists, booleans and nulls (a metric that could not be computed) are not measurements, nor is what
    `NOT_MEASUREMENTS` holds.
    """
    leaves = []
    for key, value in tree.items():
        if key in NOT_MEASUREMENTS:
            continue
        if isinstance(value, dict):
            leaves += _numeric_leaves(value, (*prefix, str(key)))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            leaves.append(((*prefix, str(key)), float(value)))
    return leaves


def _split_scoring(path: tuple[str, ...]) -> tuple[str, str]:
    """Finds the scoring named in a metric's path, as a key (`{"modular": {...}}`) or a word of one (`R@1_modular`).

    Returns `(scoring, metric name without it)`.
    """
    for position, part in enumerate(path):
        words = re.split(r"([_/\- .()]+)", part)
        for index, word in enumerate(words):
            if word.lower() in SCORINGS:
                cut = slice(index - 1, index + 1) if index else slice(0, 2)  # the word and one separator
                rest = "".join(words[: cut.start] + words[cut.stop :]).strip("_/- .()")
                remaining = [*path[:position], *([rest] if rest else []), *path[position + 1 :]]
                return word.lower(), "/".join(remaining) or part
    return NO_SCORING, "/".join(path)


def _is_model_entry(value) -> bool:
    return isinstance(value, dict) and any(str(key).lower() in SCORINGS for key in value)


def parse_results(results: dict, model_key: str | None = None) -> tuple[list[Measurement], str | None]:
    """Reads the numbers of a results file, tolerant of its layout.

    Accepted: `{metric: value}`, `{scoring: {metric: value}}` (one model), or `{model: {scoring: {metric: value}}}`
    (several models, e.g. SmartCLIP and its CLIP baseline); metrics may be grouped in further nested dicts, and a
    scoring may also be a word of the metric's name (`long_t2i_R@1_modular`). In a several-model file, `model_key`
    names the pushed model (default: the only model, else the one key containing "smartclip"); top-level entries
    that are not models (run settings, counts) are not measurements of any model and are dropped.

    Returns the measurements and the pushed model's key (`None` for a one-model file).
    """
    if not isinstance(results, dict):
        raise ValueError(f"A results file must hold a JSON object; got {type(results).__name__}.")
    models = [key for key, value in results.items() if _is_model_entry(value)]
    if any(str(key).lower() in SCORINGS for key in results):
        models = []  # the top level is one model's scorings
    if model_key is not None:
        if not isinstance(results.get(model_key), dict):
            raise ValueError(f"Results have no model entry {model_key!r}; top-level keys are {sorted(results)}.")
        models = list(dict.fromkeys([*models, model_key]))
    if not models:
        return [Measurement(None, *_split_scoring(path), value) for path, value in _numeric_leaves(results)], None

    if model_key is None:
        candidates = models if len(models) == 1 else [key for key in models if "smartclip" in str(key).lower()]
        if len(candidates) != 1:
            raise ValueError(
                f"Results hold several models {models}; name the pushed one with --results_model (expected exactly "
                f"one key containing 'smartclip', found {candidates})."
            )
        model_key = candidates[0]
    measurements = [
        Measurement(model, *_split_scoring(path), value)
        for model in models
        for path, value in _numeric_leaves(results[model])
    ]
    return measurements, model_key


def read_results(path: str | Path, model_key: str | None = None) -> tuple[list[Measurement], str | None]:
    """`parse_results` of a JSON file; a file with no number in it is an error rather than an empty card section."""
    path = Path(path)
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"Cannot read the results file {path}: {error}") from error
    measurements, model_key = parse_results(results, model_key)
    if not measurements:
        raise ValueError(f"The results file {path} holds no numbers; expected metric name -> value entries.")
    return measurements, model_key


def read_trainer_results(path: str | Path, scoring: str) -> list[Measurement]:
    """The model's numbers in the Trainer's `eval_results.json` (`eval_t2i_R@1`, `eval_t2i_R@1_plain`, `eval_loss`),
    without the `eval_` prefix; a metric that names no scoring was measured under the model's own, `scoring`. The
    Trainer's bookkeeping (runtime, throughput, epoch, dropped rows) is not a measurement of the model."""
    path = Path(path)
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"Cannot read the Trainer's results {path}: {error}") from error
    if not isinstance(metrics, dict):
        raise ValueError(f"{path} must hold a JSON object; got {type(metrics).__name__}.")
    kept = {
        name.removeprefix("eval_"): value for name, value in metrics.items() if not TRAINER_BOOKKEEPING.fullmatch(name)
    }
    measurements, _ = parse_results(kept)
    return [m if m.scoring != NO_SCORING else Measurement(m.model, scoring, m.metric, m.value) for m in measurements]


__all__ = ["Measurement", "NO_SCORING", "TRAINER_RESULTS", "parse_results", "read_results", "read_trainer_results"]
