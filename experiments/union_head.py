"""Is the union head's modular gain real? CLIP against SmartCLIP's union head, from scratch, over seeds and settings.

A first two-seed run (unpublished) measured, through `smartclip-train`, a union-head gain on atomic concepts
(scored modularly) over CLIP of +0.22 with one seed and +0.01 with the other. This runs that comparison over enough seeds to count how often
the gain appears, in each of a few settings, and records along training what might decide it:

- the atomic probe (CLIP plain; the union head plain and modular) every `--record_steps`;
- the union head's masks on the test captions: density for long captions and for one sentence, the share of a
  sentence's mask inside its long caption's, and `sentence_overlap` (mean Jaccard index of two different
  sentences' masks: 1 when every caption gets the same mask).

Settings (each a change of the first):
- `package`: the first run's `smartclip-train` setting: built-in scenes, 2,000 steps, batch 128, learning rate 1e-3
  for towers and head, weight decay 0.1, linear decay without warm-up, 50/50 long caption or one sentence;
- `simple-scenes`: the first run's own scenes (no size, long captions in slot order; `--no_scenes_sizes
  --scenes_slot_order`); `no-sizes` and `slot-order` change one of the two;
- `head-lr-1e-2`: the head's learning rate 10x the towers';
- `cosine`: cosine decay with 5% warm-up (`smartclip-compare`'s schedule).

A setting that changes only the head shares its seed's CLIP run. The gain of a seed is union modular atomic
accuracy minus CLIP's, on the same data order; it is called only where it exceeds the spread (max - min) of CLIP's
atomic accuracy over the setting's seeds, the same rule as every table of this package.

    python -m smartclip_experiments.union_head --seeds 0,1,2 --settings package,simple-scenes
    python -m smartclip_experiments.union_head --quick      # seconds: checks the script, measures nothing

Seeds or settings may run as separate processes with the same `--output_dir`; a last call with all of them and
`--report_only` writes the tables over every finished run.

Under `--output_dir` (default `outputs/union-head`): `runs.jsonl` (one line per run: setting, seed, arm, final
metrics, trajectory; finished runs are reused on a later call), `results.md` (the tables), and the means over seeds
along training: `atomic_along_training.png`, `density_sentence_along_training.png`,
`density_long_along_training.png`, `sentence_overlap_along_training.png`.
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
from transformers import HfArgumentParser, TrainerCallback

from smartclip_data.sources import DataArguments, builtin_scenes
from smartclip_eval.evaluate import evaluate_model
from smartclip_eval.sets import AtomicProbeSet, MaskStatsSet, scene_eval_sets
from smartclip_train.train import ModelArguments, SmartCLIPTrainingArguments, run_training

from .plots import plot_training_curves

logger = logging.getLogger(__name__)

PACKAGE = {"scenes_sizes": True, "scenes_slot_order": False, "lr_scheduler_type": "linear", "warmup_steps": 0.0,
           "mask_learning_rate": 1e-3}
SETTINGS = {
    "package": PACKAGE,
    "simple-scenes": {**PACKAGE, "scenes_sizes": False, "scenes_slot_order": True},
    "no-sizes": {**PACKAGE, "scenes_sizes": False},
    "slot-order": {**PACKAGE, "scenes_slot_order": True},
    "head-lr-1e-2": {**PACKAGE, "mask_learning_rate": 1e-2},
    "cosine": {**PACKAGE, "lr_scheduler_type": "cosine", "warmup_steps": 0.05},
}
HEAD_ONLY = ("mask_learning_rate",)  # settings CLIP does not have
ATOMIC = "scenes_atomic/acc"


@dataclass
class UnionHeadArguments:
    output_dir: str = field(default="outputs/union-head", metadata={"help": "Where runs.jsonl and results.md go."})
    seeds: str = field(default="0,1,2", metadata={"help": "Comma-separated seeds."})
    settings: str = field(default="package", metadata={"help": f"Comma-separated, of: {', '.join(SETTINGS)}."})
    steps: int = field(default=2000, metadata={"help": "Training steps of every run."})
    batch_size: int = field(default=128, metadata={"help": "Images per step."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Towers' learning rate."})
    num_train_scenes: int = field(default=20000, metadata={"help": "Training scenes."})
    num_test_scenes: int = field(default=1000, metadata={"help": "Held-out test scenes."})
    record_steps: str = field(
        default="100,250,500,1000,1500", metadata={"help": "Steps at which the probe and mask statistics are recorded."}
    )
    report_only: bool = field(
        default=False, metadata={"help": "Write the tables from the finished runs in runs.jsonl; train nothing."}
    )
    quick: bool = field(default=False, metadata={"help": "Tiny smoke-test sizes (overrides sizes and steps)."})

    def __post_init__(self):
        if self.quick:
            self.steps, self.batch_size, self.num_train_scenes, self.num_test_scenes = 4, 8, 32, 16
            self.record_steps = "2"
        unknown = [name for name in self.settings.split(",") if name not in SETTINGS]
        if unknown:
            raise ValueError(f"--settings {self.settings}: unknown {unknown}; expected some of {list(SETTINGS)}.")
        self.setting_list = self.settings.split(",")
        self.seed_list = [int(seed) for seed in self.seeds.split(",")]
        self.record_list = [int(step) for step in self.record_steps.split(",")]


class TrajectoryCallback(TrainerCallback):
    """Records the atomic probe and the mask statistics on the test scenes at the chosen steps."""

    def __init__(self, eval_sets: list, scorings: tuple[str, ...], steps: list[int]):
        self.eval_sets, self.scorings, self.steps = eval_sets, scorings, set(steps)
        self.records = []

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step in self.steps:
            results = evaluate_model(model, processing_class, self.eval_sets, scorings=self.scorings)
            self.records.append({"step": state.global_step, **flatten(results)})


def flatten(results: dict) -> dict[str, float]:
    """`{"plain:scenes_atomic/acc": ..., "mask:scenes/density_long": ...}` from `evaluate_model`'s result."""
    flat = {f"{scoring}:{k}": v for scoring in ("plain", "modular") for k, v in results.get(scoring, {}).items()}
    return flat | {f"mask:{k}": v for k, v in results.get("mask_stats", {}).items()}


