"""SmartCLIP: CLIP's towers (imported from transformers, not copied) plus a mask head and the modular loss."""

import warnings
from dataclasses import dataclass
from os import PathLike

import torch
from torch import nn
from transformers import CLIPModel, CLIPTextModel, CLIPVisionModel, PretrainedConfig
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import CLIPPreTrainedModel
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_smartclip import SmartCLIPConfig
from .losses import clip_loss, modular_loss, scale_from_log
from .masking import MASK_LOGIT_BIAS, MASK_LOGIT_SPREAD, MaskLogits, SmartCLIPMaskHead, similarity

# Long-CLIP (beichenzbc/Long-CLIP, model/longclip.py L230-251): keep the first 20 positions, stretch the rest 4x.
KEEP_POSITIONS = 20
STRETCH = 4
# `from_clip`'s keyword arguments: SmartCLIP's own config fields configure the model; the rest go to the loader,
# of which these also reach the config lookup.
SMARTCLIP_FIELDS = tuple(SmartCLIPConfig.__annotations__)
CONFIG_LOADER_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")


@dataclass
class SmartCLIPOutput(ModelOutput):
    r"""
    loss (`torch.Tensor` of shape `()`, *optional*, returned when `return_loss` is `True`):
        The modular loss (or CLIP's loss when `config.loss_type == "clip"`).
    logits_per_image (`torch.Tensor` of shape `(image_batch_size, text_batch_size)`):
        Scaled image-caption scores under `config.scoring` (plain or modular); `None` with `return_logits=False`.
    logits_per_text (`torch.Tensor` of shape `(text_batch_size, image_batch_size)`):
        The transpose of `logits_per_image`.
    text_embeds (`torch.Tensor` of shape `(text_batch_size, projection_dim)`):
        Unit-norm caption embeddings, unmasked.
    image_embeds (`torch.Tensor` of shape `(image_batch_size, projection_dim)`):
        Unit-norm image embeddings, unmasked.
    text_model_output (`BaseModelOutputWithPooling`):
        The output of `get_text_features` (its `pooler_output` is the projected caption feature, as CLIP's).
    vision_model_output (`BaseModelOutputWithPooling`):
        The output of `get_image_features` (its `pooler_output` is the projected image feature, as CLIP's).
    text_masks (`torch.Tensor` of shape `(text_batch_size, projection_dim)`):
        Each caption's binary mask (0/1 values, straight-through gradient); `None` when the mask head was skipped
        (see `output_text_masks`).
    text_mask_probs (`torch.Tensor` of shape `(text_batch_size, projection_dim)`):
        The sigmoid probabilities the masks were thresholded from; `None` with `text_masks`.

    CLIPModel's fields come first, in its order, so that `return_dict=False` tuples index as CLIPModel's do.
    """

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None
    text_masks: torch.Tensor | None = None
    text_mask_probs: torch.Tensor | None = None

    def to_tuple(self) -> tuple:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


def stretch_position_embedding(weight: torch.Tensor) -> torch.Tensor:
    """Long-CLIP's stretch of a `(n, width)` position table to `(4n - 60, width)`; 77 positions become 248.

    Rows 0-19 are kept; `new[20 + 4i + k] = (4 - k)/4 * pe[20 + i] + k/4 * pe[21 + i]` for i = 0..n-22, k = 0..3;
    the last four rows extrapolate from the last two: `new[-4 + k] = pe[-1] + k * (pe[-1] - pe[-2]) / 4`.
    """
    kept, rest = weight[:KEEP_POSITIONS], weight[KEEP_POSITIONS:]
    k = torch.arange(STRETCH, dtype=weight.dtype, device=weight.device)[None, :, None] / STRETCH  # (1, 4, 1)
    interpolated = (1 - k) * rest[:-1, None] + k * rest[1:, None]  # (n - 21, 4, width)
    extrapolated = weight[-1] + k[0] * (weight[-1] - weight[-2])  # (4, width)
    return torch.cat([kept, interpolated.flatten(0, 1), extrapolated])


