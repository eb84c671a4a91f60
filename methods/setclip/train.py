"""`smartclip-train-setclip`: `smartclip-train` with Set-CLIP's objective and its paired/unpaired batches.

Every `smartclip-train` flag works; Set-CLIP's own flags are the `--setclip_*` ones below. The core trainer knows
nothing of Set-CLIP: this script hands `run_training` the objective and a data step.

    smartclip-train-setclip --output_dir outputs/setclip --setclip_base smartclip --setclip_paired_fraction 0.2 \
        --per_device_train_batch_size 64 --max_steps 3000
"""

from dataclasses import dataclass, field

from modeling_smartclip.configuration_smartclip import LAMBDA_SPARSITY
from smartclip_train.collator import CaptionCollator
from smartclip_train.train import run_command, run_training

from .objective import SetCLIPLoss
from .pairing import PairedUnpairedDataset, SetCLIPCollator, SimCLRAugment


# ----- arguments ----------------------------------------------------------------------------------------


@dataclass
class SetCLIPArguments:
    """Set-CLIP's own flags of `smartclip-train-setclip` (an `HfArgumentParser` dataclass)."""

    setclip_base: str = field(
        default="clip",
        metadata={
            "help": "Supervised term on the pairs: 'clip' (plain cosine) or 'smartclip' (modular scoring).",
            "choices": ["clip", "smartclip"],
        },
    )
    setclip_paired_fraction: float = field(default=1.0, metadata={"help": "Share of the training set whose pairs are known."})
    setclip_pair_share: float = field(default=1 / 3, metadata={"help": "Share of each batch filled with known pairs."})
    setclip_unpaired: bool = field(
        default=True, metadata={"help": "Fill the rest of each batch from the unpaired pools (False: pairs only)."}
    )
    setclip_clip_weight: float = field(default=1.0, metadata={"help": "Weight of the supervised term."})
    setclip_sdd_weight: float = field(default=0.7, metadata={"help": "Weight of the SDD term."})
    setclip_mmd_weight: float = field(default=0.2, metadata={"help": "Weight of the MMD term."})
    setclip_image_ssl_weight: float = field(default=0.15, metadata={"help": "Weight of image NT-Xent (0 skips it)."})
    setclip_text_ssl_weight: float = field(default=0.15, metadata={"help": "Weight of text NT-Xent (0 skips it)."})
    setclip_temperature: float = field(default=0.05, metadata={"help": "Fixed temperature of all contrastive terms."})
    setclip_kde_bandwidth: float = field(default=0.5, metadata={"help": "KDE bandwidth h of the SDD term."})
    setclip_mmd_bandwidths: list[float] = field(default_factory=lambda: [1.0], metadata={"help": "MMD kernel bank."})
    setclip_text_dropout: float = field(
        default=0.1, metadata={"help": "Attention dropout of the second (SimCSE) text pass (0: the views are equal)."}
    )
    setclip_augment_min_scale: float = field(default=0.08, metadata={"help": "Smallest area share of the random resized crop."})
    setclip_augment_flip_p: float = field(default=0.5, metadata={"help": "Probability of a horizontal flip."})
    setclip_augment_strength: float = field(
        default=1.0, metadata={"help": "SimCLR colour strength s: jitter (0.8s, 0.8s, 0.8s, 0.2s) with p=0.8."}
    )
    setclip_augment_grayscale_p: float = field(default=0.2, metadata={"help": "Probability of a grayscale view."})

    def __post_init__(self):
        # Every contrastive term divides by it: 0 gives infinite logits and a NaN loss, a negative one inverts them.
        if not 0 < self.setclip_temperature < float("inf"):
            raise ValueError(f"--setclip_temperature={self.setclip_temperature}; expected a positive number.")

    def objective(self, lambda_sparsity: float) -> SetCLIPLoss:
        return SetCLIPLoss(
            base=self.setclip_base,
            clip_weight=self.setclip_clip_weight,
            sdd_weight=self.setclip_sdd_weight,
            mmd_weight=self.setclip_mmd_weight,
            image_ssl_weight=self.setclip_image_ssl_weight,
            text_ssl_weight=self.setclip_text_ssl_weight,
            temperature=self.setclip_temperature,
            ssl_temperature=self.setclip_temperature,
            kde_bandwidth=self.setclip_kde_bandwidth,
            mmd_bandwidths=self.setclip_mmd_bandwidths,
            text_dropout=self.setclip_text_dropout,
            lambda_sparsity=lambda_sparsity,
        )

    def augment(self) -> SimCLRAugment | None:
        """The image augmentation for the second view, or `None` when the image term is off."""
        if self.setclip_image_ssl_weight == 0:
            return None
        return SimCLRAugment(
            min_scale=self.setclip_augment_min_scale,
            flip_p=self.setclip_augment_flip_p,
            strength=self.setclip_augment_strength,
            grayscale_p=self.setclip_augment_grayscale_p,
        )


def run_setclip_training(model_args, data_args, training_args, setclip_args: SetCLIPArguments, **kwargs) -> dict:
    """`run_training` with Set-CLIP's objective and batches; `kwargs` go to `run_training` (e.g. `eval_fn`)."""

    def data_step(train_dataset, collator: CaptionCollator):
        # Batches with a share of known pairs, the rest drawn unpaired.
        paired = PairedUnpairedDataset(
            train_dataset, training_args.per_device_train_batch_size, setclip_args.setclip_paired_fraction,
            setclip_args.setclip_pair_share, setclip_args.augment(), setclip_args.setclip_unpaired,
            seed=training_args.seed,
        )
        return paired, SetCLIPCollator(collator)

    lambda_sparsity = LAMBDA_SPARSITY if model_args.lambda_sparsity is None else model_args.lambda_sparsity
    objective = setclip_args.objective(lambda_sparsity)
    return run_training(model_args, data_args, training_args, objective=objective, data_step=data_step, **kwargs)


def main(argv: list[str] | None = None) -> None:
    """Console script `smartclip-train-setclip`: every `smartclip-train` flag plus its own (`train.run_command`)."""
    run_command("smartclip-train-setclip", run_setclip_training, argv, (SetCLIPArguments,))


if __name__ == "__main__":
    main()


__all__ = ["SetCLIPArguments", "main", "run_setclip_training"]