def run_key(setting: str, seed: int, arm: str) -> dict:
    """What decides a run's result: a CLIP run ignores the head's settings, so settings that differ only there
    share it."""
    values = {k: v for k, v in SETTINGS[setting].items() if arm == "union" or k not in HEAD_ONLY}
    return {"seed": seed, "arm": arm, **values}


def train_one(args: UnionHeadArguments, setting: str, seed: int, arm: str) -> dict:
    """Trains one arm ("clip" or "union") of `setting` with `seed`; returns its `run_key`, final metrics (`flatten`
    of every scene evaluation), trajectory (the records along training, then the final metrics) and seconds."""
    values = SETTINGS[setting]
    scenes = builtin_scenes(args.num_train_scenes, args.num_test_scenes, 0, values["scenes_sizes"],
                            values["scenes_slot_order"])
    eval_sets = scene_eval_sets(scenes["test"])
    along = [s for s in eval_sets if isinstance(s, (AtomicProbeSet, MaskStatsSet))]  # recorded along training
    scorings = ("plain", "modular") if arm == "union" else ("plain",)
    callback = TrajectoryCallback(along, scorings, args.record_list)
    model_args = ModelArguments(
        objective="smartclip" if arm == "union" else "clip", mask_pooling="union" if arm == "union" else None,
        mask_learning_rate=values["mask_learning_rate"],
    )
    data_args = DataArguments(
        num_train_scenes=args.num_train_scenes, num_test_scenes=args.num_test_scenes, p_long=0.5, p_sentence=0.5,
        p_short=0.0, scenes_sizes=values["scenes_sizes"], scenes_slot_order=values["scenes_slot_order"],
    )
    training_args = SmartCLIPTrainingArguments(
        output_dir=str(Path(args.output_dir, "runs", f"{setting}-seed{seed}-{arm}")), overwrite_output_dir=True,
        max_steps=args.steps, per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate,
        weight_decay=0.1, lr_scheduler_type=values["lr_scheduler_type"], warmup_steps=values["warmup_steps"],
        logging_steps=min(100, args.steps), save_strategy="no", report_to=[], seed=seed,
        use_cpu=not torch.cuda.is_available(),
    )
    start = time.monotonic()
    result = run_training(
        model_args, data_args, training_args, callbacks=[callback],
        eval_fn=lambda model, processor: evaluate_model(model, processor, eval_sets, scorings=scorings),
    )
    final = {"step": args.steps, **flatten(result["evaluation"])}
    return {**run_key(setting, seed, arm), "final": final, "trajectory": callback.records + [final],
            "seconds": round(time.monotonic() - start)}


