"""`smartclip-train`: train SmartCLIP (or the CLIP baseline, or the random-mask control) with the HF Trainer.

Start from a CLIP checkpoint (converted with `SmartCLIPModel.from_clip`), a SmartCLIP checkpoint, or small towers
from scratch; train on the built-in scenes or any `datasets` source. Every `TrainingArguments` option works
(mixed precision, gradient accumulation, `--resume_from_checkpoint`, `report_to`, `torch_compile`, `torchrun` /
`accelerate launch`). Reads top to bottom: arguments, model, loss, trainer, then `run_training` (data, train,
save, report) and `main`.

    smartclip-train --output_dir outputs/smartclip --max_steps 2000 --learning_rate 1e-3 --use_cpu
    smartclip-train --model_name_or_path openai/clip-vit-base-patch16 --freeze_first_positions 20 \
        --learning_rate 1e-6 --mask_learning_rate 1e-3 --dataset_name my/captions --long_caption_column caption ...
"""

import functools
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import transformers
from accelerate.utils import extract_model_from_parallel
from transformers import CLIPModel, HfArgumentParser, PretrainedConfig, Trainer, TrainingArguments, set_seed
from transformers.trainer_optimizer import is_optimizer_factory

from modeling_smartclip import SmartCLIPConfig, SmartCLIPModel, SmartCLIPProcessor

from .collator import CaptionCollator, CaptionEpochCallback
from .data import DataArguments, DropCounter, load_split
from .losses import LOSSES, TrainingLoss, build_loss
from .pairing import PairedUnpairedDataset, SetCLIPCollator
from .scratch import scratch_clip_config, scratch_processor
from .setclip import SetCLIPArguments, SetCLIPLoss

logger = logging.getLogger(__name__)
LOSSES["setclip"] = SetCLIPLoss  # built by build_training_loss from SetCLIPArguments

MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values")  # the rest of a batch is for the loss plug-in
POSITION_EMBEDDING = "text_model.embeddings.position_embedding.weight"
# Config fields that change the mask head's weights: a trained SmartCLIP cannot be loaded with other values.
HEAD_ARCHITECTURE = ("mask_pooling", "mask_hidden_size", "mask_num_attention_heads", "mask_intermediate_size")


# ----- arguments --------------------------------------------------------------------------------------------------


