"""The model card of a SmartCLIP folder: `model_card_template.md` (package data) filled in from what the run recorded.

`smartclip-push` writes it into the folder it uploads; `write_model_card` writes the same card into a training
output folder, and `save_hub_ready` writes a trained model with its run record and card into a folder of its own, so
that either folder is Hub-ready as it is. Only JSON is read (a results file, `training_args.json`,
`trainer_state.json`, `eval_results.json`), never a pickle, and no number goes on the card that the run did not
write: without results the card says so and has no `model-index`. No credential reaches the card (`secrets`).
"""

import json
import math
import re
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import TrainingArguments

from modeling_smartclip import SmartCLIPConfig
from modeling_smartclip.loading import load_model_and_processor

from .code_pointers import strip_foreign_code
from .results import NO_SCORING, TRAINER_RESULTS, Measurement, parse_results, read_results, read_trainer_results
from .secrets import has_secret, redact, scrub, scrub_json_files

TEMPLATE_PATH = Path(__file__).resolve().with_name("model_card_template.md")  # package data, also in a wheel
# Keys of training_args.json that name the base checkpoint or the data, by priority.
BASE_MODEL_KEYS = ("base_model", "model_name_or_path", "clip_model_name_or_path", "pretrained_model_name_or_path")
DATASET_KEYS = ("dataset_name", "dataset", "train_dataset")
LOCAL_DATA_KEYS = ("train_file", "data_dir")  # smartclip-train's local data, when no dataset is named
BUILTIN_DATASET = "the built-in synthetic scenes of `smartclip_data.scenes` (shapes and colours, 32x32)"
# Training arguments on the card even at the Trainer's defaults (the others only when the run changed them).
ALWAYS_SHOWN = ("learning_rate", "per_device_train_batch_size", "num_train_epochs", "max_steps", "seed")
LOCAL_CHECKPOINT = "a local checkpoint (not published)"
LOCAL_DATASET = "a local dataset (not published)"
FROM_SCRATCH = "none (towers trained from scratch)"
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
CHECKPOINT_NAME = re.compile(r"checkpoint-\d+")  # the Trainer's; its run folder holds what was saved once per run
PROCESSOR_FILE = "processor_config.json"
# What a training run records beside its model, which the card reads and a Hub-ready copy of the model carries.
RUN_RECORD_FILES = ("training_args.json", "trainer_state.json", TRAINER_RESULTS)


@dataclass
class RunRecord:
    """What the training run wrote next to the checkpoint, read from JSON only."""

    training_rows: list[tuple[str, str]]
    base_model: str | None
    dataset: str | None


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


def _default_training_arguments() -> dict[str, object]:
    """`TrainingArguments().to_sanitized_dict()`: what the card leaves out of the training section as unchanged."""
    return TrainingArguments(output_dir="unused", report_to="none").to_sanitized_dict()


def _local_data(record: dict[str, object]) -> str | None:
    """smartclip-train's local files (`--train_file`, `--data_dir`) as the card names them: file names only."""
    for wanted in LOCAL_DATA_KEYS:
        for key, value in record.items():
            if key.rsplit(".", 1)[-1] == wanted and isinstance(value, str) and value:
                return f"local files `{Path(value).name}` (not published)"
    return None


