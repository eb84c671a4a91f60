"""`smartclip-compare`: the one-command demo. SmartCLIP against CLIP on the built-in scenes, side by side.

Every arm trains with the same towers, initialisation, data, caption draws, steps and seed; only the loss and the
mask head differ. Two comparisons, which show different things (see `miniature_findings.md`):

1. from scratch: CLIP, SmartCLIP (attention head, the paper's), SmartCLIP (union head);
2. fine-tuning, the paper's setting: the from-scratch CLIP is the pretrained start, then one arm per loss (CLIP,
   SmartCLIP attention, SmartCLIP union, and the random-mask control: the modular loss with random masks of the
   learned masks' density, which shows whether the learned, caption-dependent mask is what helps).

Each arm is evaluated on the held-out test scenes (long-caption and multi-caption retrieval, zero-shot, the
atomic-concept probe; SmartCLIP under plain and modular scoring, CLIP plainly) and the run writes, under
`--output_dir` (default `outputs/compare`): `results.json` (metrics per arm and the Trainer's log history),
`results.md` (the table), `smartclip/` (a hub-ready SmartCLIP: model, processor, code), `training_curves.png`,
`mask_usage.png`.

    smartclip-compare                      # the default run: minutes on 2 CPU cores
    smartclip-compare --quick              # a smoke test: seconds
"""

import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, TrainingArguments

from modeling_smartclip import SmartCLIPModel, SmartCLIPProcessor

from smartclip_data.sources import DataArguments, builtin_scenes
from smartclip_eval.sets import scene_eval_sets
from smartclip_eval.evaluate import evaluate_model, format_table, save_results
from .plots import plot_mask_usage, plot_training_curves
from smartclip_train.train import ModelArguments, run_training

logger = logging.getLogger(__name__)


@dataclass
class CompareArguments:
    output_dir: str = field(default="outputs/compare", metadata={"help": "Where every arm, the table and plots go."})
    num_train_scenes: int = field(default=20000, metadata={"help": "Training scenes."})
    num_test_scenes: int = field(default=1000, metadata={"help": "Held-out test scenes."})
    scratch_steps: int = field(default=1000, metadata={"help": "Steps of each from-scratch arm."})
    finetune_steps: int = field(default=500, metadata={"help": "Steps of each fine-tuning arm."})
    batch_size: int = field(default=128, metadata={"help": "Images per step (one caption each)."})
    scratch_learning_rate: float = field(default=1e-3, metadata={"help": "Towers' learning rate from scratch."})
    finetune_learning_rate: float = field(default=1e-4, metadata={"help": "Towers' learning rate when fine-tuning."})
    mask_learning_rate: float = field(default=1e-3, metadata={"help": "Mask head's learning rate (the paper's)."})
    p_long: float = field(default=0.5, metadata={"help": "Share of steps' captions that are the long caption."})
    seed: int = field(default=0, metadata={"help": "Seed of initialisation, data order and caption draws."})
    stages: str = field(default="scratch,finetune", metadata={"help": "Comma-separated: scratch, finetune."})
    publish: str = field(
        default="scratch/smartclip", metadata={"help": "The arm saved as the hub-ready `smartclip/` folder."}
    )
    quick: bool = field(default=False, metadata={"help": "Tiny smoke-test setting (overrides sizes and steps)."})

    def __post_init__(self):
        if self.quick:
            self.num_train_scenes, self.num_test_scenes = 64, 32
            self.scratch_steps, self.finetune_steps, self.batch_size = 3, 2, 16
        unknown = set(self.stages.split(",")) - {"scratch", "finetune"}
        if unknown:
            raise ValueError(f"--stages {self.stages}: unknown {sorted(unknown)}; expected scratch and/or finetune.")
        if "finetune" in self.stages and "scratch" not in self.stages:
            raise ValueError("--stages finetune needs the scratch stage: its CLIP arm is the pretrained start.")


# (arm name, --objective, --mask_pooling, scorings). CLIP and the control never train the head: plain scoring only.
SCRATCH_ARMS = (
    ("clip", "clip", None, ("plain",)),
    ("smartclip", "smartclip", "attention", ("plain", "modular")),
    ("smartclip-union", "smartclip", "union", ("plain", "modular")),
)
FINETUNE_ARMS = (*SCRATCH_ARMS, ("random-mask", "random_mask", None, ("plain",)))


