"""SmartCLIP processor: CLIP's image processor and tokenizer, with captions checked and fitted to 248 positions."""

import warnings
from os import PathLike

from transformers import CLIPProcessor, ProcessorMixin

LONG_TEXT_POSITIONS = 248


class SmartCLIPProcessor(ProcessorMixin):
    """Wraps a CLIP image processor and tokenizer.

    Captions are tokenized with truncation to the tokenizer's `model_max_length` (248 after `from_clip`), which keeps
    the end-of-text token; a warning names each caption that was cut. An empty caption is an error rather than a
    silent all-padding sequence.
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer)

    @classmethod
    def from_clip(cls, clip_processor_or_path: "CLIPProcessor | str | PathLike") -> "SmartCLIPProcessor":
        """A SmartCLIP processor from a CLIP processor (object, folder or Hub id), its tokenizer set to 248 tokens."""
        clip = clip_processor_or_path
        if not isinstance(clip, ProcessorMixin):
            clip = CLIPProcessor.from_pretrained(clip)
        clip.tokenizer.model_max_length = LONG_TEXT_POSITIONS
        return cls(image_processor=clip.image_processor, tokenizer=clip.tokenizer)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        # The folder's `auto_map` points at this very class: no need to ask whether to run the folder's code.
        kwargs.setdefault("trust_remote_code", False)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def __call__(self, images=None, text=None, **kwargs):
        if text is not None:
            captions = [text] if isinstance(text, str) else list(text)
            empty = [i for i, caption in enumerate(captions) if not isinstance(caption, str) or not caption.strip()]
            if empty:
                raise ValueError(f"SmartCLIPProcessor: captions at positions {empty} are empty or not strings.")
            limit = self.tokenizer.model_max_length
            lengths = [len(ids) for ids in self.tokenizer(captions)["input_ids"]]
            cut = [i for i, length in enumerate(lengths) if length > limit]
            if cut:
                warnings.warn(
                    f"SmartCLIPProcessor: captions at positions {cut} are longer than {limit} tokens "
                    f"({[lengths[i] for i in cut]}); truncated, keeping the end-of-text token.",
                    stacklevel=2,
                )
            kwargs.setdefault("truncation", True)
            kwargs.setdefault("max_length", limit)
            text = captions
        return super().__call__(images=images, text=text, **kwargs)

    def to_dict(self) -> dict:
        output = super().to_dict()
        # transformers also writes our `auto_map` into the image processor's section; loading that standard CLIP
        # image processor would then ask for `trust_remote_code`, so keep the remote-code pointer at the top only.
        if isinstance(output.get("image_processor"), dict):
            output["image_processor"].pop("auto_map", None)
        return output


SmartCLIPProcessor.register_for_auto_class()

__all__ = ["SmartCLIPProcessor"]
