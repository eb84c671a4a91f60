"""MCIP's objective on the image side, and which parameters each stage trains.

`MCIPLoss` is the single-label ArcMargin against learned class proxies (the `gpr` stage, the paper's retrieval
fine-tune "GPR-FT") plus, in the `mcip` stage, the multi-caption ArcMargin against the frozen text embeddings of each
image's captions. Both score the global batch: image embeddings, labels and caption embeddings are gathered from
every rank, so two processes train as one with the whole batch. The `realign` stage ("Re-A") is CLIP's contrastive
loss (`smartclip_train.objectives.CLIPLoss`) with the image side frozen.
"""

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel

from modeling_smartclip import SmartCLIPOutput
from smartclip_train.distributed import gather_features
from smartclip_train.objectives import CLIPLoss, TrainingLoss

from .losses import ArcMargin, multi_caption_arc_margin

STAGES = ("mcip", "realign", "gpr")
# The top-level `SmartCLIPModel` parameters each stage trains; every other one is frozen and left out of the
# optimizer (the mask head, which no stage uses, among them).
TRAINED = {
    "mcip": ("vision_model", "visual_projection"),
    "gpr": ("vision_model", "visual_projection"),
    "realign": ("text_model", "text_projection", "logit_scale"),
}


def freeze_for_stage(model, stage: str) -> None:
    """Turns off `requires_grad` of every parameter the stage does not train (`TRAINED`); the trained ones keep
    what other flags set (e.g. `--freeze_vision_model`)."""
    for name, param in model.named_parameters():
        if name.split(".")[0] not in TRAINED[stage]:
            param.requires_grad_(False)


class MCIPLoss(TrainingLoss):
    """`class_weight * ArcMargin(images, class labels) + caption_weight * multi_caption_arc_margin(images, captions)`.

    The class proxies (`class_head`, an `ArcMargin` with `num_classes` x D learned weights) are made by
    `build_class_head` once the model's embedding size is known; `methods/mcip/train.py` attaches them to the model
    for the run, so the trainer's optimizer holds them. An evaluation batch carries neither labels nor captions:
    its loss is CLIP's contrastive loss on the evaluation pairs, the text alignment MCIP means to keep.

    The training batch (`MCIPCollator`) holds `class_labels` `(B,)` when `class_weight > 0`, and
    `caption_input_ids` / `caption_attention_mask` `(B * K, T)`, `caption_valid` / `caption_keys` `(B, K)` when
    `caption_weight > 0`.
    """

    needs_text_masks = False

    def __init__(self, class_weight: float = 1.0, caption_weight: float = 1.0, scale: float = 30.0,
                 margin: float = 0.2, local_loss: bool = False):
        if class_weight < 0 or caption_weight < 0 or class_weight + caption_weight == 0:
            raise ValueError(f"MCIPLoss: class_weight={class_weight}, caption_weight={caption_weight}; expected "
                             "weights >= 0, not both 0.")
        if scale <= 0 or not 0 <= margin < torch.pi / 2:
            raise ValueError(f"MCIPLoss: scale={scale}, margin={margin}; expected scale > 0 and margin in [0, pi/2).")
        self.class_weight, self.caption_weight = class_weight, caption_weight
        self.scale, self.margin = scale, margin
        self.class_head: ArcMargin | None = None
        self.alignment = CLIPLoss(local_loss)

    def build_class_head(self, num_classes: int, embedding_size: int) -> ArcMargin:
        """The learned class proxies, `(embedding_size, num_classes)`, kept as `class_head`."""
        self.class_head = ArcMargin(num_classes, embedding_size, self.scale, self.margin)
        return self.class_head

    @torch.no_grad()
    def caption_embeds(self, model, batch: dict) -> torch.Tensor:
        """`(B, K, D)` unit embeddings of the batch's captions by the frozen text tower and projection."""
        features = extract_model_from_parallel(model).get_text_features(
            input_ids=batch["caption_input_ids"], attention_mask=batch["caption_attention_mask"]
        ).pooler_output  # (B * K, D)
        return F.normalize(features, dim=-1).reshape(*batch["caption_valid"].shape, -1)

    def __call__(self, model, outputs: SmartCLIPOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if "class_labels" not in batch and "caption_valid" not in batch:
            return self.alignment(model, outputs, batch)
        local = {"images": outputs.image_embeds}
        if self.class_weight:
            if self.class_head is None:
                raise ValueError("MCIPLoss: no class proxies; call build_class_head(num_classes, embedding_size).")
            local["labels"] = batch["class_labels"]
        if self.caption_weight:
            local |= {"captions": self.caption_embeds(model, batch), "valid": batch["caption_valid"],
                      "keys": batch["caption_keys"]}
        everyone = dict(zip(local, gather_features(*local.values())))  # the global batch
        loss, logs = 0.0, {}
        if self.class_weight:
            class_loss = self.class_head(everyone["images"], everyone["labels"])
            loss, logs["class_loss"] = loss + self.class_weight * class_loss, class_loss.item()
        if self.caption_weight:
            caption_loss = multi_caption_arc_margin(everyone["images"], everyone["captions"], everyone["valid"],
                                                    everyone["keys"], self.scale, self.margin)
            loss, logs["caption_loss"] = loss + self.caption_weight * caption_loss, caption_loss.item()
        return loss, logs


__all__ = ["MCIPLoss", "STAGES", "TRAINED", "freeze_for_stage"]
