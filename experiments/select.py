"""Does selection find mismatched pairs, and does training on what it keeps help? A small run on the built-in scenes.

1. Teacher: a CLIP trained from scratch on clean scenes of another seed (the pool's images are new to it).
2. Pool: the scenes, with the captions of `--corrupt_fraction` of the pairs moved to other images of that share (each
   such pair is mismatched; the `mismatched` column says which), and the scenes' test split as the NormSim target.
3. `smartclip-select` with the teacher, keeping `1 - corrupt_fraction` by negCLIPLoss (unless `--fraction`):
   precision and recall of the dropped pairs as a detector of the mismatched ones, next to the same count dropped by
   CLIPScore (the teacher's cosine alone).
4. SmartCLIP from scratch on the selected subset and on the whole noisy pool, the same steps each, both evaluated on
   the test scenes.

    python -m smartclip_experiments.select --output_dir outputs/select_experiment --corrupt_fraction 0.3
"""

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from transformers import HfArgumentParser, TrainingArguments

from smartclip_data.sources import DataArguments, builtin_scenes
from smartclip_eval.evaluate import evaluate_model
from smartclip_eval.sets import scene_eval_sets
from smartclip_eval.tables import format_table, save_results
from smartclip_methods.select.pipeline import SelectArguments, run_selection
from smartclip_methods.select.selection import DROPPED_NEG_CLIP_LOSS, DROPPED_NORM_SIM, target_count
from smartclip_train.train import ModelArguments, run_training