def train_arm(args: CompareArguments, stage: str, arm: tuple, start: str | None, eval_sets) -> dict:
    """Trains and evaluates one arm; returns its metrics and log history."""
    name, objective, pooling, scorings = arm
    output_dir = Path(args.output_dir, stage, name)
    model_args = ModelArguments(
        model_name_or_path=start, objective=objective, mask_pooling=pooling, mask_learning_rate=args.mask_learning_rate
    )
    data_args = DataArguments(
        num_train_scenes=args.num_train_scenes, num_test_scenes=args.num_test_scenes,
        p_long=args.p_long, p_sentence=1 - args.p_long, p_short=0.0,
    )
    training_args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=args.scratch_steps if stage == "scratch" else args.finetune_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.scratch_learning_rate if stage == "scratch" else args.finetune_learning_rate,
        weight_decay=0.1,
        warmup_steps=0.05,
        lr_scheduler_type="cosine",
        logging_steps=min(25, args.finetune_steps),
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
    )
    logger.info("Training %s/%s (%s, %d steps)", stage, name, objective, training_args.max_steps)
    result = run_training(
        model_args, data_args, training_args, eval_fn=lambda model, processor: evaluate_model(model, processor, eval_sets, scorings)
    )
    return {**result["evaluation"], "log_history": result["log_history"], "output_dir": str(output_dir)}


def plot_masks(model_dir: str, sentences: list[str], path: Path, title: str) -> None:
    """The mask usage per concept of a trained SmartCLIP, on the test scenes' one-object sentences."""
    model = SmartCLIPModel.from_pretrained(model_dir).eval()
    processor = SmartCLIPProcessor.from_pretrained(model_dir)
    tokens = processor.tokenizer(sentences, return_tensors="pt", padding=True)
    with torch.no_grad():
        masks = model.get_text_masks(tokens["input_ids"], tokens["attention_mask"])
    plot_mask_usage(masks, sentences, str(path), title)


def run_compare(args: CompareArguments) -> dict:
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    test_split = builtin_scenes(args.num_train_scenes, args.num_test_scenes, 0)["test"]
    eval_sets = scene_eval_sets(test_split)

    runs: dict[str, dict] = {}
    for arm in SCRATCH_ARMS:
        runs[f"scratch/{arm[0]}"] = train_arm(args, "scratch", arm, None, eval_sets)
    if "finetune" in args.stages:
        # The pretrained start: the from-scratch CLIP's towers, as a plain CLIP checkpoint, so each arm converts
        # it with `from_clip` and gets a fresh head of its own kind.
        pretrained = output_dir / "pretrained-clip"
        SmartCLIPModel.from_pretrained(runs["scratch/clip"]["output_dir"]).to_clip().save_pretrained(pretrained)
        SmartCLIPProcessor.from_pretrained(runs["scratch/clip"]["output_dir"]).save_pretrained(pretrained)
        for arm in FINETUNE_ARMS:
            runs[f"finetune/{arm[0]}"] = train_arm(args, "finetune", arm, str(pretrained), eval_sets)

    # Report: results, table, plots and the hub-ready folder.
    save_results({"settings": asdict(args), **runs}, output_dir / "results.json")
    table = "\n\n".join(
        format_table({name: run for name, run in runs.items() if name.startswith(stage)}) for stage in ("scratch", "finetune")
    )
    (output_dir / "results.md").write_text(table + "\n")
    plot_training_curves({name: run["log_history"] for name, run in runs.items()}, str(output_dir / "training_curves.png"))
    publish = args.publish if args.publish in runs else "scratch/smartclip"
    sentences = sorted({s for captions in test_split["short_captions"] for s in captions})
    plot_masks(runs[publish]["output_dir"], sentences, output_dir / "mask_usage.png", f"{publish}: mask usage per concept")
    # Model, processor and code only: the Trainer's pickled arguments and states stay in the arm's folder.
    SmartCLIPModel.from_pretrained(runs[publish]["output_dir"]).save_pretrained(output_dir / "smartclip")
    SmartCLIPProcessor.from_pretrained(runs[publish]["output_dir"]).save_pretrained(output_dir / "smartclip")
    print(table)
    print(f"\nSaved: {output_dir / 'results.json'}, {output_dir / 'results.md'}, plots, and the hub-ready "
          f"SmartCLIP ({publish}) in {output_dir / 'smartclip'}.")
    return runs


def main(argv: list[str] | None = None) -> None:
    """Console script `smartclip-compare`."""
    (args,) = HfArgumentParser(CompareArguments).parse_args_into_dataclasses(args=sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    run_compare(args)


if __name__ == "__main__":
    main()
