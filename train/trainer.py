"""`SmartCLIPTrainer`: the HF `Trainer` with an objective computed on the global batch, a learning rate of the mask
head's own, retrieval recall at each evaluation, and a final save that replaces the previous one whole."""

import hashlib
import logging
import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from huggingface_hub import HfApi
from transformers import EvalPrediction, Trainer
from transformers.trainer_utils import HubStrategy
from transformers.trainer_optimizer import is_optimizer_factory
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from modeling_smartclip.loading import non_finite_weights
from modeling_smartclip.masking import similarity
from smartclip_eval.metrics import RECALL_KS, retrieval_metrics
from smartclip_hub.code_pointers import strip_foreign_code
from smartclip_hub.push import push_model

from .collator import CaptionCollator
from .objectives import TrainingLoss
from .run_folder import STAGING_NAME, TRAINER_STATE_NAME, publish

logger = logging.getLogger(__name__)

MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values")  # the rest of a batch is for the objective
# The recall under plain scoring, logged beside the model's modular scoring: `eval_image_retrieval_recall@1_plain`.
PLAIN_SUFFIX = "_plain"


def image_keys(pixel_values: torch.Tensor) -> torch.Tensor:
    """`(B,)` int64 hashes of each image's pixels `(B, 3, H, W)`: one image listed with several captions (a csv of
    image-caption rows) gets one key, so each of its captions counts as right for it."""
    rows = pixel_values.detach().to("cpu", torch.float32).contiguous().numpy()
    keys = [int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little", signed=True) for row in rows]
    return torch.tensor(keys, device=pixel_values.device)


def recall_metrics(text_embeds: torch.Tensor, image_embeds: torch.Tensor, text_masks: torch.Tensor | None,
                   keys: torch.Tensor, scoring: str) -> dict[str, float]:
    """CLIP_benchmark's `{"image_retrieval_recall@k", "text_retrieval_recall@k"}` for k in `RECALL_KS` of the
    evaluation pairs, scored as `scoring` (the names `smartclip-eval` prints).

    Args:
        text_embeds, image_embeds: `(N, D)` features of the N evaluation pairs (caption i goes with image i).
        text_masks: `(N, D)` the captions' masks (modular scoring only).
        keys: `(N,)` `image_keys` of the images; a caption is right for every image with its image's key.
    """
    scores = similarity(F.normalize(text_embeds.float(), dim=-1), F.normalize(image_embeds.float(), dim=-1),
                        None if text_masks is None else text_masks.float(), scoring, chunk_size=1024)  # (N, N)
    return retrieval_metrics(scores, keys[:, None] == keys[None, :], ks=RECALL_KS)


def recall_by_scoring(eval_metrics: dict[str, float], scoring: str) -> dict[str, dict[str, float]] | None:
    """The recall among the Trainer's `eval_*` metrics as `{scoring: {"image_retrieval_recall@1": ...}}` (the model's
    scoring, and `"plain"` for the `PLAIN_SUFFIX` ones), the layout `smartclip-eval` and the model card use; None if
    the evaluation logged no recall."""
    results = {}
    for direction in ("image", "text"):
        for k in RECALL_KS:
            name = f"{direction}_retrieval_recall@{k}"
            for key, key_scoring in ((f"eval_{name}", scoring), (f"eval_{name}{PLAIN_SUFFIX}", "plain")):
                if key in eval_metrics:
                    results.setdefault(key_scoring, {})[name] = eval_metrics[key]
    return results or None


class SmartCLIPTrainer(Trainer):
    """A `Trainer` whose loss is a `TrainingLoss` plug-in on the global batch, with a learning rate of its own for
    the mask head.

    Evaluation reports, beside `eval_loss`, text-to-image and image-to-text recall on the evaluation pairs, under
    CLIP_benchmark's names as `smartclip-eval` prints them (`eval_image_retrieval_recall@1`,
    `eval_text_retrieval_recall@5`, ...), under the model's `config.scoring` (and, when that is modular, under plain
    scoring too, as `eval_image_retrieval_recall@1_plain`), so `--metric_for_best_model
    eval_image_retrieval_recall@1` works; `--prediction_loss_only`
    turns it off. `save_model` writes to a staging folder and then moves the files in (`run_folder.publish`).

    Args:
        training_loss: the plug-in (`build_objective`).
        mask_learning_rate: learning rate of the mask head's parameters (the towers use `args.learning_rate`).
        no_decay: suffixes of parameter names kept out of weight decay (beyond biases and norms).
    """

    loss_is_scaled_for_ga = False  # the plug-in returns a per-batch mean; the Trainer divides by accumulation steps

    def __init__(self, *args, training_loss: TrainingLoss, mask_learning_rate: float = 1e-3,
                 no_decay: tuple[str, ...] = (), **kwargs):
        kwargs.setdefault("compute_metrics", self.retrieval_recall)
        super().__init__(*args, **kwargs)
        self.training_loss = training_loss
        self.mask_learning_rate = mask_learning_rate
        self.no_decay = tuple(no_decay)
        self._loss_logs: dict[str, list[float]] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The model runs without `return_loss`: the plug-in computes the loss once the features of all ranks are in,
        # so `forward` skips its own (n, n) logits, and runs the mask head only for objectives that read the masks.
        outputs = model(
            **{name: value for name, value in inputs.items() if name in MODEL_INPUTS},
            output_text_masks=self.training_loss.needs_text_masks,
            return_logits=False,
        )
        loss, logs = self.training_loss(model, outputs, inputs)
        # A NaN or infinite loss is a diverged run (or bad inputs), never a result: the Trainer would log it as the
        # previous mean (`logging_nan_inf_filter`) and the recall of NaN scores as perfect.
        if not torch.isfinite(loss):
            when = f"training step {self.state.global_step + 1}" if model.training else (
                f"the evaluation after step {self.state.global_step}")
            raise ValueError(
                f"the loss of {when} is {loss.item()}: the run diverged or its inputs are not finite (try a lower "
                "--learning_rate); stopped before saving or evaluating further."
            )
        if model.training:
            for name, value in logs.items():
                self._loss_logs.setdefault(name, []).append(value)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._loss_logs:  # a training log: add the plug-in's means since the previous one
            logs.update({name: sum(values) / len(values) for name, values in self._loss_logs.items()})
            self._loss_logs = {}
        super().log(logs, start_time)

    def evaluate(self, *args, **kwargs) -> dict[str, float]:
        # Score the same captions at every evaluation, so that eval losses along training are comparable.
        if isinstance(self.data_collator, CaptionCollator):
            with self.data_collator.fixed_epoch(0):
                return super().evaluate(*args, **kwargs)
        return super().evaluate(*args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """`(eval loss, (text_embeds, image_embeds[, text_masks]), image_keys)` of a batch, for `retrieval_recall`."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        loss = loss.detach().mean()
        if prediction_loss_only:
            return loss, None, None
        pairs = len(outputs.image_embeds)  # an objective's extra texts (Long-CLIP's first sentences) come after
        features = (outputs.text_embeds[:pairs], outputs.image_embeds)
        if outputs.text_masks is not None:
            features += (outputs.text_masks[:pairs],)
        return loss, tuple(feature.detach() for feature in features), image_keys(inputs["pixel_values"])

    def retrieval_recall(self, prediction: EvalPrediction) -> dict[str, float]:
        """The default `compute_metrics`: recall@k of the evaluation pairs, gathered over all ranks."""
        text_embeds, image_embeds, *masks = (torch.as_tensor(array) for array in prediction.predictions)
        keys = torch.as_tensor(prediction.label_ids)
        scoring = extract_model_from_parallel(self.model).config.scoring
        metrics = recall_metrics(text_embeds, image_embeds, masks[0] if masks else None, keys, scoring)
        if scoring != "plain":  # how much the masks add, in the same log
            plain = recall_metrics(text_embeds, image_embeds, None, keys, "plain")
            metrics |= {f"{name}{PLAIN_SUFFIX}": value for name, value in plain.items()}
        return metrics

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Checkpoints as the Trainer writes them; the final model to a staging folder, then moved into place."""
        if _internal_call:
            return super().save_model(output_dir, _internal_call=True)
        output_dir = self.args.output_dir if output_dir is None else output_dir
        self._check_finite_weights()
        staging = os.path.join(output_dir, STAGING_NAME)
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # a failed save's leftovers
        super().save_model(staging, _internal_call=True)
        if self.args.should_save:
            publish(staging, output_dir)
        self.accelerator.wait_for_everyone()

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # The Trainer pickles its arguments into every save (`training_args.bin`): without the Hub token. And the
        # starting model's config and tokenizer write back whatever code pointers their source held: only ours stay.
        token, self.args.hub_token = self.args.hub_token, None
        try:
            super()._save(output_dir, state_dict)
        finally:
            self.args.hub_token = token
        if self.args.should_save:
            strip_foreign_code(self.args.output_dir if output_dir is None else output_dir)

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Names the repo `push_to_hub` commits to (it creates the repo on its first push)."""
        if self.args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
            raise ValueError(
                f"--hub_strategy {self.args.hub_strategy.value} uploads whole checkpoints (optimizer state, pickled "
                "arguments); smartclip-train pushes the model, processor and card only: use every_save or end."
            )
        self.hub_model_id = self.args.hub_model_id or Path(self.args.output_dir).absolute().name
        self.push_in_progress = None

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True,
                    token: str | None = None, revision: str | None = None, private: bool | None = None,
                    **kwargs) -> str | None:
        """Uploads the output folder as `smartclip-push` stages it (model, processor, card: no pickle, lock or
        token) in one commit; returns its URL on the main process."""
        return self._push_folder(self.args.output_dir, commit_message, token, revision, private)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if self.args.hub_strategy != HubStrategy.END:
            self._push_folder(checkpoint_folder, f"Training in progress, step {self.state.global_step}")

    def _push_folder(self, folder: str, commit_message: str | None, token: str | None = None,
                     revision: str | None = None, private: bool | None = None) -> str | None:
        if not self.is_world_process_zero():
            return None
        if self.hub_model_id is None:
            self.init_hf_repo()
        _, url = push_model(
            HfApi(token=token or self.args.hub_token), folder, self.hub_model_id,
            self.args.hub_private_repo if private is None else private, revision or self.args.hub_revision,
            commit_message or "Upload SmartCLIP model",
        )
        logger.info("Pushed %s to %s: %s", folder, self.hub_model_id, url)
        return url

    def _save_checkpoint(self, model, trial) -> None:
        # Saving again into an existing checkpoint folder (after resuming from an earlier one): remove its state file
        # first, so that a save cut short is never taken for complete (`run_folder.incomplete_reason`).
        checkpoint = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save and os.path.isfile(os.path.join(checkpoint, TRAINER_STATE_NAME)):
            os.remove(os.path.join(checkpoint, TRAINER_STATE_NAME))
        self._check_finite_weights()
        super()._save_checkpoint(model, trial)

    def _check_finite_weights(self) -> None:
        """A diverged last step leaves NaN weights behind a finite loss: they are never saved."""
        non_finite = non_finite_weights(extract_model_from_parallel(self.model))
        if non_finite:
            raise ValueError(
                f"after step {self.state.global_step}, {len(non_finite)} weights hold NaN or infinite values (the "
                f"first: {non_finite[0]}): the run diverged (try a lower --learning_rate); nothing was saved."
            )

    def get_decay_parameter_names(self, model) -> list[str]:
        return [name for name in super().get_decay_parameter_names(model) if not name.endswith(self.no_decay)]

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """The configured optimizer over four groups: (towers | mask head) x (decayed | not decayed)."""
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        head = {id(param) for param in extract_model_from_parallel(opt_model).mask_head.parameters()}
        decayed = set(self.get_decay_parameter_names(opt_model))
        groups = []
        for in_head, learning_rate in ((False, self.args.learning_rate), (True, self.mask_learning_rate)):
            for decay in (True, False):
                params = [
                    param for name, param in opt_model.named_parameters()
                    if param.requires_grad and (id(param) in head) == in_head and (name in decayed) == decay
                ]
                if params:
                    groups.append({"params": params, "lr": learning_rate,
                                   "weight_decay": self.args.weight_decay if decay else 0.0})
        optimizer_cls, optimizer_kwargs = (
            self.optimizer_cls_and_kwargs or self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        )
        if is_optimizer_factory(optimizer_cls) or {"params", "model", "optimizer_dict"} & set(optimizer_kwargs):
            raise ValueError(
                f"--optim {self.args.optim} builds its own parameter groups, so the mask head cannot get its own "
                "learning rate; choose an optimizer such as adamw_torch."
            )
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer


__all__ = ["MODEL_INPUTS", "PLAIN_SUFFIX", "SmartCLIPTrainer", "recall_by_scoring"]