def read_run_record(folders: list[Path]) -> RunRecord:
    """Arguments, base checkpoint and data from `training_args.json` / `trainer_state.json` in `folders`.

    `training_args.json` is what `smartclip-train` writes: `{"model": ModelArguments, "data": DataArguments,
    "training": TrainingArguments.to_sanitized_dict()}` (a flat object of arguments is read too). The base
    checkpoint is `model.model_name_or_path` (`None`: towers trained from scratch), the data `data.dataset_name`,
    else the names of `data.train_file` / `data.data_dir` (none of them: the built-in scenes). The first folder
    holding each file wins (a Trainer checkpoint, then its output folder). Left out of the card: credentials
    (`secrets.scrub`: by name at any depth, redacted by value), local paths (keys ending in `_dir`, absolute or
    existing paths), which say nothing to a reader of the Hub page, and training arguments at the Trainer's
    defaults.
    """
    record: dict[str, object] = {}
    taken: list[str] = []
    for name in RUN_RECORD_FILES[:2]:
        path = next((folder / name for folder in folders if (folder / name).is_file()), None)
        if path is None:
            continue
        data = _read_json(path)
        if name == "trainer_state.json":  # only the run's extent; log_history is not a table of the card
            data = {key: data[key] for key in ("global_step", "epoch", "max_steps", "train_batch_size") if key in data}
        data, found = scrub(data)
        taken += found
        record.update(_flatten(data))
    if taken:
        warnings.warn(f"Left out of the model card, as they look like credentials: {', '.join(taken)}.", stacklevel=2)

    if any(key.startswith("training.") for key in record):
        defaults = _default_training_arguments()
        record = {
            key: value
            for key, value in record.items()
            if not key.startswith("training.")
            or key.removeprefix("training.") in ALWAYS_SHOWN
            or defaults.get(key.removeprefix("training."), object()) != value
        }
    shown = {
        key: value for key, value in record.items() if not key.lower().endswith("_dir") and not _is_local_path(value)
    }
    rows = [(key, str(value).replace("|", "\\|")) for key, value in shown.items() if value not in (None, "", [], {})]

    def describe(keys: tuple[str, ...], local: str, unset: str | None) -> str | None:
        """The first recorded value of `keys`: `unset` if it is `None`, `local` for a local path, `None` if
        absent."""
        for wanted in keys:
            for key, value in record.items():
                if key.rsplit(".", 1)[-1] == wanted and (value is None or isinstance(value, str)):
                    return unset if value in (None, "") else local if _is_local_path(value) else value
        return None

    # smartclip-train's `--model_name_or_path None` builds small towers; without `--dataset_name` it reads
    # `--train_file` / `--data_dir`, and without those the scenes.
    return RunRecord(
        training_rows=rows,
        base_model=describe(BASE_MODEL_KEYS, LOCAL_CHECKPOINT, FROM_SCRATCH),
        dataset=describe(DATASET_KEYS, LOCAL_DATASET, _local_data(record) or BUILTIN_DATASET),
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

    Every credential-looking value that reached the card (a URL's password in `--dataset`, a token in a run name) is
    redacted from its text and metadata, with a warning.
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
    card = ModelCard.from_template(
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
    if has_secret(card.content):
        warnings.warn("Redacted values that look like credentials from the model card.", stacklevel=2)
        card = ModelCard(redact(card.content))
    return card


def run_folders(model_dir: Path) -> list[Path]:
    """`model_dir`, then its run folder if it is a Trainer `checkpoint-N` (what is saved once per run is there)."""
    return [model_dir, model_dir.parent] if CHECKPOINT_NAME.fullmatch(model_dir.name) else [model_dir]


def processor_folder(source: Path, processor: Path | None = None) -> Path:
    """Where the processor files are: `processor` if given, else the first of `run_folders(source)` holding them."""
    candidates = [processor] if processor is not None else run_folders(source)
    for folder in candidates:
        if (folder / PROCESSOR_FILE).is_file():
            return folder
    raise ValueError(
        f"No {PROCESSOR_FILE} in {' or '.join(str(c) for c in candidates)}; pass the folder that holds the "
        "processor with --processor."
    )


def recorded_results(model_dir: Path, config: SmartCLIPConfig) -> list[Measurement] | None:
    """The Trainer's `eval_results.json` of `model_dir`'s run (`read_trainer_results`), `None` if there is none."""
    paths = [folder / TRAINER_RESULTS for folder in run_folders(model_dir)]
    path = next((path for path in paths if path.is_file()), None)
    if path is None:
        return None
    return read_trainer_results(path, config.scoring) or None


def write_model_card(
    model_dir: str | Path,
    results: str | Path | dict | None = None,
    *,
    model_key: str | None = None,
    repo_id: str | None = None,
) -> Path:
    """Writes into `model_dir` the `README.md` card that `smartclip-push` would upload with it; returns its path.

    Called at the end of a training run, so that the output folder is Hub-ready as it is. The card is filled from
    the folder's `config.json` and `training_args.json` (see `read_run_record`) and `results` (a results file or
    the same object, as `parse_results` reads it, with `model_key` naming this model in a several-model one; `None`:
    the run's `eval_results.json` if it wrote one, else the card says no results were recorded). The folder's JSON
    files keep only this package's own code pointers (`strip_foreign_code` warns about any other). `repo_id` names
    the model in the card's code; default `<your-namespace>/<folder name>`.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"{model_dir} is not a saved model folder: it has no config.json.")
    config = SmartCLIPConfig.from_pretrained(model_dir)
    if isinstance(results, dict):
        measurements, model_key = parse_results(results, model_key)
    elif results is not None:
        measurements, model_key = read_results(results, model_key)
    else:
        measurements, model_key = recorded_results(model_dir, config), None
    card = build_model_card(
        repo_id or f"<your-namespace>/{model_dir.resolve().name}", config, read_run_record(run_folders(model_dir)),
        measurements, model_key,
    )
    strip_foreign_code(model_dir)
    card.save(model_dir / "README.md")
    return model_dir / "README.md"


def save_hub_ready(
    run_dir: str | Path, out_dir: str | Path, results: str | Path | dict | None = None, model_key: str | None = None
) -> Path:
    """Writes the trained model of `run_dir` (a `smartclip-train` output folder or a `checkpoint-N`) into `out_dir`
    with what its card needs, and the card; returns `out_dir`.

    `out_dir` gets the model and processor (loaded exactly, safetensors only, saved again: no optimizer state and
    no pickle), the run's record (`RUN_RECORD_FILES`: its arguments, extent and evaluation, without credentials)
    and `README.md`, filled from them and from `results` (a results file or object and, if it holds several
    models, the key of this one; default: the run's `eval_results.json`). `smartclip-compare` calls it for the
    folder it leaves ready to push.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    model, processor = load_model_and_processor(run_dir, processor_folder(run_dir), strict=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    for name in RUN_RECORD_FILES:
        source = next((folder / name for folder in run_folders(run_dir) if (folder / name).is_file()), None)
        if source is not None:
            shutil.copyfile(source, out_dir / name)
    scrub_json_files(out_dir)
    write_model_card(out_dir, results, model_key=model_key)
    return out_dir


__all__ = [
    "RunRecord",
    "build_model_card",
    "eval_results",
    "processor_folder",
    "read_run_record",
    "recorded_results",
    "results_table",
    "run_folders",
    "save_hub_ready",
    "write_model_card",
]
