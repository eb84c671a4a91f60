"""What does Sim-CLIP's robustness cost on the built-in scenes? A starting model against its Sim-CLIP fine-tunes.

Per seed: the starting model is `smartclip-compare`'s stage 1 ("pretrained": CLIP from scratch on one-object
sentences, `compare.train_arm`); from it, one Sim-CLIP fine-tune per training budget (`--train_eps`, released
defaults otherwise: 10 PGD steps of 1/255, momentum 0.9, random start), all with the same steps, batch and
learning rate. Every model is scored on the held-out test scenes: clean zero-shot top-1 and top-1 under
torchattacks' PGD at each `--eval_eps` (`smartclip_eval.robust`), beside long- and short-caption retrieval R@1
(`evaluate_model`), plain scoring. The table gives the mean and [min, max] over the seeds; `results.md`,
`results.json` and `robust_accuracy.png` go to `--output_dir`; a seed whose `seed<N>/results.json` holds the same
settings is read back, not rerun.

    OMP_NUM_THREADS=1 nice -n 10 python -m smartclip_experiments.simclip   # docs/simclip.md's table, 3 seeds
    python -m smartclip_experiments.simclip --quick                         # a smoke test: seconds
"""

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt
import torch
import transformers

from smartclip_data.sources import builtin_scenes
from smartclip_eval.evaluate import evaluate_model
from smartclip_eval.robust import eps_name, parse_eps, robust_evaluation
from smartclip_eval.sets import scene_eval_sets
from smartclip_methods.simclip.train import SimCLIPArguments, run_simclip_training
from smartclip_train.train import parse_args

from .compare import PRETRAIN, CompareArguments, Progress, train_arm

RETRIEVAL_COLUMNS = (
    ("long T2I", "scenes_long/image_retrieval_recall@1"),
    ("long I2T", "scenes_long/text_retrieval_recall@1"),
    ("short T2I", "scenes_multi/image_retrieval_recall@1"),
    ("short I2T", "scenes_multi/text_retrieval_recall@1"),
)


class Evaluator:
    """Clean metrics (`evaluate_model`, plain scoring) plus zero-shot top-1 under PGD at each budget."""

    def __init__(self, num_train: int, num_test: int, eval_eps: list[float], attack_steps: int):
        self.eval_sets = scene_eval_sets(builtin_scenes(num_train, num_test, 0)["test"])
        self.eval_eps, self.attack_steps = eval_eps, attack_steps

    def __call__(self, model, processor) -> dict:
        results = evaluate_model(model, processor, self.eval_sets, ("plain",), batch_size=256)
        robust = robust_evaluation(model, processor, self.eval_sets, ("plain",), "pgd", self.eval_eps,
                                   self.attack_steps, batch_size=256)
        results["plain"].update(robust["plain"])
        return results


def columns(eval_eps: list[float]) -> list[tuple[str, str]]:
    attacked = [(f"zero-shot PGD {eps_name(e)[3:]}/255", f"scenes_zeroshot/acc1_pgd_{eps_name(e)}") for e in eval_eps]
    return [("zero-shot clean", "scenes_zeroshot/acc1"), *attacked, *RETRIEVAL_COLUMNS]