class SmartCLIPPreTrainedModel(CLIPPreTrainedModel):
    config: SmartCLIPConfig
    base_model_prefix = "smartclip"
    _no_split_modules = [*CLIPPreTrainedModel._no_split_modules, "SmartCLIPMaskHead"]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)  # CLIP's towers, and every plain Linear / LayerNorm
        # Each branch is on a module that owns the parameters directly: transformers skips, in code outside its own
        # package, modules whose own parameters are all loaded, and parents of those that own none.
        factor = self.config.initializer_factor
        if isinstance(module, SmartCLIPModel):
            init.normal_(module.text_projection.weight, std=module.text_embed_dim**-0.5 * factor)
            init.normal_(module.visual_projection.weight, std=module.vision_embed_dim**-0.5 * factor)
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
        elif isinstance(module, MaskLogits):  # all-on start (masking.py)
            init.normal_(module.weight, std=MASK_LOGIT_SPREAD * module.in_features**-0.5 * factor)
            init.constant_(module.bias, MASK_LOGIT_BIAS)
        elif isinstance(module, SmartCLIPMaskHead) and module.pooling == "attention":
            init.normal_(module.query, std=module.query.shape[-1] ** -0.5 * factor)
        elif isinstance(module, nn.MultiheadAttention):  # the head's attention pooling, CLIPAttention's scheme
            init.normal_(module.in_proj_weight, std=module.embed_dim**-0.5 * factor)
            init.zeros_(module.in_proj_bias)
            init.normal_(module.out_proj.weight, std=module.embed_dim**-0.5 * factor)
            init.zeros_(module.out_proj.bias)