@dataclass
class ExperimentArguments:
    output_dir: str = field(default="outputs/select_experiment", metadata={"help": "Where every part goes."})
    corrupt_fraction: float = field(default=0.3, metadata={"help": "Share of pool pairs given another image's captions."})
    pool_size: int = field(default=4000, metadata={"help": "Pairs in the pool (built-in scenes, seed 0)."})
    num_test_scenes: int = field(default=500, metadata={"help": "Test scenes: evaluation and the NormSim target."})
    teacher_scenes: int = field(default=4000, metadata={"help": "Clean scenes (seed 1) the teacher trains on."})
    teacher_steps: int = field(default=400, metadata={"help": "Teacher training steps."})
    student_steps: int = field(default=300, metadata={"help": "Steps of each student (selected and full pool)."})
    batch_size: int = field(default=64, metadata={"help": "Images per training step."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate (towers and head), from scratch."})
    fraction: float | None = field(default=None, metadata={"help": "negCLIPLoss share kept; default 1 - corrupt_fraction."})
    fraction_normsim: float | None = field(default=None, metadata={"help": "NormSim stage down to this share; off."})
    seed: int = field(default=0, metadata={"help": "Seed of the corruption, the batchings and training."})
    threads: int = field(default=1, metadata={"help": "torch CPU threads (the experiment shares the machine)."})


def swap_captions(pool: Dataset, fraction: float, seed: int) -> Dataset:
    """`pool` with the captions of `round(fraction * n)` rows moved one step along a random cycle of those rows (so
    none keeps its own), and a boolean column `mismatched`."""
    rng = np.random.default_rng(seed)
    cycle = rng.permutation(rng.choice(len(pool), target_count(fraction, len(pool)), replace=False))
    longs, shorts = pool["long_caption"], pool["short_captions"]
    new_longs, new_shorts = list(longs), list(shorts)
    for row, source in zip(cycle, np.roll(cycle, 1)):
        new_longs[row], new_shorts[row] = longs[source], shorts[source]
    mismatched = np.zeros(len(pool), dtype=bool)
    mismatched[cycle] = True
    pool = pool.remove_columns(["long_caption", "short_captions"])
    pool = pool.add_column("long_caption", new_longs).add_column("short_captions", new_shorts)
    return pool.add_column("mismatched", mismatched.tolist())


def detection(dropped: np.ndarray, mismatched: np.ndarray) -> dict[str, float]:
    """Precision and recall of the dropped pairs as a detector of the mismatched pairs."""
    hits = int((dropped & mismatched).sum())
    return {"dropped": int(dropped.sum()), "mismatched": int(mismatched.sum()), "mismatched_dropped": hits,
            "precision": hits / max(int(dropped.sum()), 1), "recall": hits / max(int(mismatched.sum()), 1)}


def clip_score_detection(cache_folder: Path, mismatched: np.ndarray, count: int) -> dict[str, float]:
    """The same detection when the `count` pairs of lowest CLIPScore (the teacher's cosine f_i.g_i) are dropped."""
    cosine = np.einsum("nd,nd->n", np.load(cache_folder / "image_embeds.npy"), np.load(cache_folder / "text_embeds.npy"))
    dropped = np.zeros(len(cosine), dtype=bool)
    dropped[np.argsort(cosine, kind="stable")[:count]] = True
    return detection(dropped, mismatched)


def train(args: ExperimentArguments, output_dir: Path, data_args: DataArguments, steps: int, objective: str,
          eval_fn=None) -> dict:
    training_args = TrainingArguments(
        output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate, weight_decay=0.1, warmup_steps=0.05, lr_scheduler_type="cosine",
        logging_steps=max(1, steps // 10), save_strategy="no", report_to=[], seed=args.seed,
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, disable_tqdm=True,
    )
    model_args = ModelArguments(objective=objective, mask_learning_rate=args.learning_rate, from_scratch=True)
    return run_training(model_args, data_args, training_args, eval_fn=eval_fn)


def run_experiment(args: ExperimentArguments) -> dict:
    torch.set_num_threads(args.threads)
    output_dir = Path(args.output_dir)
    scenes = builtin_scenes(args.pool_size, args.num_test_scenes, 0)

    # 1. The teacher: CLIP on clean scenes of another seed.
    teacher_dir = output_dir / "teacher"
    teacher_data = DataArguments(num_train_scenes=args.teacher_scenes, num_test_scenes=args.num_test_scenes, scenes_seed=1)
    train(args, teacher_dir, teacher_data, args.teacher_steps, "clip")

    # 2. The noisy pool (train) and the NormSim target (the test scenes).
    pool_dir = output_dir / "pool"
    pool = swap_captions(scenes["train"], args.corrupt_fraction, args.seed)
    DatasetDict({"train": pool, "test": scenes["test"]}).save_to_disk(str(pool_dir))
    mismatched = np.asarray(pool["mismatched"])

    # 3. Selection, and how well its dropped pairs match the mismatched ones.
    fraction = 1 - args.corrupt_fraction if args.fraction is None else args.fraction
    select_args = SelectArguments(
        teacher=str(teacher_dir), output_dir=str(output_dir / "selected"), fraction=fraction,
        fraction_normsim=args.fraction_normsim, target_split="test", seed=args.seed, batch_size=128,
    )
    pool_args = DataArguments(dataset_name=str(pool_dir), long_caption_column="long_caption",
                              short_captions_column="short_captions", num_test_scenes=args.num_test_scenes)
    report = run_selection(select_args, pool_args)
    decisions = np.load(report["outputs"]["decisions"])
    dropped = np.isin(decisions, [DROPPED_NEG_CLIP_LOSS, DROPPED_NORM_SIM])
    found = {
        "negCLIPLoss selection": detection(dropped, mismatched),
        "CLIPScore, same count": clip_score_detection(Path(report["cache"]["pool"]), mismatched, int(dropped.sum())),
    }

    # 4. Students: the same steps on the selected subset and on the whole noisy pool.
    eval_sets = scene_eval_sets(scenes["test"])
    evaluate = lambda model, processor: evaluate_model(model, processor, eval_sets)
    students, train_rows = {}, {"selected": report["counts"]["kept"], "full noisy pool": len(pool)}
    for name, dataset_name in (("selected", report["outputs"]["data"]), ("full noisy pool", str(pool_dir))):
        student_data = DataArguments(dataset_name=dataset_name, long_caption_column="long_caption",
                                     short_captions_column="short_captions")
        run = train(args, output_dir / "students" / name.replace(" ", "_"), student_data, args.student_steps,
                    "smartclip", evaluate)
        students[name] = run["evaluation"]

    results = {"arguments": asdict(args), "selection_counts": report["counts"], "cuts": report["cuts"],
               "detection": found, "students": students, "train_rows": train_rows}
    save_results(results, output_dir / "results.json")
    table = format_table({f"{name} ({train_rows[name]} pairs)": evaluation for name, evaluation in students.items()})
    lines = [
        f"Pool {args.pool_size} scenes, {args.corrupt_fraction:.0%} mismatched; kept {report['counts']['kept']} "
        f"(fraction {fraction}); students {args.student_steps} steps x {args.batch_size}.", "",
        "| dropping | dropped | mismatched dropped | precision | recall |", "|---|---|---|---|---|",
        *(f"| {name} | {d['dropped']} | {d['mismatched_dropped']} of {d['mismatched']} | {d['precision']:.3f} | "
          f"{d['recall']:.3f} |" for name, d in found.items()),
        "", table,
    ]
    (output_dir / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return results


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(ExperimentArguments).parse_args_into_dataclasses(args=argv)
    return run_experiment(args)


if __name__ == "__main__":
    main()


__all__ = ["ExperimentArguments", "clip_score_detection", "detection", "run_experiment", "swap_captions"]