def simclip_flags(args, start: str, output_dir: Path, seed: int, train_eps: str) -> list[str]:
    """The `smartclip-train-simclip` command line of one fine-tune."""
    return [
        "--model_name_or_path", start, "--output_dir", str(output_dir), "--seed", str(seed),
        "--num_train_scenes", str(args.num_train), "--num_test_scenes", str(args.num_test),
        "--p_long", "0.5", "--p_sentence", "0.5", "--p_short", "0",
        "--max_steps", str(args.finetune_steps), "--per_device_train_batch_size", str(args.batch_size),
        "--learning_rate", str(args.learning_rate), "--weight_decay", "1e-5", "--lr_scheduler_type", "cosine",
        "--warmup_steps", "0.14", "--logging_steps", str(max(args.finetune_steps // 5, 1)),
        "--save_strategy", "no", "--report_to", "none", "--use_cpu", "--simclip_eps", train_eps,
    ]


def summarise(runs: dict[int, dict[str, dict]], cols: list[tuple[str, str]]) -> dict[str, dict[str, list[float]]]:
    """`{arm: {column: [value per seed]}}`, and for each fine-tune `"<arm> - starting model"`: its difference from
    the starting model it came from, seed by seed."""
    start, *tuned = list(next(iter(runs.values())))
    summary = {arm: {name: [runs[s][arm]["plain"][key] for s in runs] for name, key in cols} for arm in (start, *tuned)}
    for arm in tuned:
        summary[f"{arm} - {start}"] = {
            name: [a - b for a, b in zip(summary[arm][name], summary[start][name])] for name, _ in cols
        }
    return summary


def format_table(summary: dict, cols: list[tuple[str, str]]) -> str:
    """Mean [min, max] over seeds per cell; difference rows (`" - "` in the name) signed."""

    def cell(values: list[float], signed: bool) -> str:
        number = "{:+.3f}" if signed else "{:.3f}"
        mean = number.format(statistics.fmean(values))
        if len(values) == 1:
            return mean
        return f"{mean} [{number.format(min(values))}, {number.format(max(values))}]"

    lines = ["| model | " + " | ".join(name for name, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {arm} | " + " | ".join(cell(values[name], " - " in arm) for name, _ in cols) + " |"
              for arm, values in summary.items()]
    return "\n".join(lines)


def plot(summary: dict, eval_eps: list[float], path: Path) -> None:
    """Zero-shot top-1 against the attack budget, one line per model: mean over seeds, bars from min to max."""
    budgets = [0.0, *eval_eps]
    keys = ["zero-shot clean", *[f"zero-shot PGD {eps_name(e)[3:]}/255" for e in eval_eps]]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for arm, values in summary.items():
        if " - " in arm:  # differences are in the table only
            continue
        means = [statistics.fmean(values[k]) for k in keys]
        low = [m - min(values[k]) for m, k in zip(means, keys)]
        high = [max(values[k]) - m for m, k in zip(means, keys)]
        ax.errorbar([b * 255 for b in budgets], means, yerr=[low, high], marker="o", capsize=3, label=arm)
    ax.set_xlabel("PGD budget eps (x 1/255)")
    ax.set_ylabel("zero-shot top-1")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_seed(args, seed: int, evaluator: Evaluator, progress: Progress) -> dict[str, dict]:
    compare_args = CompareArguments(
        output_dir=str(args.output_dir), num_train_scenes=args.num_train, num_test_scenes=args.num_test,
        probe_train_scenes=min(2000, args.num_train), pretrain_steps=args.pretrain_steps, batch_size=args.batch_size,
    )
    start = train_arm(compare_args, PRETRAIN, "pretrain", seed, None, evaluator, progress)
    runs = {"starting model": start}
    for train_eps in args.train_eps:
        label = f"Sim-CLIP eps {train_eps}"
        progress.begin(f"seed {seed}, {label}", args.finetune_steps)
        output_dir = args.output_dir / f"seed{seed}" / f"simclip_{eps_name(parse_eps(train_eps))}"
        flags = simclip_flags(args, start["output_dir"], output_dir, seed, train_eps)
        model_args, data_args, training_args, simclip_args = parse_args(flags, extra_arguments=(SimCLIPArguments,))
        wall = time.monotonic()
        report = run_simclip_training(model_args, data_args, training_args, simclip_args, eval_fn=evaluator)
        progress.end(args.finetune_steps)
        runs[label] = {**report["evaluation"], "log_history": report["log_history"],
                       "timing": {"wall_s": time.monotonic() - wall}}
    return runs


SEED_SETTINGS = ("num_train", "num_test", "pretrain_steps", "finetune_steps", "train_eps", "eval_eps", "attack_steps",
                 "learning_rate", "batch_size")


def saved_or_run_seed(args, seed: int, evaluator: Evaluator, progress: Progress) -> dict[str, dict]:
    """One seed's runs, read back from `seed<N>/results.json` when it was run with the same settings."""
    path = args.output_dir / f"seed{seed}" / "results.json"
    settings = {name: getattr(args, name) for name in SEED_SETTINGS}
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved["settings"] == settings:
            return saved["runs"]
    runs = run_seed(args, seed, evaluator, progress)
    kept = {arm: {k: v for k, v in run.items() if k != "log_history"} for arm, run in runs.items()}
    path.write_text(json.dumps({"settings": settings, "runs": kept}, indent=2, default=str) + "\n")
    return runs


def run(args) -> dict:
    if args.quick:
        args.num_train, args.num_test, args.batch_size = 64, 16, 8
        args.pretrain_steps, args.finetune_steps, args.attack_steps = 2, 2, 2
    eval_eps = [parse_eps(e) for e in args.eval_eps.split(",")]
    evaluator = Evaluator(args.num_train, args.num_test, eval_eps, args.attack_steps)
    seeds = [int(s) for s in args.seeds.split(",")]
    progress = Progress((args.pretrain_steps + args.finetune_steps * len(args.train_eps)) * len(seeds),
                        (1 + len(args.train_eps)) * len(seeds))
    wall = time.monotonic()
    runs = {seed: saved_or_run_seed(args, seed, evaluator, progress) for seed in seeds}
    cols = columns(eval_eps)
    summary = summarise(runs, cols)
    table = format_table(summary, cols)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    plot(summary, eval_eps, args.output_dir / "robust_accuracy.png")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (args.output_dir / "results.md").write_text(table + "\n")
    result = {"settings": settings, "wall_s": time.monotonic() - wall, "summary": summary,
              "seeds": {str(s): {arm: {k: v for k, v in r.items() if k != "log_history"} for arm, r in arms.items()}
                        for s, arms in runs.items()}}
    (args.output_dir / "results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(table)
    print(f"wrote {args.output_dir}/results.md, results.json, robust_accuracy.png in {result['wall_s'] / 60:.1f} min")
    return result


def arguments() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, measures nothing")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--output_dir", type=Path, default=Path("outputs/simclip_experiment"))
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (the scenes use seed 0)")
    p.add_argument("--pretrain_steps", type=int, default=400, help="steps of the starting model (compare's stage 1)")
    p.add_argument("--finetune_steps", type=int, default=80, help="steps of every Sim-CLIP fine-tune")
    p.add_argument("--train_eps", nargs="+", default=["4/255"], help="one Sim-CLIP fine-tune per training budget")
    p.add_argument("--eval_eps", default="2/255,4/255", help="PGD budgets of the robust zero-shot evaluation")
    p.add_argument("--attack_steps", type=int, default=10, help="PGD steps of the robust evaluation")
    p.add_argument("--learning_rate", type=float, default=1e-3, help="Sim-CLIP's learning rate (the release's 1e-3)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--num_train", type=int, default=20000, help="scenes training split size")
    p.add_argument("--num_test", type=int, default=500, help="scenes test split size")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = arguments().parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()  # the Trainer's progress bars, not its metric dumps
    return run(args)


if __name__ == "__main__":
    main()
