"""Loading a model and its processor from a CLIP or a SmartCLIP checkpoint with the installed classes."""

import contextlib
import logging
from os import PathLike
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import CLIPModel, PretrainedConfig

from .modeling_smartclip import SmartCLIPModel
from .processing_smartclip import SmartCLIPProcessor

# How many offending names an error message lists before it says "and N more".
_SHOWN_NAMES = 10
# What a CLIP tokenizer is rebuilt from: its config, and its fast file or the slow pair it can be converted from.
TOKENIZER_CONFIG = "tokenizer_config.json"
TOKENIZER_FILE = "tokenizer.json"
SLOW_TOKENIZER_FILES = ("vocab.json", "merges.txt")


def _names(names) -> str:
    names = sorted(names)
    shown = ", ".join(names[:_SHOWN_NAMES])
    return shown + (f" and {len(names) - _SHOWN_NAMES} more" if len(names) > _SHOWN_NAMES else "")


def non_finite_weights(model: torch.nn.Module) -> list[str]:
    """The names of `model`'s floating-point weights and buffers that hold a NaN or an infinity."""
    return [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not tensor.isfinite().all()
    ]


def _mismatch(entry: tuple) -> str:
    """`name (checkpoint [..], config [..])` from a `mismatched_keys` entry `(name, checkpoint shape, model shape)`."""
    name, checkpoint_shape, model_shape = entry
    return f"{name} (checkpoint {list(checkpoint_shape)}, config {list(model_shape)})"


def check_loaded(model: torch.nn.Module, loading_info: dict, source: str | PathLike) -> None:
    """Raises a `ValueError` naming the weights of `source` that did not load exactly, or that are not finite.

    `loading_info` is what `from_pretrained(..., output_loading_info=True)` returns. transformers fills a missing
    weight with a fresh initialisation and drops an unexpected one, with a log line; a checkpoint that is meant to be
    published or served must hold every weight the model has, and only those. A config whose sizes contradict the
    weights (loaded with `ignore_mismatched_sizes=True`) gives `mismatched_keys`. A flipped byte can give a NaN or an
    infinity that loads without any complaint, so every floating-point tensor is checked too.
    """
    problems = [
        f"{what} {_names(describe(entry) for entry in loading_info[key])}"
        for key, what, describe in (
            ("missing_keys", "missing (would be freshly initialised):", str),
            ("unexpected_keys", "unexpected (would be dropped):", str),
            ("mismatched_keys", "of another shape than the config gives:", _mismatch),
        )
        if loading_info.get(key)
    ]
    non_finite = non_finite_weights(model)
    if non_finite:
        problems.append(f"with NaN or infinite values: {_names(non_finite)}")
    if problems:
        listed = "; weights ".join(problems)
        raise ValueError(f"{source}: the checkpoint's weights do not fit the model; weights {listed}.")


