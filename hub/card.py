"""The model card of a SmartCLIP folder: `model_card_template.md` (package data) filled in from what the run recorded.

`smartclip-push` writes it into the folder it uploads; `write_model_card` writes the same card into a training
output folder, so that the folder is Hub-ready as it is. Only JSON is read (a results file, `training_args.json`,
`trainer_state.json`), never a pickle, and no number goes on the card that the run did not write: without a results
file the card says so and has no `model-index`.
"""

import json
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import TrainingArguments

from modeling_smartclip import SmartCLIPConfig
from modeling_smartclip.configuration_smartclip import SCORINGS

from .auto_map import strip_foreign_auto_map

TEMPLATE_PATH = Path(__file__).resolve().with_name("model_card_template.md")  # package data, also in a wheel
NO_SCORING = "n/a"  # a number that does not depend on how pairs are scored (a mask density)
COUNTS_KEY = "counts"  # smartclip-eval's sizes of the evaluation sets
# Keys of training_args.json that name the base checkpoint or the data, by priority.
BASE_MODEL_KEYS = ("base_model", "model_name_or_path", "clip_model_name_or_path", "pretrained_model_name_or_path")
DATASET_KEYS = ("dataset_name", "dataset", "train_dataset")
BUILTIN_DATASET = "the built-in synthetic scenes of `smartclip_data.scenes` (shapes and colours, 32x32)"
# Training arguments on the card even at the Trainer's defaults (the others only when the run changed them).
ALWAYS_SHOWN = ("learning_rate", "per_device_train_batch_size", "num_train_epochs", "max_steps", "seed")
LOCAL_CHECKPOINT = "a local checkpoint (not published)"
LOCAL_DATASET = "a local dataset (not published)"
FROM_SCRATCH = "none (towers trained from scratch)"
# Words of an argument's name that mark a credential (`hub_token`, `wandb.key`, `aws_access_key_id`).
SECRET_NAME_WORDS = frozenset(
    {"token", "secret", "password", "passwd", "key", "apikey", "credential", "credentials", "auth"}
)
# Values that are credentials wherever they appear.
SECRET_VALUES = tuple(
    re.compile(pattern)
    for pattern in (
        r"\bhf_[A-Za-z0-9]{20,}",  # Hugging Face tokens
        r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",  # AWS access key ids
        r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@",  # URLs with user:password@
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----",  # PEM private keys
        r"\b[0-9a-f]{40}\b",  # Weights & Biases API keys (also a git commit id: left out too)
        r"\b(?:sk|pk|ghp|gho|ghs|glpat|xox[abp])[-_][A-Za-z0-9_-]{16,}",  # OpenAI, GitHub, GitLab, Slack tokens
        # Long key-like strings: 32+ characters of base64's alphabet mixing upper case, lower case and digits ("-"
        # and "_" end a run, so that hyphenated names such as run names are not taken for keys).
        r"(?<![A-Za-z0-9+/=])(?=[A-Za-z0-9+/=]*[a-z])(?=[A-Za-z0-9+/=]*[A-Z])(?=[A-Za-z0-9+/=]*[0-9])"
        r"[A-Za-z0-9+/=]{32,}",
    )
)
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
CHECKPOINT_NAME = re.compile(r"checkpoint-\d+")  # the Trainer's; its run folder holds what was saved once per run


@dataclass(frozen=True)
class Measurement:
    """One number of a results file: which model (`None` in a one-model file), under which scoring, which metric."""

    model: str | None
    scoring: str
    metric: str
    value: float


@dataclass
class RunRecord:
    """What the training run wrote next to the checkpoint, read from JSON only."""

    training_rows: list[tuple[str, str]]
    base_model: str | None
    dataset: str | None


# ----- results file ---------------------------------------------------------------------------------------------


def _numeric_leaves(tree: dict, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], float]]:
    """`(path, value)` of every number in nested dicts.

    Strings, lists, booleans and nulls (a metric that could not be computed) are not measurements, nor are the
    evaluation sets' sizes under a `counts` key.
    """
    leaves = []
    for key, value in tree.items():
        if key == COUNTS_KEY:
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


# ----- training record ------------------------------------------------------------------------------------------


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object; got {type(data).__name__}.")
    return data


def _is_local_path(value: object) -> bool:
    return isinstance(value, str) and (Path(value).is_absolute() or Path(value).exists())


def looks_secret(key: str, value: object) -> bool:
    """Whether an argument must stay off the card: its name says it is a credential (`hub_token`, `wandb.key`,
    `aws_access_key_id`), or its value looks like one wherever it appears (`SECRET_VALUES`)."""
    words = set(re.split(r"[^a-z0-9]+", key.lower()))
    return bool(words & SECRET_NAME_WORDS) or any(pattern.search(str(value)) for pattern in SECRET_VALUES)


