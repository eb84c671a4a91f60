"""Loading a SmartCLIP processor from a folder with the package's own classes, ready to be saved again."""

from os import PathLike

from modeling_smartclip import SmartCLIPProcessor

# Load-time options that transformers keeps in a tokenizer's init_kwargs and would write into tokenizer_config.json.
LOAD_TIME_KEYS = ("is_local", "local_files_only")


def load_processor(path: str | PathLike) -> SmartCLIPProcessor:
    """The processor saved at `path` (folder or Hub id).

    `trust_remote_code=False`: the installed package's classes load it, so the code files a folder carries are never
    executed (and transformers does not prompt for them).
    """
    processor = SmartCLIPProcessor.from_pretrained(path, trust_remote_code=False)
    for key in LOAD_TIME_KEYS:
        processor.tokenizer.init_kwargs.pop(key, None)
    return processor


__all__ = ["load_processor"]