@dataclass
class ModelArguments:
    """The starting model, the loss and the mask head."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A CLIP checkpoint (converted on the fly), a SmartCLIP checkpoint, or None: small towers "
                  "from scratch for the built-in scenes."},
    )
    processor_name_or_path: str | None = field(
        default=None, metadata={"help": "Processor source; default: the model's."}
    )
    loss_type: str = field(default="smartclip", metadata={"help": f"Training loss, one of {sorted(LOSSES)}."})
    lambda_align: float | None = field(default=None, metadata={"help": "Weight of the masked contrastive term."})
    lambda_sparsity: float | None = field(default=None, metadata={"help": "Weight of the mean soft mask (L1) term."})
    random_mask_density: float | None = field(
        default=None, metadata={"help": "random_mask loss: density of the random masks; None: the head's current one."}
    )
    mask_pooling: str | None = field(default=None, metadata={"help": "Mask head pooling: attention (paper) or union."})
    mask_hidden_size: int | None = field(default=None, metadata={"help": "Mask head width; None: the text tower's."})
    mask_num_attention_heads: int | None = field(default=None, metadata={"help": "Mask head attention heads."})
    mask_intermediate_size: int | None = field(default=None, metadata={"help": "Mask head MLP width."})
    mask_threshold: float | None = field(default=None, metadata={"help": "Sigmoid threshold of the hard mask."})
    mask_learning_rate: float = field(
        default=1e-3,
        metadata={"help": "Learning rate of the mask head (towers: --learning_rate); the paper uses 1e-3."},
    )
    freeze_first_positions: int = field(
        default=0, metadata={"help": "Keep the first N text position rows fixed (Long-CLIP fine-tuning: 20)."}
    )
    scratch_hidden_size: int = field(default=64, metadata={"help": "From scratch: tower width."})
    scratch_num_layers: int = field(default=2, metadata={"help": "From scratch: layers per tower."})
    scratch_num_heads: int = field(default=4, metadata={"help": "From scratch: attention heads per tower."})
    scratch_patch_size: int = field(default=8, metadata={"help": "From scratch: ViT patch size."})
    scratch_projection_dim: int = field(default=64, metadata={"help": "From scratch: joint embedding size."})

    def config_overrides(self) -> dict:
        """The `SmartCLIPConfig` fields set on the command line."""
        names = ("lambda_align", "lambda_sparsity", "mask_threshold", *HEAD_ARCHITECTURE)
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


# ----- model ------------------------------------------------------------------------------------------------------


def load_model_and_processor(args: ModelArguments) -> tuple[SmartCLIPModel, SmartCLIPProcessor]:
    """The starting SmartCLIP and its processor, from `args.model_name_or_path` (CLIP, SmartCLIP or None)."""
    overrides = args.config_overrides()
    if args.model_name_or_path is None:
        processor = scratch_processor()
        clip_config = scratch_clip_config(
            processor, hidden_size=args.scratch_hidden_size, num_layers=args.scratch_num_layers,
            num_heads=args.scratch_num_heads, patch_size=args.scratch_patch_size,
            projection_dim=args.scratch_projection_dim,
        )
        return SmartCLIPModel.from_clip(CLIPModel(clip_config), **overrides), processor

    path = args.model_name_or_path
    processor_path = args.processor_name_or_path or path
    model_type = PretrainedConfig.get_config_dict(path)[0].get("model_type")
    if model_type == "clip":
        return SmartCLIPModel.from_clip(path, **overrides), SmartCLIPProcessor.from_clip(processor_path)
    if model_type == "smartclip":
        config = SmartCLIPConfig.from_pretrained(path)
        changed = {
            name: value for name, value in overrides.items()
            if name in HEAD_ARCHITECTURE and getattr(config, name) != value
        }
        if changed:
            raise ValueError(
                f"{path} is a trained SmartCLIP whose mask head was built with "
                f"{ {name: getattr(config, name) for name in changed} }; it cannot be loaded with {changed}. "
                "Start from a CLIP checkpoint to choose another head."
            )
        # The class is imported here, so nothing needs the checkpoint's copy of the code (and no prompt asks).
        processor = SmartCLIPProcessor.from_pretrained(processor_path, trust_remote_code=False)
        return SmartCLIPModel.from_pretrained(path, **overrides), processor
    raise ValueError(f"--model_name_or_path {path} has model_type {model_type!r}; expected 'clip' or 'smartclip'.")


def _zero_rows(grad: torch.Tensor, rows: int) -> torch.Tensor:
    return grad.index_fill(0, torch.arange(rows, device=grad.device), 0.0)


def freeze_position_rows(model: SmartCLIPModel, rows: int) -> None:
    """Keeps the first `rows` text position embeddings fixed, as Long-CLIP does with the 20 it does not stretch.

    A gradient hook zeroes their gradient; the trainer also leaves the position table out of weight decay
    (`no_decay`), which would otherwise shrink the frozen rows.
    """
    weight = model.text_model.embeddings.position_embedding.weight
    if not 0 <= rows <= len(weight):
        raise ValueError(f"--freeze_first_positions={rows}; expected 0 to {len(weight)} (the text positions).")
    if rows:
        weight.register_hook(functools.partial(_zero_rows, rows=rows))


# ----- loss -------------------------------------------------------------------------------------------------------


def build_training_loss(
    args: ModelArguments, config: SmartCLIPConfig, setclip_args: SetCLIPArguments | None = None
) -> TrainingLoss:
    """The `--loss_type` plug-in, weighted by the (possibly overridden) model config."""
    if args.random_mask_density is not None and args.loss_type != "random_mask":
        raise ValueError(f"--random_mask_density applies to --loss_type random_mask, not {args.loss_type!r}.")
    if args.loss_type == "clip":
        return build_loss("clip")
    if args.loss_type == "setclip":
        return SetCLIPLoss.from_arguments(setclip_args or SetCLIPArguments(), lambda_sparsity=config.lambda_sparsity)
    kwargs = {"lambda_align": config.lambda_align, "lambda_sparsity": config.lambda_sparsity}
    if args.loss_type == "random_mask":
        kwargs["density"] = args.random_mask_density
    return build_loss(args.loss_type, **kwargs)


def prepare_model_for_loss(model: SmartCLIPModel, loss: TrainingLoss) -> None:
    """Freezes a head the loss does not train, and records how the trained model scores: a model trained with the
    modular loss is saved with modular scoring, the CLIP baseline and the random-mask control with plain scoring."""
    model.mask_head.requires_grad_(loss.trains_mask_head)
    model.config.scoring = loss.scoring
    model.config.loss_type = loss.config_loss_type


# ----- trainer ----------------------------------------------------------------------------------------------------


class SmartCLIPTrainer(Trainer):
    """A `Trainer` whose loss is a `TrainingLoss` plug-in on the global batch, with a learning rate of its own for
    the mask head.

    Args:
        training_loss: the plug-in (`build_loss`).
        mask_learning_rate: learning rate of the mask head's parameters (the towers use `args.learning_rate`).
        no_decay: suffixes of parameter names kept out of weight decay (beyond biases and norms).
    """

    loss_is_scaled_for_ga = False  # the plug-in returns a per-batch mean; the Trainer divides by accumulation steps

    def __init__(self, *args, training_loss: TrainingLoss, mask_learning_rate: float = 1e-3,
                 no_decay: tuple[str, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.training_loss = training_loss
        self.mask_learning_rate = mask_learning_rate
        self.no_decay = tuple(no_decay)
        self._loss_logs: dict[str, list[float]] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The model runs without `return_loss`: the plug-in computes the loss once the features of all ranks are in.
        outputs = model(**{name: value for name, value in inputs.items() if name in MODEL_INPUTS})
        loss, logs = self.training_loss(model, outputs, inputs)
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


# ----- the run ----------------------------------------------------------------------------------------------------


def _drop_metrics(split: str, counts: dict[str, int]) -> dict[str, int]:
    return {f"{split}_dropped_{reason.replace(' ', '_')}": count for reason, count in counts.items()}


def run_training(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
    eval_fn: Callable[[SmartCLIPModel, SmartCLIPProcessor], dict] | None = None,
    callbacks: list | None = None,
    setclip_args: SetCLIPArguments | None = None,
) -> dict:
    """Trains, saves model and processor (safetensors) to `training_args.output_dir`, and reports.

    Args:
        eval_fn: called as `eval_fn(model, processor)` on the main process after training; its dict is returned
            under `"evaluation"` (e.g. `smartclip_train.evaluate`'s metrics).
        callbacks: extra `TrainerCallback`s.

    Returns:
        A JSON-serialisable dict: `output_dir`, `train` (the Trainer's metrics plus dropped-row counts),
        `eval` (eval loss, when `--eval_split` is set), `dropped` (`{split: {reason: count}}`), `log_history`,
        `evaluation`.
    """
    # Phase 1: settings this pipeline relies on.
    training_args.remove_unused_columns = False  # the collator reads the image and caption columns itself
    if training_args.eval_strategy != "no" and data_args.eval_split is None:
        raise ValueError(f"--eval_strategy {training_args.eval_strategy} needs --eval_split (built-in data: test).")
    if training_args.dataloader_persistent_workers and training_args.dataloader_num_workers > 0:
        logger.warning("--dataloader_persistent_workers: workers keep the first epoch's caption draws in later epochs.")
    resume = training_args.resume_from_checkpoint
    resume = True if resume in ("last", "true", "True") else resume  # the Trainer then finds the latest checkpoint
    set_seed(training_args.seed)  # before the model: initialisation is part of the run

    # Phase 2: model, processor and loss.
    model, processor = load_model_and_processor(model_args)
    loss = build_training_loss(model_args, model.config, setclip_args)
    prepare_model_for_loss(model, loss)
    freeze_position_rows(model, model_args.freeze_first_positions)

    # Phase 3: data, checked and cleaned, with a caption drawn per image and step by the collator.
    drops = {split: DropCounter(training_args.dataloader_num_workers) for split in ("train", "eval")}
    with training_args.main_process_first(desc="loading and checking the data"):
        train_dataset = load_split(data_args, data_args.train_split, drops["train"], data_args.max_train_samples)
        eval_dataset = None
        if data_args.eval_split is not None:
            eval_dataset = load_split(data_args, data_args.eval_split, drops["eval"], data_args.max_eval_samples)
    seed = training_args.seed if data_args.caption_seed is None else data_args.caption_seed
    collator = CaptionCollator(processor, data_args.p_long, data_args.p_sentence, data_args.p_short, seed=seed)
    data_collator = collator
    if model_args.loss_type == "setclip":  # batches with a share of known pairs, the rest unpaired
        setclip_args = setclip_args or SetCLIPArguments()
        train_dataset = PairedUnpairedDataset(
            train_dataset, training_args.per_device_train_batch_size, setclip_args.paired_fraction,
            setclip_args.pair_share, setclip_args.augment(), setclip_args.setclip_unpaired, seed=training_args.seed,
        )
        data_collator = SetCLIPCollator(collator)

    # Phase 4: train.
    trainer = SmartCLIPTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=data_collator,
        processing_class=processor,
        callbacks=[CaptionEpochCallback(collator), *(callbacks or [])],
        training_loss=loss,
        mask_learning_rate=model_args.mask_learning_rate,
        no_decay=(POSITION_EMBEDDING,) if model_args.freeze_first_positions else (),
    )
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()  # model (safetensors, remote code, scoring in its config) and processor
    eval_metrics = trainer.evaluate() if eval_dataset is not None else {}

    # Phase 5: report, dropped rows included (streamed data is counted as it is read, hence after evaluation).
    dropped = {"train": drops["train"].totals()}
    if eval_dataset is not None:
        dropped["eval"] = drops["eval"].totals()
    for split, counts in dropped.items():
        level = logging.WARNING if any(counts.values()) else logging.INFO
        logger.log(level, "Dropped %s rows: %s", split, ", ".join(f"{n} {reason}" for reason, n in counts.items()))
    train_metrics = {**train_result.metrics, **_drop_metrics("train", dropped["train"])}
    trainer.log_metrics("train", train_metrics)
    trainer.save_metrics("train", train_metrics)
    if eval_dataset is not None:
        eval_metrics = {**eval_metrics, **_drop_metrics("eval", dropped["eval"])}
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
    trainer.save_state()
    evaluation = {}
    if eval_fn is not None and trainer.is_world_process_zero():
        evaluation = eval_fn(trainer.model.eval(), processor)
    return {
        "output_dir": str(training_args.output_dir),
        "train": train_metrics,
        "eval": eval_metrics,
        "dropped": dropped,
        "log_history": trainer.state.log_history,
        "evaluation": evaluation,
    }


def parse_args(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, TrainingArguments, SetCLIPArguments]:
    """Command-line flags, or a single `.json` / `.yaml` file holding them."""
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments, SetCLIPArguments))
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(argv[0])
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(argv[0])
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv: list[str] | None = None) -> None:
    """Console script `smartclip-train`."""
    model_args, data_args, training_args, setclip_args = parse_args(argv)
    level = training_args.get_process_log_level()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level)
    transformers.utils.logging.set_verbosity(level)
    run_training(model_args, data_args, training_args, setclip_args=setclip_args)


if __name__ == "__main__":
    main()


__all__ = [
    "ModelArguments",
    "DataArguments",
    "SmartCLIPTrainer",
    "build_training_loss",
    "freeze_position_rows",
    "load_model_and_processor",
    "main",
    "parse_args",
    "prepare_model_for_loss",
    "run_training",
]
