"""Does SmartCLIP's mask work once it is set up as the paper sets it up? CLIP against both mask heads over a sweep of
`lambda_sparsity` (the paper's units), from scratch on the built-in scenes, over seeds.

Every arm trains through `run_training` (the code path of `smartclip-train`) with the same data order per seed and
keeps its final model, so the concept-level diagnostics (`smartclip_eval.mask_diagnostics`) can be computed from
the saved folders, now or by a later version (`--report_only`). An arm is `clip` or `<head>:<lambda>` with head
`union` or `attention`, e.g. `union:1e-3`. A gain is called only where it exceeds CLIP's spread (max - min) over
the seeds, as every table of this package.

    python -m smartclip_experiments.mask_sweep --seeds 0 --arms clip,union:0,union:1e-4,union:1e-3,union:1e-2
    python -m smartclip_experiments.mask_sweep --quick      # seconds: checks the script, measures nothing

Seeds or arms may run as separate processes with the same `--output_dir`; a last call with all of them and
`--report_only` writes the tables over every finished run. Under `--output_dir` (default `outputs/mask-sweep`):
`runs.jsonl` (one line per finished run: its key and final metrics), `runs/<scenes>-seed<s>-<arm>/` (the saved
models) and `results.md`.
"""

import json
import logging
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import HfArgumentParser

from modeling_smartclip import SmartCLIPModel, SmartCLIPProcessor
from smartclip_data.sources import DataArguments, builtin_scenes
from smartclip_eval.evaluate import evaluate_model
from smartclip_eval.mask_diagnostics import mask_diagnostics
from smartclip_eval.sets import scene_eval_sets
from smartclip_train.train import ModelArguments, SmartCLIPTrainingArguments, run_training

logger = logging.getLogger(__name__)

HEADS = ("union", "attention")
# Data options of each named scene set (`DataArguments` fields): each step's caption is the long caption or one
# sentence; the theory scenes' attribute-level and two-object captions are their short captions, drawn a third of
# the time.
SCENES = {
    "default": {"p_long": 0.5, "p_sentence": 0.5, "p_short": 0.0},
    "theory": {"scenes_partial_captions": True, "p_long": 1 / 3, "p_sentence": 1 / 3, "p_short": 1 / 3},
}


