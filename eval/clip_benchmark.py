"""SmartCLIP for LAION's CLIP_benchmark and other open_clip-style code: `model.encode_image(pixel_values)`,
`model.encode_text(token_ids)` returning feature tensors, an image transform and a tokenizer callable.

    from clip_benchmark.datasets.builder import build_dataset
    from clip_benchmark.metrics import zeroshot_classification
    from smartclip_eval.clip_benchmark import wrap

    model_like, transform, tokenizer = wrap(model, processor, scoring="plain")
    dataset = build_dataset("cifar10", root="data", transform=transform, split="test")
    loader = torch.utils.data.DataLoader(dataset, batch_size=64)
    zeroshot_classification.evaluate(model_like, loader, tokenizer, dataset.classes, dataset.templates, "cuda")

What each scoring means under CLIP_benchmark. CLIP_benchmark encodes images and captions separately and scores a
pair by the dot product of the two normalised features (`texts_emb @ images_emb.T`, `image_features @ classifier`).

- `"plain"`: the features are CLIP's (`get_text_features` / `get_image_features`), so the numbers are exactly
  CLIP_benchmark's for the model scored as CLIP.
- `"modular"`: SmartCLIP's modular score `cos(image * mask(caption), caption)` divides by the norm of the image
  *restricted to the caption's mask*, which depends on the pair; no pair of per-item features gives it as a dot
  product (it would take one image feature per distinct mask). Here `encode_text` returns the caption's unit
  embedding restricted to its mask, `caption * mask(caption)`, and `encode_image` the image embedding, so
  CLIP_benchmark computes `cos(image, caption * mask(caption))`: the numerator of the modular score, divided by
  `|image| * |caption * mask|` instead of `|image * mask| * |caption|`. Zero-shot classifiers average these masked
  template features (CLIP_benchmark's prompt ensemble) rather than taking the union of the templates' masks.
  The exact modular numbers come from `smartclip-eval`, which scores every pair with `masking.similarity`.

The tokenizer returns `(n_text, seq_len)` token ids only, as CLIP_benchmark expects; `encode_text` rebuilds the
attention mask from the ids (every token up to and including the first end-of-text token), which the mask head
needs to leave padding out.
"""

import functools

import torch
from torch import nn

from modeling_smartclip import SmartCLIPModel, SmartCLIPProcessor
from modeling_smartclip.configuration_smartclip import SCORINGS


class SmartCLIPBenchmarkModel(nn.Module):
    """A SmartCLIP model with open_clip's `encode_image` / `encode_text` API, scored as `scoring` (see the module
    docstring)."""

    def __init__(self, model: SmartCLIPModel, scoring: str = "plain", eos_token_id: int | None = None):
        super().__init__()
        if scoring not in SCORINGS:
            raise ValueError(f"scoring={scoring!r}; expected one of {SCORINGS}.")
        self.model, self.scoring = model, scoring
        self.eos_token_id = model.config.text_config.eos_token_id if eos_token_id is None else eos_token_id

    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """`(n_image, 3, H, W)` pixel values to `(n_image, projection_dim)` image features."""
        features = self.model.get_image_features(pixel_values.to(self.model.dtype)).pooler_output
        return nn.functional.normalize(features, dim=-1) if normalize else features

    def encode_text(self, input_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """`(n_text, seq_len)` right-padded token ids to `(n_text, projection_dim)` caption features: CLIP's under
        plain scoring; the unit caption embedding times its mask under modular scoring."""
        is_eos = (input_ids == self.eos_token_id).long()
        attention_mask = (is_eos.cumsum(dim=1) - is_eos) == 0  # (n_text, seq_len): up to the first end-of-text
        if self.scoring == "plain":
            features = self.model.get_text_features(input_ids, attention_mask.long()).pooler_output
        else:
            text_embeds, text_masks = self.model.encode_text_and_masks(input_ids, attention_mask.long())  # (n_text, D) each
            features = text_embeds * text_masks
        return nn.functional.normalize(features, dim=-1) if normalize else features

    def forward(self, pixel_values: torch.Tensor | None = None, input_ids: torch.Tensor | None = None):
        """`(image_features, text_features)`, each `None` when its input is."""
        image = None if pixel_values is None else self.encode_image(pixel_values)
        text = None if input_ids is None else self.encode_text(input_ids)
        return image, text


def _pixel_values(image_processor, image) -> torch.Tensor:
    return image_processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]  # (3, H, W)


def _token_ids(processor: SmartCLIPProcessor, texts) -> torch.Tensor:
    texts = [texts] if isinstance(texts, str) else list(texts)
    return processor(text=texts, return_tensors="pt", padding=True, padding_side="right")["input_ids"]


def wrap(model: SmartCLIPModel, processor: SmartCLIPProcessor, scoring: str = "plain"):
    """`(model_like, transform, tokenizer)` for CLIP_benchmark's `zeroshot_classification.evaluate` and
    `zeroshot_retrieval.evaluate` (and open_clip-style code):

    - `model_like`: a `SmartCLIPBenchmarkModel` in eval mode with `encode_image` / `encode_text`;
    - `transform`: a PIL image to its `(3, H, W)` pixel values, for the dataset;
    - `tokenizer`: a caption or a list of captions to `(n_text, seq_len)` token ids (SmartCLIP's 248 positions).

    Both callables are picklable (for DataLoader workers). See the module docstring for what `scoring` means there.
    """
    transform = functools.partial(_pixel_values, processor.image_processor)
    tokenizer = functools.partial(_token_ids, processor)
    return SmartCLIPBenchmarkModel(model, scoring, processor.tokenizer.eos_token_id).eval(), transform, tokenizer


__all__ = ["SmartCLIPBenchmarkModel", "wrap"]
