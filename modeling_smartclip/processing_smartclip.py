"""SmartCLIP processor: CLIP's image processor and tokenizer, with captions checked and fitted to 248 positions."""

import warnings
from os import PathLike

from transformers import CLIPProcessor, ProcessorMixin
from transformers.processing_utils import ProcessingKwargs, Unpack

LONG_TEXT_POSITIONS = 248


class SmartCLIPProcessor(ProcessorMixin):
    """Wraps a CLIP image processor and tokenizer.

    Captions are tokenized once, truncated to `LONG_TEXT_POSITIONS` (248) tokens keeping the end-of-text token; a
    warning names each caption that was cut. The limit is SmartCLIP's, not the tokenizer's `model_max_length`:
    `SmartCLIPModel.from_clip` gives every model 248 text positions, while a plain CLIP folder's tokenizer says 77
    and a tokenizer built offline says 10^30 (and the model truncates anything longer itself). The tokenizer's
    `model_max_length` is set to the same limit, so callers of the tokenizer alone (the zero-shot pipeline) agree.
    An empty caption, or an empty list of captions or images, is an error rather than a silent empty batch.
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer)
        if self.tokenizer is not None:
            self.tokenizer.model_max_length = LONG_TEXT_POSITIONS

    @classmethod
    def from_clip(cls, clip_processor_or_path: "CLIPProcessor | str | PathLike", **kwargs) -> "SmartCLIPProcessor":
        """A SmartCLIP processor from a CLIP processor (object, folder or Hub id). Keyword arguments (`token`,
        `revision`, `cache_dir`, `local_files_only`, ...) go to `CLIPProcessor.from_pretrained`."""
        clip = clip_processor_or_path
        if not isinstance(clip, ProcessorMixin):
            clip = CLIPProcessor.from_pretrained(clip, **kwargs)
        elif kwargs:
            raise ValueError(f"from_clip got a loaded processor and loader arguments {sorted(kwargs)}.")
        return cls(image_processor=clip.image_processor, tokenizer=clip.tokenizer)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        # The folder's `auto_map` points at this very class: no need to ask whether to run the folder's code.
        kwargs.setdefault("trust_remote_code", False)
        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        # transformers keeps these load-time options in the tokenizer's init_kwargs and would write them into
        # tokenizer_config.json on the next save_pretrained.
        for key in ("is_local", "local_files_only"):
            processor.tokenizer.init_kwargs.pop(key, None)
        return processor

    def _merge_kwargs(self, ModelProcessorKwargs=None, tokenizer_init_kwargs=None, **kwargs) -> dict[str, dict]:
        """`ProcessorMixin`'s merge of call, structured (`text_kwargs=...`) and tokenizer-default arguments, then
        SmartCLIP's caption limit on the result: unless `truncation` is turned off, captions are tokenized to one
        token past `min(max_length, 248)`, so that `__call__` can name the ones that were longer and cut them back."""
        merged = super()._merge_kwargs(ModelProcessorKwargs, tokenizer_init_kwargs, **kwargs)
        text_kwargs = merged["text_kwargs"]
        if text_kwargs.get("truncation") not in (False, "do_not_truncate"):
            text_kwargs["truncation"] = True
            limit = min(text_kwargs.get("max_length") or LONG_TEXT_POSITIONS, LONG_TEXT_POSITIONS)
            text_kwargs["max_length"] = limit + 1
        return merged

    def __call__(self, images=None, text=None, videos=None, audio=None, **kwargs: Unpack[ProcessingKwargs]):
        """`CLIPProcessor`'s call (every argument it takes, flat or structured), with captions checked and fitted to
        `min(max_length, 248)` tokens keeping the end-of-text token; `truncation=False` leaves them whole."""
        if isinstance(images, (list, tuple)) and not images:
            raise ValueError("SmartCLIPProcessor: images=[] holds no images; pass at least one, or images=None.")
        if text is not None:
            captions = [text] if isinstance(text, str) else list(text)
            if not captions:
                raise ValueError("SmartCLIPProcessor: text=[] holds no captions; pass at least one, or text=None.")
            empty = [i for i, caption in enumerate(captions) if not isinstance(caption, str) or not caption.strip()]
            if empty:
                raise ValueError(f"SmartCLIPProcessor: captions at positions {empty} are empty or not strings.")
            text = text if isinstance(text, str) else captions
        outputs = super().__call__(images=images, text=text, videos=videos, audio=audio, **kwargs)
        if text is None:
            return outputs
        # The merge again (a few dict updates) tells the limit the captions were tokenized against.
        text_kwargs = self._merge_kwargs(tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)["text_kwargs"]
        if text_kwargs["truncation"] is not True:
            return outputs
        limit = text_kwargs["max_length"] - 1
        # One string without return_tensors gives one flat row, as the tokenizer does.
        one_row = isinstance(text, str) and not hasattr(outputs["input_ids"], "shape")
        rows = {key: [outputs[key]] if one_row else outputs[key] for key in ("input_ids", "attention_mask")
                if key in outputs}
        mask = rows.get("attention_mask")
        if mask is None:
            lengths = [len(row) for row in rows["input_ids"]]
        else:
            lengths = mask.sum(-1).tolist() if hasattr(mask, "shape") else [sum(row) for row in mask]
        cut = [i for i, length in enumerate(lengths) if length > limit]
        for key, value in rows.items():  # padding="max_length" pads to limit + 1 too
            value = value[:, :limit] if hasattr(value, "shape") else [row[:limit] for row in value]
            if key == "input_ids":
                for i in cut:
                    value[i][limit - 1] = self.tokenizer.eos_token_id
            outputs[key] = value[0] if one_row else value
        if cut:
            warnings.warn(
                f"SmartCLIPProcessor: captions at positions {cut} are longer than {limit} tokens; truncated, keeping "
                "the end-of-text token.",
                stacklevel=2,
            )
        return outputs

    def to_dict(self) -> dict:
        output = super().to_dict()
        # transformers also writes our `auto_map` into the image processor's section; loading that standard CLIP
        # image processor would then ask for `trust_remote_code`, so keep the remote-code pointer at the top only.
        if isinstance(output.get("image_processor"), dict):
            output["image_processor"].pop("auto_map", None)
        return output


SmartCLIPProcessor.register_for_auto_class()

__all__ = ["SmartCLIPProcessor"]
