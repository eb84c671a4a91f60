"""SmartCLIP configuration: a CLIP configuration plus the mask head, the loss and the scoring."""

import math

from huggingface_hub.dataclasses import strict
from transformers import CLIPConfig

SCORINGS = ("plain", "modular")
MASK_POOLINGS = ("attention", "union")
LOSS_TYPES = ("smartclip", "clip")
# Per caption, the weight of its soft mask's L1 norm (Eq. 8-9, the paper's units); chosen by the lambda sweep in
# docs/results.md.
LAMBDA_SPARSITY = 1e-3
SPARSITY_REDUCTIONS = ("sum", "mean")
# Fields that shape the mask head's weights: a saved head only fits the values it was built with.
HEAD_ARCHITECTURE_FIELDS = ("mask_pooling", "mask_hidden_size", "mask_num_attention_heads", "mask_intermediate_size")


@strict
class SmartCLIPConfig(CLIPConfig):
    r"""
    Configuration of a [`SmartCLIPModel`]: CLIP's text and vision towers (`text_config`, `vision_config`,
    `projection_dim`, `logit_scale_init_value`, as in [`CLIPConfig`]) and a mask head that predicts, from a
    caption's token sequence, which of the `projection_dim` embedding dimensions the caption talks about.

    Args:
        mask_hidden_size (`int`, *optional*):
            Width of the mask head's transformer block. `None` uses the text tower's hidden size (no input
            projection).
        mask_num_attention_heads (`int`, *optional*):
            Heads of the mask head's block and of its attention pooling; `None` uses the text tower's.
        mask_intermediate_size (`int`, *optional*):
            MLP width of the block; `None` means 4 x `mask_hidden_size`.
        mask_threshold (`float`, defaults to 0.5):
            A dimension is on when its sigmoid probability exceeds this (the paper does not state it).
        mask_pooling (`str`, defaults to `"attention"`):
            `"attention"`: the paper's head, a learned query pools the tokens, then one mask is predicted.
            `"union"`: mask logits are predicted per token and max-pooled, so a caption's mask is the union of what
            its words switch on.
        scoring (`str`, defaults to `"plain"`):
            How `forward` scores a (caption, image) pair in `logits_per_image` / `logits_per_text`. `"plain"`:
            cosine of the unmasked embeddings (CLIP). `"modular"`: `cos(image * mask(caption), caption)`, the
            similarity the modular loss trains.
        loss_type (`str`, defaults to `"smartclip"`):
            `"smartclip"`: the modular loss; `"clip"`: CLIP's symmetric contrastive loss (the ablation baseline).
        lambda_align (`float`, defaults to 1.0):
            Weight of the masked contrastive term (the paper reports it robust from 0.1 to 20).
        lambda_sparsity (`float`, defaults to `LAMBDA_SPARSITY`):
            Weight of the sparsity term: each caption's soft mask's L1 norm, averaged over the batch (Eq. 8-9, the
            paper's units; `losses.modular_loss` says why the alignment term's weight makes them so).
        sparsity_reduction (`str`, defaults to `"sum"`):
            `"sum"`: the L1 norm sums over the `projection_dim` dimensions, as Eq. 8 writes it. `"mean"`: it averages
            over them too, as 0.1.0 did; a saved config without this field loads as `"mean"`, so a folder trained
            before keeps its loss.
        mask_head_trained (`bool`, defaults to `False`):
            Whether the mask head has been trained (set by the trainer for objectives that train it). Evaluation
            reads it to choose its default scorings: an untrained head's masks are noise. `loss_type` only says what
            `forward(return_loss=True)` computes.
    """

    model_type = "smartclip"

    mask_hidden_size: int | None = None
    mask_num_attention_heads: int | None = None
    mask_intermediate_size: int | None = None
    mask_threshold: float = 0.5
    mask_pooling: str = "attention"
    scoring: str = "plain"
    loss_type: str = "smartclip"
    lambda_align: float = 1.0
    lambda_sparsity: float = LAMBDA_SPARSITY
    sparsity_reduction: str = "sum"
    mask_head_trained: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.check_fields()

    def check_fields(self) -> None:
        """Raises a `ValueError` naming the field, rather than failing deep inside a forward pass."""
        choices = (("scoring", SCORINGS), ("mask_pooling", MASK_POOLINGS), ("loss_type", LOSS_TYPES),
                   ("sparsity_reduction", SPARSITY_REDUCTIONS))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ValueError(f"SmartCLIPConfig.{name}={getattr(self, name)!r}; expected one of {allowed}.")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ValueError(f"SmartCLIPConfig.mask_threshold={self.mask_threshold}; expected a value in (0, 1).")
        for name in ("lambda_align", "lambda_sparsity"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"SmartCLIPConfig.{name}={getattr(self, name)}; expected a finite value >= 0.")
        # `None` means "the text tower's value"; 0 is not a silent alias of it.
        for name in ("projection_dim", "mask_hidden_size", "mask_num_attention_heads", "mask_intermediate_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"SmartCLIPConfig.{name}={value}; expected a positive integer.")
        width = self.mask_hidden_size or self.text_config.hidden_size
        heads = self.mask_num_attention_heads or self.text_config.num_attention_heads
        if width % heads:
            raise ValueError(f"SmartCLIPConfig: mask head width {width} is not divisible by {heads} attention heads.")

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        model_type = config_dict.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(
                f"This checkpoint is a `{model_type}` model, not `{cls.model_type}`. Convert a CLIP checkpoint with "
                "`SmartCLIPModel.from_clip(path_or_repo_id)`."
            )
        changed = {
            name: (config_dict.get(name, cls.__dataclass_fields__[name].default), kwargs[name])
            for name in HEAD_ARCHITECTURE_FIELDS
            if name in kwargs and kwargs[name] != config_dict.get(name, cls.__dataclass_fields__[name].default)
        }
        if changed:
            listed = ", ".join(f"{name}: saved {saved!r}, asked {asked!r}" for name, (saved, asked) in changed.items())
            raise ValueError(
                "The mask head's architecture cannot be overridden when loading a saved SmartCLIP (its weights were "
                f"built for the saved values): {listed}. "
                "Convert the CLIP checkpoint again with `SmartCLIPModel.from_clip(clip, **head_fields)`."
            )
        if "sparsity_reduction" not in config_dict:  # saved before the field existed: 0.1.0's mean
            config_dict = {**config_dict, "sparsity_reduction": "mean"}
        loaded = super().from_dict(config_dict, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        config.check_fields()  # load-time overrides are set after construction
        return loaded


__all__ = ["LAMBDA_SPARSITY", "SCORINGS", "SPARSITY_REDUCTIONS", "SmartCLIPConfig"]
