"""`smartclip-train-mcip`: `smartclip-train` with one MCIP stage (`--stage mcip|realign|gpr`).

Every `smartclip-train` flag works (`--objective` excepted: the stage decides the objective); MCIP's own flags are
below. The core trainer knows nothing of MCIP: this script hands `run_training` the objective, the batches with
class labels and captions, and a callback that freezes what the stage does not train and lends the optimizer the
class proxies.

    smartclip-train-mcip --stage mcip --model_name_or_path outputs/clip --output_dir outputs/mcip --max_steps 300
    smartclip-train-mcip --stage realign --model_name_or_path outputs/mcip --output_dir outputs/mcip_realign ...
    smartclip-train-mcip --stage gpr --dataset_name my/products --label_column class_id ...
"""

from dataclasses import dataclass, field

from transformers import TrainerCallback

from smartclip_train.collator import CaptionCollator
from smartclip_train.objectives import CLIPLoss, TrainingLoss
from smartclip_train.train import DataStep, run_command, run_training

from .batches import MCIPCollator, check_label_column, label_function, number_of_classes
from .objective import STAGES, MCIPLoss, freeze_for_stage

CLASS_HEAD = "mcip_class_head"  # the class proxies' name on the model while it trains


@dataclass
class MCIPArguments:
    """MCIP's own flags of `smartclip-train-mcip` (an `HfArgumentParser` dataclass)."""

    stage: str = field(
        default="mcip",
        metadata={"help": "mcip: image side with the class and the multi-caption ArcMargin (text side frozen); "
                  "realign: text side with CLIP's loss against the frozen image side; gpr: image side with the class "
                  "ArcMargin only.", "choices": STAGES},
    )
    label_column: str | None = field(
        default=None,
        metadata={"help": "Column of integer class labels; default on the built-in scenes: the slot, shape and colour "
                  "of the first object (64 classes)."},
    )
    num_classes: int | None = field(
        default=None, metadata={"help": "Class proxies; default: the ClassLabel's names, or the largest label + 1."}
    )
    mcip_class_weight: float = field(default=1.0, metadata={"help": "mcip stage: weight of the class ArcMargin."})
    mcip_caption_weight: float = field(
        default=1.0, metadata={"help": "mcip stage: weight of the multi-caption ArcMargin."}
    )
    mcip_num_captions: int = field(
        default=5, metadata={"help": "mcip stage: captions per image (K): its long caption, then its short ones."}
    )
    arc_scale: float = field(default=30.0, metadata={"help": "ArcMargin's scale s (both terms)."})
    arc_margin: float = field(default=0.2, metadata={"help": "ArcMargin's additive angular margin m, in radians."})

    def objective(self, local_loss: bool = False) -> TrainingLoss:
        """The stage's objective: `MCIPLoss` (class term only for gpr), or CLIP's loss for realign."""
        if self.stage == "realign":
            return CLIPLoss(local_loss)
        caption_weight = self.mcip_caption_weight if self.stage == "mcip" else 0.0
        class_weight = self.mcip_class_weight if self.stage == "mcip" else 1.0
        if caption_weight and self.mcip_num_captions < 1:
            raise ValueError(f"--mcip_num_captions={self.mcip_num_captions}; expected at least 1.")
        return MCIPLoss(class_weight, caption_weight, self.arc_scale, self.arc_margin, local_loss)


class MCIPStageCallback(TrainerCallback):
    """Freezes what the stage does not train before the optimizer is built, and attaches the class proxies to the
    model for the run (so the optimizer, checkpoints and DDP hold them); they are taken off again at the end of
    training, so the saved model is a plain SmartCLIP."""

    def __init__(self, stage: str, objective: TrainingLoss):
        self.stage, self.objective = stage, objective
        self.num_classes: int | None = None  # set by the data step

    def on_init_end(self, args, state, control, model=None, **kwargs):
        freeze_for_stage(model, self.stage)
        if isinstance(self.objective, MCIPLoss) and self.objective.class_weight and self.num_classes is not None:
            head = self.objective.build_class_head(self.num_classes, model.config.projection_dim)
            model.add_module(CLASS_HEAD, head.to(model.logit_scale.device))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if CLASS_HEAD in model._modules:
            del model._modules[CLASS_HEAD]


def mcip_data_step(objective: MCIPLoss, data_args, mcip_args: MCIPArguments, stage_callback: MCIPStageCallback,
                   **hub_kwargs) -> DataStep:
    """The batches `objective` reads (`MCIPCollator`); the class column is checked now and kept by the loader."""
    labels, named = None, None
    if objective.class_weight:
        if mcip_args.label_column is not None:
            named = check_label_column(data_args, mcip_args.label_column, **hub_kwargs)
        label_source, labels = label_function(data_args, mcip_args.label_column)
        data_args.keep_columns = (*data_args.keep_columns, label_source)

    def data_step(train_dataset, collator: CaptionCollator):
        if labels is not None:
            stage_callback.num_classes = mcip_args.num_classes or number_of_classes(
                train_dataset, data_args, mcip_args.label_column, named
            )
        num_captions = mcip_args.mcip_num_captions if objective.caption_weight else 0
        return train_dataset, MCIPCollator(collator, labels, num_captions, stage_callback.num_classes)

    return data_step


def run_mcip_training(model_args, data_args, training_args, mcip_args: MCIPArguments, callbacks=(), **kwargs) -> dict:
    """`run_training` with the stage's objective, batches and freezing; `kwargs` go to `run_training`."""
    objective = mcip_args.objective(model_args.local_loss)
    stage_callback = MCIPStageCallback(mcip_args.stage, objective)
    data_step = None
    if isinstance(objective, MCIPLoss):
        data_step = mcip_data_step(objective, data_args, mcip_args, stage_callback, **model_args.hub_kwargs())
    return run_training(model_args, data_args, training_args, objective=objective, data_step=data_step,
                        callbacks=[stage_callback, *callbacks], **kwargs)


def main(argv: list[str] | None = None) -> None:
    """Console script `smartclip-train-mcip`: every `smartclip-train` flag plus its own (`train.run_command`)."""
    run_command("smartclip-train-mcip", run_mcip_training, argv, (MCIPArguments,))


if __name__ == "__main__":
    main()


__all__ = ["MCIPArguments", "MCIPStageCallback", "main", "mcip_data_step", "run_mcip_training"]
