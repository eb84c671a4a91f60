"""Loading a model and its processor from a CLIP or a SmartCLIP checkpoint with the installed classes."""

from os import PathLike
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import CLIPModel, PretrainedConfig

from .modeling_smartclip import SmartCLIPModel
from .processing_smartclip import SmartCLIPProcessor

# How many offending names an error message lists before it says "and N more".
_SHOWN_NAMES = 10


def _names(names) -> str:
    names = sorted(names)
    shown = ", ".join(names[:_SHOWN_NAMES])
    return shown + (f" and {len(names) - _SHOWN_NAMES} more" if len(names) > _SHOWN_NAMES else "")


def check_loaded(model: torch.nn.Module, loading_info: dict, source: str | PathLike) -> None:
    """Raises a `ValueError` naming the weights of `source` that did not load exactly, or that are not finite.

    `loading_info` is what `from_pretrained(..., output_loading_info=True)` returns. transformers fills a missing
    weight with a fresh initialisation and drops an unexpected one, with a log line; a checkpoint that is meant to be
    published or served must hold every weight the model has, and only those. A flipped byte can give a NaN or an
    infinity that loads without any complaint, so every floating-point tensor is checked too.
    """
    problems = [
        f"{what} {_names(loading_info.get(key) or ())}"
        for key, what in (
            ("missing_keys", "missing (would be freshly initialised):"),
            ("unexpected_keys", "unexpected (would be dropped):"),
            ("mismatched_keys", "of another shape:"),
        )
        if loading_info.get(key)
    ]
    non_finite = [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not tensor.isfinite().all()
    ]
    if non_finite:
        problems.append(f"with NaN or infinite values: {_names(non_finite)}")
    if problems:
        listed = "; weights ".join(problems)
        raise ValueError(f"{source}: the checkpoint's weights do not fit the model; weights {listed}.")


def _readable_safetensors(file: Path) -> bool:
    try:
        with safe_open(file, framework="pt"):  # checks the header against the file's size
            return True
    except SafetensorError:
        return False


def load_model_and_processor(
    path: str | PathLike, processor_path: str | PathLike | None = None, strict: bool = False, **config_overrides
) -> tuple[SmartCLIPModel, SmartCLIPProcessor]:
    """A SmartCLIP folder or Hub id as saved, or a CLIP one converted with `from_clip` (fresh head, plain scoring).

    The installed package's classes load it, so the code files a checkpoint carries are never run and nothing asks
    to trust remote code. `config_overrides` set `SmartCLIPConfig` fields (a trained head's architecture cannot be
    changed); `processor_path` defaults to `path`. With `strict`, a checkpoint whose weights do not match the model
    exactly (missing, unexpected or non-finite; see `check_loaded`) is a `ValueError` naming them; a CLIP checkpoint
    must then hold every CLIP weight (the mask head is new by design). A corrupt safetensors file is a `ValueError`
    naming the file.
    """
    try:
        return _load(path, processor_path, strict, **config_overrides)
    except SafetensorError as error:
        files = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
        corrupt = next((file for file in files if not _readable_safetensors(file)), path)
        raise ValueError(f"{corrupt} is not a readable safetensors file ({error}).") from error


def _load(path, processor_path, strict: bool, **config_overrides) -> tuple[SmartCLIPModel, SmartCLIPProcessor]:
    processor_path = path if processor_path is None else processor_path
    model_type = PretrainedConfig.get_config_dict(path)[0].get("model_type")
    if model_type == "smartclip":
        model, info = SmartCLIPModel.from_pretrained(path, output_loading_info=True, **config_overrides)
        processor = SmartCLIPProcessor.from_pretrained(processor_path)
    elif model_type == "clip":
        clip, info = CLIPModel.from_pretrained(path, output_loading_info=True)
        if strict:
            check_loaded(clip, info, path)
        model = SmartCLIPModel.from_clip(clip, **config_overrides)
        processor = SmartCLIPProcessor.from_clip(processor_path)
    else:
        raise ValueError(f"{path} has model_type {model_type!r}; expected a 'smartclip' or a 'clip' checkpoint.")
    if strict:
        check_loaded(model, info if model_type == "smartclip" else {}, path)
    return model, processor


__all__ = ["check_loaded", "load_model_and_processor"]