class SmartCLIPModel(SmartCLIPPreTrainedModel):
    r"""
    CLIP with a mask head. Inference reads CLIP's features (`get_text_features(...).pooler_output`,
    `get_image_features(...).pooler_output`, as `CLIPModel`'s) or, with `config.scoring == "modular"`, ranks with
    the caption's mask (`forward`, `modeling_smartclip.similarity`).

    Example:

    ```python
    >>> from modeling_smartclip import SmartCLIPModel, SmartCLIPProcessor
    >>> model = SmartCLIPModel.from_clip("openai/clip-vit-base-patch16")  # 248 text positions, plain scoring
    >>> processor = SmartCLIPProcessor.from_clip("openai/clip-vit-base-patch16")
    >>> inputs = processor(text=["a red cube", "a blue ball"], images=image, return_tensors="pt", padding=True)
    >>> probs = model(**inputs).logits_per_image.softmax(dim=-1)
    ```
    """

    def __init__(self, config: SmartCLIPConfig):
        super().__init__(config)
        self.projection_dim = config.projection_dim
        self.text_embed_dim = config.text_config.hidden_size
        self.vision_embed_dim = config.vision_config.hidden_size

        self.text_model = CLIPTextModel._from_config(config.text_config)
        self.vision_model = CLIPVisionModel._from_config(config.vision_config)
        self.visual_projection = nn.Linear(self.vision_embed_dim, self.projection_dim, bias=False)
        self.text_projection = nn.Linear(self.text_embed_dim, self.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.mask_head = SmartCLIPMaskHead(config)
        self.post_init()

    # ----- conversion ---------------------------------------------------------------------------------------------

    @classmethod
    def from_clip(cls, clip_model_or_path: "CLIPModel | str | PathLike", **kwargs) -> "SmartCLIPModel":
        """Builds a SmartCLIP from a transformers `CLIPModel` (an object, a local folder or a Hub id).

        Every CLIP weight is copied; a 77-position text table is stretched to 248 the Long-CLIP way (a table that
        already has 248 or more positions is kept as is); the mask head is freshly initialised. `scoring` is
        `"plain"` unless overridden, so the converted model's logits are CLIP's.

        Keyword arguments that are SmartCLIP's own config fields (`mask_pooling`, `scoring`, `lambda_align`, ...)
        configure the new model; all others (`token`, `revision`, `dtype`, `cache_dir`, `local_files_only`, ...)
        go to `CLIPModel.from_pretrained` and are never stored in the config (a Hub token must not reach
        `config.json`).
        """
        config_overrides = {name: kwargs.pop(name) for name in list(kwargs) if name in SMARTCLIP_FIELDS}
        clip = clip_model_or_path
        if isinstance(clip, CLIPModel):
            if kwargs:
                raise ValueError(
                    f"from_clip got a loaded CLIPModel and loader arguments {sorted(kwargs)}; loader arguments only "
                    f"apply to a path or Hub id. SmartCLIP config fields are {SMARTCLIP_FIELDS}."
                )
        else:
            loader_kwargs = {k: v for k, v in kwargs.items() if k in CONFIG_LOADER_KWARGS}
            source_type = PretrainedConfig.get_config_dict(clip, **loader_kwargs)[0].get("model_type")
            if source_type != "clip":
                raise ValueError(
                    f"from_clip expects a CLIP checkpoint (model_type 'clip'), but {clip} has model_type "
                    f"{source_type!r}." + (" Load it with SmartCLIPModel.from_pretrained." if source_type == "smartclip" else "")
                )
            clip = CLIPModel.from_pretrained(clip, **kwargs)

        state = clip.state_dict()
        text_config = clip.config.text_config.to_dict()
        position_key = "text_model.embeddings.position_embedding.weight"
        if text_config["max_position_embeddings"] < 4 * 77 - 3 * KEEP_POSITIONS:
            state[position_key] = stretch_position_embedding(state[position_key])
            text_config["max_position_embeddings"] = len(state[position_key])

        config = SmartCLIPConfig(
            text_config=text_config,
            vision_config=clip.config.vision_config.to_dict(),
            projection_dim=clip.config.projection_dim,
            logit_scale_init_value=clip.config.logit_scale_init_value,
            **config_overrides,
        )
        model = cls(config).to(clip.dtype)
        model.set_attn_implementation(clip.config._attn_implementation)
        missing, unexpected = model.load_state_dict(state, strict=False)
        not_head = [key for key in missing if not key.startswith("mask_head.")]
        if not_head or unexpected:
            raise ValueError(f"CLIP weights do not fit SmartCLIP: missing {not_head}, unexpected {unexpected}.")
        return model

    def to_clip(self) -> CLIPModel:
        """The towers as a transformers `CLIPModel` (248 positions, no mask head): the inverse of `from_clip`."""
        skip = ("mask_", "scoring", "loss_type", "lambda_", "sparsity_", "auto_map", "architectures", "model_type")
        config = {k: v for k, v in self.config.to_dict().items() if not k.startswith(skip)}
        clip = CLIPModel(CLIPModel.config_class(**config)).to(self.dtype)
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("mask_head.")}
        clip.load_state_dict(state)
        return clip

    def set_attn_implementation(self, attn_implementation, *args, **kwargs):
        super().set_attn_implementation(attn_implementation, *args, **kwargs)
        # The mask head's block is not a transformers submodel: it follows the text tower's implementation.
        self.mask_head.block.self_attn.config._attn_implementation = self.config.text_config._attn_implementation

    # ----- encoders -----------------------------------------------------------------------------------------------

    def _fit_to_positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, position_ids=None):
        """Checks the token ids and truncates sequences longer than the position table, keeping the end-of-text
        token (which CLIP pools). Done here rather than in the processor, because the zero-shot pipeline calls the
        tokenizer directly. Returns `(input_ids, attention_mask, position_ids)`, each `(batch, <= positions)`."""
        vocab_size = self.config.text_config.vocab_size
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
            bad = input_ids[(input_ids < 0) | (input_ids >= vocab_size)].unique().tolist()
            raise ValueError(f"input_ids holds ids {bad[:10]} outside the vocabulary [0, {vocab_size}).")
        if attention_mask is not None and not attention_mask.any(dim=-1).all():
            rows = (~attention_mask.any(dim=-1)).nonzero().flatten().tolist()
            raise ValueError(f"attention_mask rows {rows} are all zero: each caption needs at least one token.")
        limit = self.config.text_config.max_position_embeddings
        if input_ids.shape[-1] <= limit:
            return input_ids, attention_mask, position_ids
        warnings.warn(
            f"SmartCLIP: text of {input_ids.shape[-1]} tokens is longer than the model's {limit} positions; "
            f"truncated to {limit} tokens, keeping the end-of-text token.",
            stacklevel=3,
        )
        eos_id = self.text_model.eos_token_id
        eos_id = self.config.text_config.vocab_size - 1 if eos_id == 2 else eos_id  # legacy configs pool at argmax
        input_ids = input_ids[:, :limit].clone()
        cut_before_eos = ~(input_ids == eos_id).any(dim=-1)
        input_ids[cut_before_eos, -1] = eos_id
        if attention_mask is not None:
            attention_mask = attention_mask[:, :limit]
        if position_ids is not None:
            position_ids = position_ids[..., :limit]
        return input_ids, attention_mask, position_ids

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple | BaseModelOutputWithPooling:
        """The text tower's output, as CLIP's: `pooler_output` is the projected caption feature, unmasked and not
        normalised, `(batch_size, projection_dim)`; `last_hidden_state` is `(batch_size, seq_len, hidden_size)`.

        `model.get_text_features(**inputs).pooler_output` runs on CLIPModel and SmartCLIP alike. Keyword arguments
        (`output_attentions`, `output_hidden_states`, `return_dict`) are the text tower's.
        """
        input_ids, attention_mask, position_ids = self._fit_to_positions(input_ids, attention_mask, position_ids)
        text_outputs = self.text_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, return_dict=True, **kwargs
        )
        text_outputs.pooler_output = self.text_projection(text_outputs.pooler_output)  # (B, D)
        return text_outputs

    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False, **kwargs
    ) -> tuple | BaseModelOutputWithPooling:
        """The vision tower's output, as CLIP's: `pooler_output` is the projected image feature, not normalised,
        `(batch_size, projection_dim)`. Keyword arguments (`output_attentions`, `output_hidden_states`,
        `return_dict`) are the vision tower's."""
        vision_outputs = self.vision_model(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
        )
        vision_outputs.pooler_output = self.visual_projection(vision_outputs.pooler_output)  # (B, D)
        return vision_outputs

    def _text_tower(self, input_ids, attention_mask=None, position_ids=None, output_text_masks=True, **kwargs):
        """One pass of the text tower (and of the mask head if `output_text_masks`): `(text_outputs, masks, probs)`,
        where `text_outputs` is `get_text_features`'s and `masks`, `probs` are `(B, D)` or `None`."""
        text_outputs = self.get_text_features(input_ids, attention_mask, position_ids, return_dict=True, **kwargs)
        if not output_text_masks:
            return text_outputs, None, None
        if attention_mask is not None:  # as `get_text_features` fitted it to the positions
            attention_mask = attention_mask[:, : text_outputs.last_hidden_state.shape[1]]
        masks, mask_probs = self.mask_head(text_outputs.last_hidden_state, attention_mask)  # (B, D), (B, D)
        return text_outputs, masks, mask_probs

    def get_text_masks(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Each caption's binary mask over the embedding dimensions: `(batch_size, projection_dim)`, values 0/1."""
        return self._text_tower(input_ids, attention_mask)[1]

    def encode_text_and_masks(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Unit-norm caption embeddings and their masks from one pass: two `(batch_size, projection_dim)` tensors."""
        text_outputs, masks, _ = self._text_tower(input_ids, attention_mask)
        text_features = text_outputs.pooler_output
        return text_features / text_features.norm(dim=-1, keepdim=True), masks

    # ----- forward ------------------------------------------------------------------------------------------------

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        output_text_masks: bool | None = None,
        return_logits: bool = True,
        **kwargs,
    ) -> tuple | SmartCLIPOutput:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(text_batch_size, sequence_length)`): caption token ids.
            pixel_values (`torch.FloatTensor` of shape `(image_batch_size, 3, height, width)`): images.
            attention_mask (`torch.Tensor` of shape `(text_batch_size, sequence_length)`, *optional*): 1 = token.
            position_ids (`torch.LongTensor` of shape `(text_batch_size, sequence_length)`, *optional*): as CLIP's.
            return_loss (`bool`, *optional*): compute `config.loss_type`'s loss; caption i must describe image i.
            interpolate_pos_encoding (`bool`, defaults to `False`): as CLIP's, for images of another size.
            output_text_masks (`bool`, *optional*): run the mask head and return `text_masks` / `text_mask_probs`.
                `None` runs it only where it is used: under `config.scoring == "modular"` or for the modular loss.
                Plain scoring without a loss (the zero-shot pipeline) then costs what CLIP costs; pass `True` to get
                the masks anyway (a training objective that uses them), or call `get_text_masks`.
            return_logits (`bool`, defaults to `True`): compute `logits_per_image` / `logits_per_text`. A trainer
                that computes its loss from `text_embeds` / `image_embeds` passes `False`, so the `(n_text, n_image)`
                scores are not computed (and kept for backward) twice.
            return_dict (`bool`, *optional*): `False` returns a tuple (the set fields in order), as CLIPModel does;
                defaults to `config.return_dict`.

        Other keyword arguments (`output_attentions`, `output_hidden_states`) go to both towers. The logit scale is
        `exp(logit_scale)` capped at 100, as in CLIP's training.
        """
        if input_ids is None or pixel_values is None:
            raise ValueError(
                "SmartCLIPModel.forward needs both `input_ids` (tokenized captions) and `pixel_values` (images); got "
                f"input_ids={'None' if input_ids is None else tuple(input_ids.shape)}, "
                f"pixel_values={'None' if pixel_values is None else tuple(pixel_values.shape)}."
            )
        if return_loss and len(input_ids) != len(pixel_values):
            raise ValueError(
                f"return_loss=True pairs caption i with image i, but input_ids has {len(input_ids)} captions and "
                f"pixel_values {len(pixel_values)} images."
            )
        uses_modular_loss = bool(return_loss) and self.config.loss_type == "smartclip"
        masks_needed = uses_modular_loss or (return_logits and self.config.scoring == "modular")
        if output_text_masks is None:
            output_text_masks = masks_needed
        elif masks_needed and not output_text_masks:
            raise ValueError(
                f"output_text_masks=False, but scoring={self.config.scoring!r} / loss_type={self.config.loss_type!r} "
                "with these arguments needs the masks."
            )

        vision_outputs = self.get_image_features(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
        )
        text_outputs, text_masks, text_mask_probs = self._text_tower(
            input_ids, attention_mask, position_ids, output_text_masks, **kwargs
        )
        image_embeds = vision_outputs.pooler_output
        image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)  # (n_image, D)
        text_embeds = text_outputs.pooler_output
        text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True)  # (n_text, D)

        logits_per_text = loss = None
        if return_logits:
            scale = scale_from_log(self.logit_scale)
            logits_per_text = similarity(text_embeds, image_embeds, text_masks, self.config.scoring, scale=scale)
        if return_loss and uses_modular_loss:
            config = self.config
            loss = modular_loss(text_embeds, image_embeds, text_masks, text_mask_probs, self.logit_scale,
                                config.lambda_align, config.lambda_sparsity, config.sparsity_reduction)
        elif return_loss:
            loss = clip_loss(text_embeds, image_embeds, self.logit_scale)

        return SmartCLIPOutput(
            loss=loss,
            logits_per_image=None if logits_per_text is None else logits_per_text.T,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
            text_masks=text_masks,
            text_mask_probs=text_mask_probs,
        )

    def save_pretrained(self, save_directory, *args, **kwargs):
        # A class registers for one auto class only; the zero-shot pipeline loads through this one.
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            "AutoModelForZeroShotImageClassification": f"{self.__module__.split('.')[-1]}.{type(self).__name__}",
        }
        return super().save_pretrained(save_directory, *args, **kwargs)


SmartCLIPConfig.register_for_auto_class()
SmartCLIPModel.register_for_auto_class("AutoModel")

__all__ = ["SmartCLIPModel", "SmartCLIPOutput", "SmartCLIPPreTrainedModel", "stretch_position_embedding"]
