"""Does Set-CLIP's use of unpaired data help when few pairs are known?

For each share of known pairs (5%, 20%, 100% of the built-in scenes' training split), two runs with the same seed,
steps, batch size and supervised term (fixed temperature 0.05, `--setclip_base`):

- `pairs only`: CLIP on the known pairs alone (every batch all pairs, the other Set-CLIP weights 0);
- `Set-CLIP`: one third of each batch pairs, the rest unpaired images and captions from the remaining items, with
  the SDD, MMD and both NT-Xent terms at the released ResNet weights. At 100% there is no unpaired rest: the runs
  differ only by the added terms.

Each trained model is scored on the scenes' test split (retrieval, zero-shot, the atomic probe with its held-out
(shape, colour) pairs) and a markdown table is printed. A thin script over Set-CLIP's trainer
(`smartclip_methods.setclip.train.run_setclip_training`) and
the evaluator (`smartclip_eval.evaluate.evaluate_model`). Towers start from scratch (the trainer's defaults).

    python -m smartclip_experiments.setclip [--steps 3000] [--fractions 0.05 0.2 1.0] [--base clip|smartclip] [--quick]
"""

import argparse
import shutil
from pathlib import Path

import torch

from smartclip_data.sources import builtin_scenes
from smartclip_eval.evaluate import evaluate_model
from smartclip_eval.sets import scene_eval_sets
from smartclip_eval.tables import save_results
from smartclip_methods.setclip.train import SetCLIPArguments, run_setclip_training
from smartclip_train.train import parse_args

METHODS = ("pairs only", "Set-CLIP")
# The table's columns: (set/metric key of evaluate_model, header).
COLUMNS = (
    ("scenes_long/image_retrieval_recall@1", "long T2I R@1"),
    ("scenes_long/text_retrieval_recall@1", "long I2T R@1"),
    ("scenes_multi/image_retrieval_recall@1", "short T2I R@1"),
    ("scenes_zeroshot/acc1", "zero-shot acc"),
    ("scenes_atomic/acc", "atomic acc"),
    ("scenes_atomic/acc_held_out", "atomic held-out acc"),
)


def method_flags(method: str) -> list[str]:
    """`smartclip-train-setclip` flags that make `method` out of the Set-CLIP loss (same supervised term in both)."""
    if method == "pairs only":
        off = ("sdd", "mmd", "image_ssl", "text_ssl")
        return ["--setclip_unpaired", "False"] + [flag for t in off for flag in (f"--setclip_{t}_weight", "0")]
    return []  # the released ResNet weights are the defaults


def train_flags(args, method: str, fraction: float, output_dir: str) -> list[str]:
    """The full `smartclip-train-setclip` command line of one run."""
    return [
        "--output_dir", output_dir, "--seed", str(args.seed),
        "--num_train_scenes", str(args.num_train), "--num_test_scenes", str(args.num_test),
        "--max_steps", str(args.steps), "--per_device_train_batch_size", str(args.batch_size),
        "--learning_rate", str(args.learning_rate), "--save_strategy", "no", "--report_to", "none",
        "--logging_steps", str(max(args.steps // 10, 1)),
        "--setclip_base", args.base, "--setclip_paired_fraction", str(fraction),
        "--setclip_pair_share", str(1 / 3), *args.augment_flags.split(), *method_flags(method), *args.trainer_flags.split(),
    ]


def train_and_evaluate(flags: list[str], eval_sets: list, scorings: tuple[str, ...]) -> dict:
    model_args, data_args, training_args, setclip_args = parse_args(flags, extra_arguments=(SetCLIPArguments,))
    report = run_setclip_training(
        model_args, data_args, training_args, setclip_args,
        eval_fn=lambda model, processor: evaluate_model(model, processor, eval_sets, scorings, batch_size=256),
    )
    return report["evaluation"]


def table(results: dict, scoring: str) -> str:
    lines = [
        "| paired | method | " + " | ".join(header for _, header in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for (fraction, method), result in results.items():
        cells = [result[scoring].get(key) for key, _ in COLUMNS]
        cells = ["–" if value is None else f"{value:.3f}" for value in cells]
        lines.append(f"| {fraction:.0%} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args) -> dict:
    if args.quick:
        args.steps, args.num_train, args.num_test, args.batch_size = 4, 300, 40, 12
    scorings = ("plain", "modular") if args.base == "smartclip" else ("plain",)
    # the trainer's own (cached) scenes, so this is exactly the test split the runs held out
    eval_sets = scene_eval_sets(builtin_scenes(args.num_train, args.num_test, 0)["test"])
    work = args.output_dir / "runs"

    results = {}
    for fraction in args.fractions:
        for method in METHODS:
            output_dir = work / f"{args.base}_{fraction:g}_{method.replace(' ', '_')}"
            print(f"[setclip] {fraction:.0%} paired, {method}: training {args.steps} steps")
            flags = train_flags(args, method, fraction, str(output_dir))
            results[(fraction, method)] = train_and_evaluate(flags, eval_sets, scorings)
            if not args.keep_models:
                shutil.rmtree(output_dir)

    tables = {scoring: table(results, scoring) for scoring in scorings}
    for scoring, text in tables.items():
        print(f"\n### Set-CLIP vs pairs only, base {args.base}, {scoring} scoring, {args.steps} steps\n\n{text}")
    return {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "runs": [{"paired_fraction": f, "method": m, **r} for (f, m), r in results.items()],
        "tables": tables,
    }


def arguments() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, measures nothing")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--output_dir", type=Path, default=Path("outputs/setclip_experiment"),
                   help="where results.json and (with --keep_models) the trained models go")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.2, 1.0], help="shares of known pairs")
    p.add_argument("--base", choices=["clip", "smartclip"], default="clip", help="the supervised term on pairs")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps of every run")
    p.add_argument("--batch_size", type=int, default=64, help="rows per batch (64 as released)")
    p.add_argument("--learning_rate", type=float, default=5e-4)
    p.add_argument("--num_train", type=int, default=20000, help="scenes training split size")
    p.add_argument("--num_test", type=int, default=1000, help="scenes test split size")
    p.add_argument("--seed", type=int, default=0, help="training seed of every run (the scenes use seed 0)")
    p.add_argument(
        "--augment_flags",
        default="--setclip_augment_min_scale 0.6 --setclip_augment_flip_p 0 --setclip_augment_strength 0.25 "
        "--setclip_augment_grayscale_p 0",
        help="second-view augmentation: mild by default, since the scenes' captions name colours and sides",
    )
    p.add_argument("--trainer_flags", default="", help="extra smartclip-train flags, e.g. --model_name_or_path")
    p.add_argument("--keep_models", action="store_true", help="keep the trained models under OUTPUT_DIR/runs")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = arguments().parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(args)
    save_results(result, args.output_dir / "results.json")
    print(f"wrote {args.output_dir / 'results.json'}")
    return result


if __name__ == "__main__":
    main()
