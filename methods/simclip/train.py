"""`smartclip-train-simclip`: `smartclip-train` with Sim-CLIP's objective, which makes the vision tower robust.

Every `smartclip-train` flag works; Sim-CLIP's own flags are the `--simclip_*` ones below, with the released
defaults (eps 4/255, 10 steps of 1/255, momentum 0.9, random start, no symmetric or clean term). The core trainer
knows nothing of Sim-CLIP: this script hands `run_training` the objective. The teacher is the starting checkpoint
(`--model_name_or_path`, a CLIP or SmartCLIP), loaded once more here, so a resumed run still compares with it;
everything but the image encoder is frozen (no Sim-CLIP term reads it), and the saved folder is the fine-tuned
model alone.

    smartclip-train-simclip --model_name_or_path outputs/compare/pretrained --output_dir outputs/simclip \
        --simclip_eps 4/255 --learning_rate 1e-5 --per_device_train_batch_size 64 --max_steps 2000
"""

from dataclasses import dataclass, field

from accelerate.utils import extract_model_from_parallel
from transformers import TrainerCallback

from smartclip_eval.robust import check_attack, parse_eps
from smartclip_train.train import load_starting_model, run_command, run_training

from .objective import SimCLIPLoss


@dataclass
class SimCLIPArguments:
    """Sim-CLIP's own flags of `smartclip-train-simclip` (an `HfArgumentParser` dataclass)."""

    simclip_eps: str = field(
        default="4/255", metadata={"help": "l_inf budget of the training attack in [0, 1] pixels (4/255 or 2/255)."}
    )
    simclip_steps: int = field(default=10, metadata={"help": "PGD steps of the training attack."})
    simclip_step_size: str = field(default="1/255", metadata={"help": "PGD step size in [0, 1] pixels."})
    simclip_momentum: float = field(default=0.9, metadata={"help": "Momentum of the attack's sign-gradient velocity."})
    simclip_random_start: bool = field(default=True, metadata={"help": "Start the attack uniformly in the eps ball."})
    simclip_symmetric_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the paper's symmetric term -cos(E(x), sg(E(x_adv))) (0: off, as released)."},
    )
    simclip_clean_weight: float = field(
        default=0.0, metadata={"help": "Weight of the clean term -cos(E(x), sg(E_0(x))) (0: off, as released)."}
    )

    def attack(self) -> dict:
        """The attack's keyword arguments, checked: one-line `ValueError`s naming the flag."""
        attack = dict(
            eps=parse_eps(self.simclip_eps, "--simclip_eps"), steps=self.simclip_steps,
            step_size=parse_eps(self.simclip_step_size, "--simclip_step_size"), momentum=self.simclip_momentum,
            random_start=self.simclip_random_start,
        )
        flags = "--simclip_eps/--simclip_steps/--simclip_step_size"
        check_attack(attack["eps"], attack["steps"], attack["step_size"], where=flags)
        return attack


class TrainImageEncoderOnly(TrainerCallback):
    """Freezes every parameter but the vision tower and its projection once the Trainer is built, before it makes its
    optimizer and its DDP wrapper: no Sim-CLIP term reaches the others, and DDP (run without a search for unused
    parameters) needs a gradient for every trainable one."""

    def on_init_end(self, args, state, control, model=None, **kwargs):
        for name, param in extract_model_from_parallel(model).named_parameters():
            if not name.startswith(("vision_model.", "visual_projection.")):
                param.requires_grad_(False)


def run_simclip_training(model_args, data_args, training_args, simclip_args: SimCLIPArguments, **kwargs) -> dict:
    """`run_training` with Sim-CLIP's objective; `kwargs` go to `run_training` (e.g. `eval_fn`)."""
    attack = simclip_args.attack()
    if model_args.model_name_or_path is None:
        raise ValueError("--model_name_or_path is required: Sim-CLIP fine-tunes a trained CLIP or SmartCLIP "
                         "checkpoint.")
    if model_args.freeze_vision_model:
        raise ValueError("--freeze_vision_model: Sim-CLIP trains the vision tower; drop the flag.")
    teacher_model, processor = load_starting_model(model_args)
    objective = SimCLIPLoss.from_model(
        teacher_model, processor, symmetric_weight=simclip_args.simclip_symmetric_weight,
        clean_weight=simclip_args.simclip_clean_weight, **attack,
    )
    del teacher_model  # the objective keeps a copy of its image encoder only
    callbacks = [TrainImageEncoderOnly(), *kwargs.pop("callbacks", [])]
    return run_training(model_args, data_args, training_args, objective=objective, callbacks=callbacks, **kwargs)


def main(argv: list[str] | None = None) -> None:
    """Console script `smartclip-train-simclip`: every `smartclip-train` flag plus its own (`train.run_command`)."""
    run_command("smartclip-train-simclip", run_simclip_training, argv, (SimCLIPArguments,))


if __name__ == "__main__":
    main()


__all__ = ["SimCLIPArguments", "TrainImageEncoderOnly", "main", "run_simclip_training"]
