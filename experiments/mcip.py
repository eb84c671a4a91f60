"""MCIP on the built-in scenes: image-to-image retrieval against text-to-image retrieval, per training path.

Per seed: a CLIP trained from scratch on the scenes (the starting model, "start"), then from it, with the same
steps, learning rate and data order: the single-label retrieval fine-tune (`gpr`), `gpr` + re-alignment
(`realign`), `mcip`, and `mcip` + re-alignment. Each model is scored on the test scenes: I2I mAP and R@1 on the
scenes' classes (`smartclip_eval.image_retrieval.scene_class`) and T2I R@5 of long captions and of one-object
sentences. The table gives mean [min, max] over the seeds. Every run is a `smartclip-train` /
`smartclip-train-mcip` command line, printed as it starts and kept in `results.json`.

    OMP_NUM_THREADS=1 nice -n 10 python -m smartclip_experiments.mcip --seeds 0,1,2   # docs/mcip.md's table
    python -m smartclip_experiments.mcip --quick                                      # seconds: checks the script
"""

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from smartclip_data.sources import builtin_scenes
from smartclip_eval.evaluate import evaluate_model
from smartclip_eval.image_retrieval import scene_image_retrieval_set
from smartclip_eval.sets import scene_eval_sets
from smartclip_methods.mcip.train import MCIPArguments, run_mcip_training
from smartclip_train.train import parse_args, run_training

# (row, stage, the row it starts from); "start" is the CLIP trained from scratch.
PATHS = (
    ("gpr", "gpr", "start"),
    ("gpr + realign", "realign", "gpr"),
    ("mcip", "mcip", "start"),
    ("mcip + realign", "realign", "mcip"),
)
ROWS = ("start", *(row for row, _, _ in PATHS))
# The table's columns: (key of evaluate_model's plain results, header).
COLUMNS = (
    ("scenes_i2i/mAP", "I2I mAP"),
    ("scenes_i2i/R@1", "I2I R@1"),
    ("scenes_long/image_retrieval_recall@5", "long T2I R@5"),
    ("scenes_multi/image_retrieval_recall@5", "short T2I R@5"),
)


def common_flags(args, seed: int, output_dir: Path, steps: int, learning_rate: float) -> list[str]:
    return [
        "--output_dir", str(output_dir), "--seed", str(seed), "--max_steps", str(steps),
        "--learning_rate", str(learning_rate), "--per_device_train_batch_size", str(args.batch_size),
        "--num_train_scenes", str(args.num_train), "--num_test_scenes", str(args.num_test),
        "--warmup_steps", str(max(steps // 20, 1)), "--lr_scheduler_type", "cosine", "--weight_decay", "0.1",
        "--save_strategy", "no", "--report_to", "none", "--logging_steps", str(max(steps // 5, 1)),
        "--disable_tqdm", "True", "--use_cpu",
    ]


def evaluate(model, processor, eval_sets) -> dict:
    return evaluate_model(model, processor, eval_sets, ("plain",), batch_size=256)["plain"]


def run_seed(args, seed: int, eval_sets: list) -> tuple[dict, dict]:
    """`({row: plain metrics}, {row: command line})` of one seed."""
    work = args.output_dir / f"seed{seed}"
    results, commands = {}, {}
    flags = ["--objective", "clip", *common_flags(args, seed, work / "start", args.pretrain_steps, args.pretrain_lr)]
    commands["start"] = "smartclip-train " + " ".join(flags)
    print(f"[mcip] seed {seed}: {commands['start']}", flush=True)
    report = run_training(*parse_args(flags), eval_fn=lambda m, p: evaluate(m, p, eval_sets))
    results["start"] = report["evaluation"]
    for row, stage, start in PATHS:
        output_dir = work / row.replace(" + ", "_")
        flags = ["--stage", stage, "--model_name_or_path", str(work / start.replace(" + ", "_")),
                 *common_flags(args, seed, output_dir, args.steps, args.learning_rate)]
        commands[row] = "smartclip-train-mcip " + " ".join(flags)
        print(f"[mcip] seed {seed}: {commands[row]}", flush=True)
        report = run_mcip_training(*parse_args(flags, extra_arguments=(MCIPArguments,)),
                                   eval_fn=lambda m, p: evaluate(m, p, eval_sets))
        results[row] = report["evaluation"]
    if not args.keep_models:
        shutil.rmtree(work)
    return results, commands


def table(per_seed: dict[int, dict]) -> str:
    """Mean [min, max] over the seeds of every column, one row per training path."""
    lines = ["| model | " + " | ".join(header for _, header in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for row in ROWS:
        cells = []
        for key, _ in COLUMNS:
            values = [results[row][key] for results in per_seed.values()]
            spread = f" [{min(values):.3f}, {max(values):.3f}]" if len(values) > 1 else ""
            cells.append(f"{sum(values) / len(values):.3f}{spread}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args) -> dict:
    if args.quick:
        args.pretrain_steps, args.steps, args.num_train, args.num_test, args.batch_size = 4, 3, 200, 40, 16
    torch.set_num_threads(args.threads)
    # the trainer's own (cached) scenes, so these are exactly the test scenes every run held out
    test = builtin_scenes(args.num_train, args.num_test, 0)["test"]
    retrieval = scene_eval_sets(test)[:2]  # long captions, one-object sentences
    eval_sets = [*retrieval, scene_image_retrieval_set(test, images=retrieval[0].images)]
    started = time.perf_counter()
    per_seed, commands = {}, {}
    for seed in args.seeds:
        per_seed[seed], commands[seed] = run_seed(args, seed, eval_sets)
    text = table(per_seed)
    print(f"\n### MCIP on the built-in scenes, {len(args.seeds)} seed(s)\n\n{text}")
    report = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "minutes": (time.perf_counter() - started) / 60,
        "per_seed": per_seed,
        "commands": commands,
        "table": text,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def arguments() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, measures nothing")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--output_dir", type=Path, default=Path("outputs/mcip_experiment"))
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0])
    p.add_argument("--pretrain_steps", type=int, default=400, help="CLIP from scratch: the starting model")
    p.add_argument("--pretrain_lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=100, help="steps of every stage after the starting model")
    p.add_argument("--learning_rate", type=float, default=1e-3, help="learning rate of every stage")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--num_train", type=int, default=5000, help="training scenes")
    p.add_argument("--num_test", type=int, default=1000, help="test scenes (the I2I gallery and T2I set)")
    p.add_argument("--keep_models", action="store_true", help="keep every trained model under --output_dir")
    return p


def main(argv: list[str] | None = None) -> None:
    run(arguments().parse_args(argv))


if __name__ == "__main__":
    main()