@dataclass
class MaskSweepArguments:
    output_dir: str = field(default="outputs/mask-sweep", metadata={"help": "Where runs and results.md go."})
    seeds: str = field(default="0,1,2", metadata={"help": "Comma-separated seeds."})
    arms: str = field(
        default="clip,union:0,union:1e-4,union:1e-3,union:1e-2,union:5e-2",
        metadata={"help": "Comma-separated: clip, or <head>:<lambda_sparsity> with head union or attention."},
    )
    scenes: str = field(default="default", metadata={"help": f"Scene set: one of {list(SCENES)}."})
    steps: int = field(default=1000, metadata={"help": "Training steps of every run."})
    batch_size: int = field(default=128, metadata={"help": "Images per step."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Towers' learning rate."})
    mask_learning_rate: float = field(default=1e-3, metadata={"help": "The mask head's learning rate."})
    num_train_scenes: int = field(default=20000, metadata={"help": "Training scenes."})
    num_test_scenes: int = field(default=1000, metadata={"help": "Held-out test scenes."})
    report_only: bool = field(default=False, metadata={"help": "Write the tables from finished runs; train nothing."})
    diagnose: bool = field(
        default=False, metadata={"help": "Compute the concept-level diagnostics of finished runs' saved models that "
                                 "lack them (into diagnostics.json)."}
    )
    quick: bool = field(default=False, metadata={"help": "Tiny smoke-test sizes (overrides sizes and steps)."})

    def __post_init__(self):
        if self.quick:
            self.steps, self.batch_size, self.num_train_scenes, self.num_test_scenes = 3, 8, 32, 16
        if self.scenes not in SCENES:
            raise ValueError(f"--scenes {self.scenes!r}; expected one of {list(SCENES)}.")
        self.seed_list = [int(seed) for seed in self.seeds.split(",")]
        self.arm_list = self.arms.split(",")
        for arm in self.arm_list:
            head, _, weight = arm.partition(":")
            if arm != "clip" and (head not in HEADS or not _is_number(weight)):
                raise ValueError(f"--arms: {arm!r}; expected clip or <head>:<lambda> with head in {HEADS}.")


def _is_number(text: str) -> bool:
    try:
        return float(text) >= 0
    except ValueError:
        return False


def run_name(args: MaskSweepArguments, seed: int, arm: str) -> str:
    return f"{args.scenes}-seed{seed}-{arm.replace(':', '-')}"


def train_one(args: MaskSweepArguments, seed: int, arm: str) -> dict:
    """Trains one arm with `seed`; returns its final metrics (`evaluate_model` on the scenes' test sets)."""
    data_args = DataArguments(
        num_train_scenes=args.num_train_scenes, num_test_scenes=args.num_test_scenes, **SCENES[args.scenes],
    )
    if arm == "clip":
        model_args = ModelArguments(objective="clip")
    else:
        head, _, weight = arm.partition(":")
        model_args = ModelArguments(objective="smartclip", mask_pooling=head, lambda_sparsity=float(weight),
                                    mask_learning_rate=args.mask_learning_rate)
    training_args = SmartCLIPTrainingArguments(
        output_dir=str(Path(args.output_dir, "runs", run_name(args, seed, arm))), overwrite_output_dir=True,
        max_steps=args.steps, per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate,
        weight_decay=0.1, lr_scheduler_type="linear", logging_steps=min(100, args.steps), save_strategy="no",
        report_to=[], seed=seed, use_cpu=not torch.cuda.is_available(),
    )
    scenes = builtin_scenes(args.num_train_scenes, args.num_test_scenes, 0, **_scene_options(data_args))
    eval_sets = scene_eval_sets(scenes["test"])
    scorings = ("plain",) if arm == "clip" else ("plain", "modular")
    start = time.monotonic()
    result = run_training(
        model_args, data_args, training_args,
        eval_fn=lambda model, processor: evaluate_model(model, processor, eval_sets, scorings=scorings),
    )
    return {"metrics": result["evaluation"], "seconds": round(time.monotonic() - start)}


def _scene_options(data_args: DataArguments) -> dict:
    """`builtin_scenes`' keyword arguments from the data flags, so evaluation uses the training's scene set."""
    return {"sizes": data_args.scenes_sizes, "slot_order": data_args.scenes_slot_order,
            "partial_captions": data_args.scenes_partial_captions}


def load_runs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def metric(run: dict, scoring: str, name: str) -> float | None:
    return run["metrics"].get(scoring, {}).get(name)


# (column, scoring, metric): the plain rows are CLIP's way of scoring, the modular rows the head's; "short" is
# retrieval with one-object sentences.
COLUMNS = (
    ("atomic plain", "plain", "scenes_atomic/acc"),
    ("atomic modular", "modular", "scenes_atomic/acc"),
    ("long T2I R@1 plain", "plain", "scenes_long/image_retrieval_recall@1"),
    ("long T2I R@1 modular", "modular", "scenes_long/image_retrieval_recall@1"),
    ("long I2T R@1 plain", "plain", "scenes_long/text_retrieval_recall@1"),
    ("long I2T R@1 modular", "modular", "scenes_long/text_retrieval_recall@1"),
    ("short T2I R@1 plain", "plain", "scenes_multi/image_retrieval_recall@1"),
    ("short T2I R@1 modular", "modular", "scenes_multi/image_retrieval_recall@1"),
)


def report(args: MaskSweepArguments, runs: list[dict], diagnostics: dict[str, dict]) -> str:
    """The sweep table (mean [min, max] over seeds), the gains over CLIP called beyond CLIP's spread, and the
    diagnostics of each arm's saved models."""
    by_arm = {arm: [r for r in runs if r["arm"] == arm and r["seed"] in args.seed_list] for arm in args.arm_list}
    lines = [f"## Scenes {args.scenes!r}: CLIP vs SmartCLIP over lambda_sparsity (paper units), {args.steps} steps, "
             f"batch {args.batch_size}", "",
             "| arm | seeds | " + " | ".join(c for c, _, _ in COLUMNS) + " | density long / sentence |",
             "|---|---|" + "---|" * (len(COLUMNS) + 1)]
    for arm, arm_runs in by_arm.items():
        if not arm_runs:
            continue
        cells = []
        for _, scoring, name in COLUMNS:
            values = [metric(r, scoring, name) for r in arm_runs]
            cells.append("-" if None in values else spread(values))
        density = [metric(r, "mask_stats", "scenes/density_long") for r in arm_runs]
        sentence = [metric(r, "mask_stats", "scenes/density_sentence") for r in arm_runs]
        cells.append("-" if None in density else f"{statistics.mean(density):.2f} / {statistics.mean(sentence):.2f}")
        lines.append(f"| {arm} | {len(arm_runs)} | " + " | ".join(cells) + " |")

    clip = {r["seed"]: r for r in by_arm.get("clip", [])}
    if len(clip) >= 2:
        lines += ["", "Gain over CLIP of the same seed (modular scoring against CLIP's plain), called only beyond "
                  "CLIP's spread over seeds:", "", "| arm | metric | gain per seed | CLIP spread | called |",
                  "|---|---|---|---|---|"]
        for arm, arm_runs in by_arm.items():
            paired = [(r, clip[r["seed"]]) for r in arm_runs if arm != "clip" and r["seed"] in clip]
            for column, _, name in COLUMNS[1::2]:
                if not paired:
                    continue
                clip_values = [metric(c, "plain", name) for c in clip.values()]
                threshold = max(clip_values) - min(clip_values)
                gains = [metric(r, "modular", name) - metric(c, "plain", name) for r, c in paired]
                called = sum(g > threshold for g in gains) - sum(g < -threshold for g in gains)
                verdict = ("gain" if called == len(gains) else "loss" if -called == len(gains) else "not called")
                if len(gains) == 1:  # beyond CLIP's spread, but the arm's own spread is unknown
                    verdict += " (one seed)"
                lines.append(f"| {arm} | {column.replace(' modular', '')} | {', '.join(f'{g:+.3f}' for g in gains)} | "
                             f"{threshold:.3f} | {verdict} |")
    if diagnostics:
        names = sorted({name for values in diagnostics.values() for name in values})
        lines += ["", "Concept-level mask diagnostics (docs/mask_diagnostics.md), mean over seeds:", "",
                  "| arm | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for arm in args.arm_list:
            seeds = [diagnostics[key] for key in diagnostics if key.endswith(f"-{arm.replace(':', '-')}")
                     and key.startswith(f"{args.scenes}-seed")]
            if seeds:
                cells = [spread([d[n] for d in seeds if n in d]) if any(n in d for d in seeds) else "-" for n in names]
                lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def diagnose_runs(args: MaskSweepArguments, runs: list[dict], path: Path) -> dict[str, dict]:
    """`{run name: mask_diagnostics of its saved model}` for every finished run, computing the missing ones."""
    diagnostics = json.loads(path.read_text()) if path.is_file() else {}
    test_split = None
    for run in runs:
        name = run_name(args, run["seed"], run["arm"])
        if name in diagnostics:
            continue
        if test_split is None:
            data_args = DataArguments(num_test_scenes=args.num_test_scenes, **SCENES[args.scenes])
            test_split = builtin_scenes(args.num_train_scenes, args.num_test_scenes, 0,
                                        **_scene_options(data_args))["test"]
        folder = Path(args.output_dir, "runs", name)
        model, processor = SmartCLIPModel.from_pretrained(folder), SmartCLIPProcessor.from_pretrained(folder)
        diagnostics[name] = mask_diagnostics(model, processor, test_split, masks=run["arm"] != "clip")
        path.write_text(json.dumps(diagnostics, indent=1))
    return diagnostics


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(MaskSweepArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    transformers.logging.set_verbosity_warning()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    runs_path = output_dir / "runs.jsonl"
    settings = {"scenes": args.scenes, "steps": args.steps, "batch_size": args.batch_size,
                "learning_rate": args.learning_rate, "mask_learning_rate": args.mask_learning_rate,
                "num_train_scenes": args.num_train_scenes, "num_test_scenes": args.num_test_scenes}
    for seed in args.seed_list:
        for arm in args.arm_list:
            done = any(r["seed"] == seed and r["arm"] == arm and r["settings"] == settings for r in load_runs(runs_path))
            if args.report_only or done:
                continue
            logger.info("%s scenes, seed %d, %s: %d steps", args.scenes, seed, arm, args.steps)
            run = {"seed": seed, "arm": arm, "settings": settings, **train_one(args, seed, arm)}
            with runs_path.open("a") as file:  # one line per finished run: concurrent processes may share it
                file.write(json.dumps(run) + "\n")
    runs = [run for run in load_runs(runs_path) if run["settings"] == settings]
    diagnostics_path = output_dir / "diagnostics.json"
    if args.diagnose:
        diagnostics = diagnose_runs(args, runs, diagnostics_path)
    else:
        diagnostics = json.loads(diagnostics_path.read_text()) if diagnostics_path.is_file() else {}
    text = report(args, runs, diagnostics)
    (output_dir / f"results-{args.scenes}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