def load_runs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def find_run(runs: list[dict], key: dict) -> dict | None:
    return next((run for run in runs if all(run.get(k) == v for k, v in key.items())), None)


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def correlation(xs: list[float], ys: list[float]) -> float:
    """Pearson's r; nan when either side is constant."""
    return torch.corrcoef(torch.tensor([xs, ys], dtype=torch.float64))[0, 1].item()


def report(args: UnionHeadArguments, runs: list[dict]) -> str:
    lines = ["## Union head (modular) vs CLIP (plain), atomic accuracy, from scratch", "",
             "| setting | seeds | CLIP | union modular | union plain | gain per seed | CLIP spread | gain called |",
             "|---|---|---|---|---|---|---|---|"]
    pairs = []  # (setting, seed, gain, union run)
    for setting in args.setting_list:
        clip = [find_run(runs, run_key(setting, seed, "clip")) for seed in args.seed_list]
        union = [find_run(runs, run_key(setting, seed, "union")) for seed in args.seed_list]
        done = [(seed, c, u) for seed, c, u in zip(args.seed_list, clip, union) if c and u]
        if not done:
            continue
        clip_atomic = [c["final"][f"plain:{ATOMIC}"] for _, c, _ in done]
        gains = [u["final"][f"modular:{ATOMIC}"] - c["final"][f"plain:{ATOMIC}"] for _, c, u in done]
        threshold = max(clip_atomic) - min(clip_atomic)
        called = sum(gain > threshold for gain in gains)
        pairs += [(setting, seed, gain, u) for (seed, _, u), gain in zip(done, gains)]
        lines.append(
            f"| {setting} | {len(done)} | {spread(clip_atomic)} | "
            f"{spread([u['final'][f'modular:{ATOMIC}'] for _, _, u in done])} | "
            f"{spread([u['final'][f'plain:{ATOMIC}'] for _, _, u in done])} | "
            f"{', '.join(f'{gain:+.3f}' for gain in gains)} | {threshold:.3f} | {called} of {len(done)} |"
        )
    lines += ["", "## Along training: atomic accuracy, the gain, and the union head's masks (mean [min, max] over seeds)",
              ""]
    stats = ("mask:scenes/density_long", "mask:scenes/density_sentence", "mask:scenes/sentence_in_long",
             "mask:scenes/sentence_overlap")
    lines += ["| setting | step | CLIP | union modular | gain | " + " | ".join(s.split("/")[1] for s in stats) + " |",
              "|---|---|---|---|---|" + "---|" * len(stats)]
    for setting in args.setting_list:
        union = [u["trajectory"] for s, _, _, u in pairs if s == setting]
        clip = [find_run(runs, run_key(setting, seed, "clip"))["trajectory"] for s, seed, _, _ in pairs if s == setting]
        for index, record in enumerate(union[0] if union else []):
            clip_atomic = [t[index][f"plain:{ATOMIC}"] for t in clip]
            union_atomic = [t[index][f"modular:{ATOMIC}"] for t in union]
            cells = [spread(clip_atomic), spread(union_atomic), spread([u - c for u, c in zip(union_atomic, clip_atomic)])]
            cells += [spread([t[index][s] for t in union]) for s in stats]
            lines.append(f"| {setting} | {record['step']} | " + " | ".join(cells) + " |")
    if len(pairs) >= 3:
        lines += ["", f"## What goes with the gain: Pearson's r over the {len(pairs)} (setting, seed) pairs", "",
                  "| statistic of the union head | " + " | ".join(f"step {r['step']}" for r in pairs[0][3]["trajectory"])
                  + " |", "|---|" + "---|" * len(pairs[0][3]["trajectory"])]
        gains = [gain for _, _, gain, _ in pairs]
        for stat in stats:
            cells = [correlation([u["trajectory"][i][stat] for *_, u in pairs], gains)
                     for i in range(len(pairs[0][3]["trajectory"]))]
            lines.append(f"| {stat.split(':')[1]} | " + " | ".join("-" if r != r else f"{r:+.2f}" for r in cells) + " |")
    return "\n".join(lines) + "\n"