def _default_training_arguments() -> dict[str, object]:
    """`TrainingArguments().to_sanitized_dict()`: what the card leaves out of the training section as unchanged."""
    return TrainingArguments(output_dir="unused", report_to="none").to_sanitized_dict()


def read_run_record(folders: list[Path]) -> RunRecord:
    """Arguments, base checkpoint and data from `training_args.json` / `trainer_state.json` in `folders`.

    `training_args.json` is what `smartclip-train` writes: `{"model": ModelArguments, "data": DataArguments,
    "training": TrainingArguments.to_sanitized_dict()}` (a flat object of arguments is read too). The base
    checkpoint is `model.model_name_or_path` (`None`: towers trained from scratch), the data `data.dataset_name`
    (`None`: the built-in scenes). The first folder holding each file wins (a Trainer checkpoint, then its output
    folder). Left out of the card: credentials by name or by value (`looks_secret`), local paths (keys ending in
    `_dir`, absolute or existing paths), which say nothing to a reader of the Hub page, and training arguments at
    the Trainer's defaults.
    """
    record: dict[str, object] = {}
    for name in ("training_args.json", "trainer_state.json"):
        path = next((folder / name for folder in folders if (folder / name).is_file()), None)
        if path is None:
            continue
        data = _read_json(path)
        if name == "trainer_state.json":  # only the run's extent; log_history is not a table of the card
            data = {key: data[key] for key in ("global_step", "epoch", "max_steps", "train_batch_size") if key in data}
        record.update(_flatten(data))

    if any(key.startswith("training.") for key in record):
        defaults = _default_training_arguments()
        record = {
            key: value
            for key, value in record.items()
            if not key.startswith("training.")
            or key.removeprefix("training.") in ALWAYS_SHOWN
            or defaults.get(key.removeprefix("training."), object()) != value
        }
    secrets = sorted(key for key, value in record.items() if looks_secret(key, value))
    if secrets:
        warnings.warn(f"Left out of the model card, as they look like credentials: {', '.join(secrets)}.", stacklevel=2)
    shown = {
        key: value
        for key, value in record.items()
        if key not in secrets and not key.lower().endswith("_dir") and not _is_local_path(value)
    }
    rows = [(key, str(value).replace("|", "\\|")) for key, value in shown.items() if value not in (None, "", [], {})]

    def describe(keys: tuple[str, ...], local: str, unset: str | None) -> str | None:
        """The first recorded value of `keys`: `unset` if it is `None`, `local` for a local path, `None` if absent
        or secret."""
        for wanted in keys:
            for key, value in record.items():
                if key.rsplit(".", 1)[-1] != wanted or not (value is None or isinstance(value, str)):
                    continue
                if key in secrets:
                    return None
                return unset if value in (None, "") else local if _is_local_path(value) else value
        return None

    # smartclip-train's `--model_name_or_path None` builds small towers, its `--dataset_name None` uses the scenes.
    return RunRecord(
        training_rows=rows,
        base_model=describe(BASE_MODEL_KEYS, LOCAL_CHECKPOINT, FROM_SCRATCH),
        dataset=describe(DATASET_KEYS, LOCAL_DATASET, BUILTIN_DATASET),
    )


# ----- card -----------------------------------------------------------------------------------------------------


CLASSIFICATION = ("zero-shot-image-classification", "Zero-shot image classification")
RETRIEVAL = ("image-text-retrieval", "Image-text retrieval")
OTHER = ("other", "Other measurements")
# The metric's own name (the last part of its path) says what it measures; a group name ("scenes_zeroshot/")
# does not. Names of smartclip-eval and of CLIP_benchmark.
CLASSIFICATION_METRIC = re.compile(r"(acc|accuracy|top-?)\d*(_.+)?|mean_per_class_recall|balanced_acc\w*")
RETRIEVAL_METRIC = re.compile(r"((t2i|i2t)_)?r@\d+|(image|text)_retrieval_recall@\d+|recall@\d+|m?ap@\d+")


def _task(metric: str) -> tuple[str, str]:
    """The model-index task of a metric, from what its own name measures: `(task type, task name)`."""
    name = metric.rsplit("/", 1)[-1].lower()
    if CLASSIFICATION_METRIC.fullmatch(name):
        return CLASSIFICATION
    if RETRIEVAL_METRIC.fullmatch(name):
        return RETRIEVAL
    return OTHER


def eval_results(measurements: list[Measurement], model_key: str | None, dataset: str) -> list[EvalResult]:
    """The pushed model's measurements as model-index entries; the scoring is the metric's config and in its name."""
    dataset_type = re.sub(r"[^\w.-]+", "-", dataset).strip("-").lower() or "unspecified"
    entries = []
    for m in measurements:
        if m.model != model_key:
            continue
        task_type, task_name = _task(m.metric)
        scored = m.scoring != NO_SCORING
        entries.append(
            EvalResult(
                task_type=task_type,
                task_name=task_name,
                dataset_type=dataset_type,
                dataset_name=dataset,
                metric_type=m.metric,
                metric_value=m.value,
                metric_name=f"{m.metric} ({m.scoring} scoring)" if scored else m.metric,
                metric_config=m.scoring if scored else None,
            )
        )
    return entries