def check_tokenizer_files(folder: str | PathLike) -> None:
    """Raises a `ValueError` naming the tokenizer files a local `folder` lacks; a Hub id is not checked here.

    Without `tokenizer.json` (or `vocab.json` and `merges.txt`) transformers builds a tokenizer that knows only its
    special tokens and maps every caption to them; without `tokenizer_config.json` it builds one with no special
    tokens. Either loads without an error and makes every score chance.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    missing = [TOKENIZER_CONFIG] if not (folder / TOKENIZER_CONFIG).is_file() else []
    if not (folder / TOKENIZER_FILE).is_file() and not all((folder / name).is_file() for name in SLOW_TOKENIZER_FILES):
        missing.append(f"{TOKENIZER_FILE} (or {' and '.join(SLOW_TOKENIZER_FILES)})")
    if missing:
        raise ValueError(
            f"{folder} lacks the tokenizer files {', '.join(missing)}; a CLIP tokenizer needs {TOKENIZER_CONFIG} and "
            f"{TOKENIZER_FILE} (or {' and '.join(SLOW_TOKENIZER_FILES)})."
        )


def _check_vocabulary(tokenizer, source) -> None:
    """A tokenizer that knows only its special tokens (what a source without its vocabulary gives) is an error."""
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise ValueError(
            f"{source}: the tokenizer holds only its {len(tokenizer)} special tokens; its vocabulary "
            f"({TOKENIZER_FILE}, or {' and '.join(SLOW_TOKENIZER_FILES)}) is missing."
        )


@contextlib.contextmanager
def _without_load_report():
    """Drops transformers' multi-line load report (a warning that the missing weights "were newly initialized"):
    a strict load names them in its own one-line error instead."""
    report_logger = logging.getLogger("transformers.modeling_utils")

    def not_a_report(record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()

    report_logger.addFilter(not_a_report)
    try:
        yield
    finally:
        report_logger.removeFilter(not_a_report)


def _readable_safetensors(file: Path) -> bool:
    try:
        with safe_open(file, framework="pt"):  # checks the header against the file's size
            return True
    except SafetensorError:
        return False


def load_model_and_processor(
    path: str | PathLike, processor_path: str | PathLike | None = None, strict: bool = True, **config_overrides
) -> tuple[SmartCLIPModel, SmartCLIPProcessor]:
    """A SmartCLIP folder or Hub id as saved, or a CLIP one converted with `from_clip` (fresh head, plain scoring).

    The installed package's classes load it, so the code files a checkpoint carries are never run and nothing asks
    to trust remote code. `config_overrides` set `SmartCLIPConfig` fields (a trained head's architecture cannot be
    changed); `processor_path` defaults to `path`. Strict by default: a checkpoint whose weights do not match the
    model exactly (missing, unexpected, non-finite, or of another shape than its config gives; see `check_loaded`)
    is a `ValueError` naming them; a CLIP checkpoint must hold every CLIP weight (the mask head is new by design, the
    one allowed gap). `strict=False` loads such a checkpoint as transformers does (fresh weights for missing ones).
    Missing tokenizer files are always an error (`check_tokenizer_files`), and so is a corrupt safetensors file.
    """
    try:
        with _without_load_report() if strict else contextlib.nullcontext():
            return _load(path, processor_path, strict, **config_overrides)
    except SafetensorError as error:
        files = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
        corrupt = next((file for file in files if not _readable_safetensors(file)), path)
        raise ValueError(f"{corrupt} is not a readable safetensors file ({error}).") from error


def _load(path, processor_path, strict: bool, **config_overrides) -> tuple[SmartCLIPModel, SmartCLIPProcessor]:
    processor_path = path if processor_path is None else processor_path
    check_tokenizer_files(processor_path)
    model_type = PretrainedConfig.get_config_dict(path)[0].get("model_type")
    # Strict: weights of another shape than the config gives are reported by check_loaded, not raised as a report.
    shapes = {"ignore_mismatched_sizes": True} if strict else {}
    if model_type == "smartclip":
        model, info = SmartCLIPModel.from_pretrained(path, output_loading_info=True, **shapes, **config_overrides)
        processor = SmartCLIPProcessor.from_pretrained(processor_path)
    elif model_type == "clip":
        clip, info = CLIPModel.from_pretrained(path, output_loading_info=True, **shapes)
        if strict:
            check_loaded(clip, info, path)
        model = SmartCLIPModel.from_clip(clip, **config_overrides)
        processor = SmartCLIPProcessor.from_clip(processor_path)
    else:
        raise ValueError(f"{path} has model_type {model_type!r}; expected a 'smartclip' or a 'clip' checkpoint.")
    _check_vocabulary(processor.tokenizer, processor_path)
    if strict:
        check_loaded(model, info if model_type == "smartclip" else {}, path)
    return model, processor


__all__ = ["check_loaded", "check_tokenizer_files", "load_model_and_processor", "non_finite_weights"]