def mean_trajectory(trajectories: list[list[dict]], key: str, name: str) -> list[dict]:
    """`[{"step": s, name: mean over the runs of key at s}, ...]`, as `plot_training_curves` reads a log history."""
    return [{"step": records[0]["step"], name: statistics.mean(record[key] for record in records)}
            for records in zip(*trajectories)]


def plot(args: UnionHeadArguments, runs: list[dict], output_dir: Path) -> None:
    """`atomic_along_training.png` (CLIP plain, union head modular) and one plot per mask statistic, each line the
    mean over the seeds of one setting."""
    by_setting = {setting: [find_run(runs, run_key(setting, seed, arm)) for seed in args.seed_list
                            for arm in ("clip", "union")] for setting in args.setting_list}
    atomic, masks = {}, {stat: {} for stat in ("density_sentence", "density_long", "sentence_overlap")}
    for setting, setting_runs in by_setting.items():
        clip = [run["trajectory"] for run in setting_runs if run and run["arm"] == "clip"]
        union = [run["trajectory"] for run in setting_runs if run and run["arm"] == "union"]
        if clip and union:
            atomic[f"{setting}: CLIP"] = mean_trajectory(clip, f"plain:{ATOMIC}", "atomic")
            atomic[f"{setting}: union, modular"] = mean_trajectory(union, f"modular:{ATOMIC}", "atomic")
            for stat, curves in masks.items():
                curves[setting] = mean_trajectory(union, f"mask:scenes/{stat}", stat)
    plot_training_curves(atomic, output_dir / "atomic_along_training.png", key="atomic")
    for stat, curves in masks.items():
        plot_training_curves(curves, output_dir / f"{stat}_along_training.png", key=stat)


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(UnionHeadArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    transformers.logging.set_verbosity_warning()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    runs_path = output_dir / "runs.jsonl"
    settings = {"steps": args.steps, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
                "num_train_scenes": args.num_train_scenes, "num_test_scenes": args.num_test_scenes,
                "record_steps": args.record_list}
    for setting in args.setting_list:
        for seed in args.seed_list:
            for arm in ("clip", "union"):
                key = {**run_key(setting, seed, arm), "settings": settings}
                if args.report_only or find_run(load_runs(runs_path), key):
                    continue
                logger.info("%s, seed %d, %s: %d steps", setting, seed, arm, args.steps)
                run = train_one(args, setting, seed, arm)
                with runs_path.open("a") as file:  # one line per finished run: concurrent processes may share it
                    file.write(json.dumps({**run, "settings": settings}) + "\n")
    runs = [run for run in load_runs(runs_path) if run["settings"] == settings]
    text = report(args, runs)
    (output_dir / "results.md").write_text(text)
    plot(args, runs, output_dir)
    print(text)


if __name__ == "__main__":
    main()