def _format(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def results_table(measurements: list[Measurement], model_key: str | None) -> str:
    """A markdown table, one row per metric, one column per (model, scoring); the pushed model's columns first."""
    columns = sorted(
        {(m.model, m.scoring) for m in measurements},
        key=lambda column: (column[0] != model_key, str(column[0]), column[1] == NO_SCORING, column[1]),
    )
    values = {(m.model, m.scoring, m.metric): m.value for m in measurements}
    metrics = list(dict.fromkeys(m.metric for m in measurements))

    def header(model: str | None, scoring: str) -> str:
        return f"{'this model' if model == model_key else model}, {scoring}"

    lines = ["| metric | " + " | ".join(header(*column) for column in columns) + " |", "|---|" + "---|" * len(columns)]
    for metric in metrics:
        cells = [_format(values[(*column, metric)]) if (*column, metric) in values else "—" for column in columns]
        lines.append(f"| `{metric}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_model_card(
    repo_id: str,
    config: SmartCLIPConfig,
    run: RunRecord,
    measurements: list[Measurement] | None = None,
    model_key: str | None = None,
    plots: Sequence[str] = (),
    eval_dataset: str | None = None,
    license: str = "apache-2.0",
    template_path: str | Path = TEMPLATE_PATH,
) -> ModelCard:
    """Fills `template_path` (Jinja2, default `model_card_template.md`) for the model pushed to `repo_id`.

    Args:
        config: the pushed model's configuration (scoring, embedding width, text positions).
        run: what the training run recorded (`read_run_record`).
        measurements, model_key: the run's results (`read_results`); `None` means the card has no results.
        plots: image paths inside the repo, shown under the results.
        eval_dataset: what the results were measured on, for the model-index (default: the training data, else
            "unspecified").
    """
    eval_dataset = eval_dataset or run.dataset
    results = eval_results(measurements, model_key, eval_dataset or "unspecified") if measurements else []
    card_data = ModelCardData(
        model_name=repo_id.split("/")[-1],
        base_model=run.base_model if run.base_model and HUB_ID.match(run.base_model) else None,
        datasets=[run.dataset] if run.dataset and HUB_ID.match(run.dataset) else None,
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        license=license,
        tags=["smartclip", "clip", "vision-language", "custom_code"],
        eval_results=results or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        repo_id=repo_id,
        model_name=repo_id.split("/")[-1],
        base_model=run.base_model,
        dataset=run.dataset,
        training_rows=run.training_rows,
        scoring=config.scoring,
        projection_dim=config.projection_dim,
        max_positions=config.text_config.max_position_embeddings,
        results_table=results_table(measurements, model_key) if measurements else None,
        eval_dataset=eval_dataset if measurements else None,
        plots=[(Path(path).stem.replace("_", " "), path) for path in plots],
        license=license,
    )


def run_folders(model_dir: Path) -> list[Path]:
    """`model_dir`, then its run folder if it is a Trainer `checkpoint-N` (what is saved once per run is there)."""
    return [model_dir, model_dir.parent] if CHECKPOINT_NAME.fullmatch(model_dir.name) else [model_dir]


def write_model_card(
    model_dir: str | Path, results: str | Path | dict | None = None, *, repo_id: str | None = None
) -> Path:
    """Writes into `model_dir` the `README.md` card that `smartclip-push` would upload with it; returns its path.

    Called at the end of a training run, so that the output folder is Hub-ready as it is. The card is filled from
    the folder's `config.json` and `training_args.json` (see `read_run_record`) and `results` (a results file or
    the same object, as `parse_results` reads it; `None`: the card says no results were recorded). The folder's
    JSON files keep only this package's own `auto_map` entries (`strip_foreign_auto_map` warns about any other).
    `repo_id` names the model in the card's code; default `<your-namespace>/<folder name>`.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"{model_dir} is not a saved model folder: it has no config.json.")
    config = SmartCLIPConfig.from_pretrained(model_dir)
    if isinstance(results, dict):
        measurements, model_key = parse_results(results)
    else:
        measurements, model_key = read_results(results) if results is not None else (None, None)
    card = build_model_card(
        repo_id or f"<your-namespace>/{model_dir.resolve().name}", config, read_run_record(run_folders(model_dir)),
        measurements, model_key,
    )
    strip_foreign_auto_map(model_dir)
    card.save(model_dir / "README.md")
    return model_dir / "README.md"


__all__ = [
    "Measurement",
    "RunRecord",
    "build_model_card",
    "eval_results",
    "parse_results",
    "read_results",
    "read_run_record",
    "results_table",
    "run_folders",
    "write_model_card",
]
