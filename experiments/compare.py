"""`smartclip-compare`: the paper's experiment in miniature, on the built-in scenes.

SmartCLIP fine-tunes a CLIP pretrained on short captions with long captions, against Direct FT and Long-CLIP. Here:

1. stage 1, "pretrained": CLIP from scratch on one-object sentences only (the stand-in for a CLIP pretrained on
   short web captions);
2. stage 2, one arm per objective from that same checkpoint, with the same steps, data order and seed: Direct FT
   (CLIP loss, long captions only), Long-CLIP (long caption + first sentence against the PCA-reduced image),
   CLIP loss with SmartCLIP's sampling (one caption per image: the long caption or one of its sentences; this
   separates the sampling from the mask), SmartCLIP with the paper's head and with the union head (same sampling),
   and the random-mask control (the modular loss with random masks of the learned masks' density);
3. from scratch on the same sampling: CLIP against both heads.

Every arm is scored plainly (the paper's inference) and, when its mask head was trained, modularly too, on the
held-out test scenes: long-caption retrieval (R@1 both ways), short (one-sentence) retrieval, zero-shot,
the atomic-concept probe (held-out pairs too) and a linear probe of the frozen image embeddings (`probe.py`). With
`--seeds 0,1,2` every arm runs once per seed; the table gives the mean and [min, max], and marks a difference
(vs the pretrained row in stage 2, vs CLIP from scratch) only where the intervals do not overlap. The run ends
with the paper's predictions, each checked against the table.

Under `--output_dir` (default `outputs/compare`): `seed<N>/results.json` per seed (every arm's metrics under each
scoring, mask statistics, log history and timing, one arm per top-level key, as `smartclip-push --results` reads),
`results.json` (settings, timings, each table metric's values over the seeds, and every seed's arms under
`seed<N>`), `results.md` (tables and verdicts), `smartclip/` (a hub-ready SmartCLIP:
model, processor, code), `training_curves.png`, `mask_usage.png`. A seed whose `seed<N>/results.json` exists with
the same settings is reused, not retrained.

    smartclip-compare                      # one seed, every arm: under 10 minutes on 2 CPU cores
    smartclip-compare --seeds 0,1,2        # the README's table
    smartclip-compare --quick              # a smoke test: seconds
"""

import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import TrainingArguments

from modeling_smartclip import SmartCLIPModel, SmartCLIPProcessor
from smartclip_data.sources import DataArguments, builtin_scenes
from smartclip_eval.evaluate import evaluate_model
from smartclip_eval.sets import scene_eval_sets
from smartclip_eval.tables import save_results
from smartclip_hub.card import save_hub_ready
from smartclip_train.cli import user_errors
from smartclip_train.train import ModelArguments, parse_flags_or_file, run_training

from .plots import plot_mask_usage, plot_training_curves
from .probe import scene_probe

logger = logging.getLogger(__name__)


@dataclass
class CompareArguments:
    output_dir: str = field(default="outputs/compare", metadata={"help": "Where every arm, the table and plots go."})
    num_train_scenes: int = field(default=20000, metadata={"help": "Training scenes."})
    num_test_scenes: int = field(default=1000, metadata={"help": "Held-out test scenes."})
    probe_train_scenes: int = field(
        default=2000, metadata={"help": "Training scenes whose image embeddings fit the linear probe."}
    )
    pretrain_steps: int = field(default=1200, metadata={"help": "Stage 1: steps of CLIP on one-object sentences."})
    finetune_steps: int = field(default=300, metadata={"help": "Stage 2: steps of each fine-tuning arm."})
    scratch_steps: int = field(default=400, metadata={"help": "Steps of each from-scratch arm."})
    batch_size: int = field(default=64, metadata={"help": "Images per step (one caption each)."})
    scratch_learning_rate: float = field(
        default=1e-3, metadata={"help": "Towers' learning rate from scratch (stage 1 and the from-scratch arms)."}
    )
    finetune_learning_rate: float = field(default=3e-4, metadata={"help": "Towers' learning rate in stage 2."})
    mask_learning_rate: float = field(default=1e-3, metadata={"help": "Mask head's learning rate (the paper's)."})
    lambda_sparsity: float | None = field(
        default=None, metadata={"help": "Sparsity weight of every SmartCLIP arm, in the paper's units; None: the "
                                "config's default (`SmartCLIPConfig.lambda_sparsity`)."}
    )
    mask_threshold: float | None = field(
        default=None, metadata={"help": "Sigmoid threshold of the hard mask; None: the config's default."}
    )
    random_mask_density: float | None = field(
        default=None, metadata={"help": "Density of the random-mask control; None: measured from the trained "
                                "SmartCLIP arm (paper head) it controls, the mean over its last logged steps."}
    )
    p_long: float = field(
        default=0.5, metadata={"help": "SmartCLIP's sampling: share of the long caption (else one of its sentences)."}
    )
    scenes: str = field(
        default="default",
        metadata={"help": "Scene set: default, or theory (attribute-level and two-object captions beside the "
                  "one-object sentences, drawn as short captions: scenes the identifiability theory can resolve)."},
    )
    seeds: str = field(default="0", metadata={"help": "Comma-separated seeds; every arm runs once per seed."})
    stages: str = field(default="finetune,scratch", metadata={"help": "Comma-separated: finetune, scratch."})
    publish: str = field(
        default="finetune/smartclip", metadata={"help": "The arm (of the first seed) saved as `smartclip/`."}
    )
    quick: bool = field(default=False, metadata={"help": "Tiny smoke-test setting (overrides sizes and steps)."})

    def __post_init__(self):
        if self.quick:
            self.num_train_scenes, self.num_test_scenes, self.probe_train_scenes = 64, 32, 64
            self.pretrain_steps, self.finetune_steps, self.scratch_steps, self.batch_size = 3, 2, 2, 16
            if self.output_dir == "outputs/compare":  # a smoke test never shares a folder with a real run
                self.output_dir = "outputs/compare-quick"
        if self.scenes not in ("default", "theory"):
            raise ValueError(f"--scenes {self.scenes!r}; expected default or theory.")
        unknown = set(self.stages.split(",")) - {"finetune", "scratch"}
        if unknown:
            raise ValueError(f"--stages {self.stages}: unknown {sorted(unknown)}; expected finetune and/or scratch.")
        try:
            self.seed_list = [int(seed) for seed in self.seeds.split(",")]
        except ValueError:
            raise ValueError(f"--seeds {self.seeds!r}; expected comma-separated integers such as 0,1,2.") from None
        if self.probe_train_scenes > self.num_train_scenes:
            raise ValueError(
                f"--probe_train_scenes {self.probe_train_scenes} is more than --num_train_scenes "
                f"{self.num_train_scenes}; the probe is fitted on training scenes."
            )


@dataclass(frozen=True)
class Arm:
    """One training run. `p_long`: 1.0 long captions only, 0.0 one sentence only, None: `--p_long` (SmartCLIP's
    sampling: the long caption or one of its sentences)."""

    name: str
    objective: str
    description: str
    p_long: float | None = None
    mask_pooling: str | None = None


PRETRAIN = Arm("pretrained", "clip", "CLIP, one-object sentences only (stage 1)", p_long=0.0)
# In the order of the paper's tables: CLIP, Direct FT, Long-CLIP, SmartCLIP; then what separates sampling and mask.
FINETUNE_ARMS = (
    Arm("direct-ft", "clip", "Direct FT: CLIP loss, long captions only", p_long=1.0),
    Arm("longclip", "longclip", "Long-CLIP: long caption + first sentence vs PCA image", p_long=1.0),
    Arm("clip-sampled", "clip", "CLIP loss, SmartCLIP's sampling"),
    Arm("smartclip", "smartclip", "SmartCLIP, paper head", mask_pooling="attention"),
    Arm("smartclip-union", "smartclip", "SmartCLIP, union head", mask_pooling="union"),
    Arm("random-mask", "random_mask", "random-mask control"),
)
SCRATCH_ARMS = (
    Arm("clip", "clip", "CLIP"),
    Arm("smartclip", "smartclip", "SmartCLIP, paper head", mask_pooling="attention"),
    Arm("smartclip-union", "smartclip", "SmartCLIP, union head", mask_pooling="union"),
)
# (column, metric key): "short" is retrieval with the one-object sentences; the probe reads image embeddings only.
COLUMNS = (
    ("long T2I", "scenes_long/image_retrieval_recall@1"),
    ("long I2T", "scenes_long/text_retrieval_recall@1"),
    ("short T2I", "scenes_multi/image_retrieval_recall@1"),
    ("short I2T", "scenes_multi/text_retrieval_recall@1"),
    ("zero-shot", "scenes_zeroshot/acc1"),
    ("atomic", "scenes_atomic/acc"),
    ("atomic held-out", "scenes_atomic/acc_held_out"),
    ("probe shape", "scenes_probe/shape_acc"),
    ("probe colour", "scenes_probe/colour_acc"),
)


class Evaluator:
    """Every metric of one trained arm: `evaluate_model` on the test scenes plus the linear probe."""

    def __init__(self, args: CompareArguments):
        scenes = builtin_scenes(args.num_train_scenes, args.num_test_scenes, 0,
                                partial_captions=args.scenes == "theory")
        self.test_split = scenes["test"]
        self.probe_split = scenes["train"].select(range(args.probe_train_scenes))
        self.eval_sets = scene_eval_sets(self.test_split)

    def __call__(self, model, processor) -> dict:
        results = evaluate_model(model, processor, self.eval_sets)
        probe = scene_probe(model, processor, self.probe_split, self.test_split)
        for scoring in ("plain", "modular"):
            if scoring in results:  # the probe does not depend on the scoring: the same numbers in each
                results[scoring].update({f"scenes_probe/{name}": value for name, value in probe.items()})
        return results


class Progress:
    """One line before each arm: which arm, how far the whole run is, and an ETA from the seconds per step so far."""

    def __init__(self, total_steps: int, total_arms: int):
        self.total_steps, self.total_arms = total_steps, total_arms
        self.done_steps, self.done_arms, self.start = 0, 0, time.monotonic()

    def begin(self, label: str, steps: int) -> None:
        elapsed = time.monotonic() - self.start
        eta = ""
        if self.done_steps:  # from the seconds per step so far, evaluations included
            eta = f", about {elapsed / self.done_steps * (self.total_steps - self.done_steps) / 60:.1f} min left"
        logger.info("[%d/%d] %s: %d steps (%.1f min elapsed%s)", self.done_arms + 1, self.total_arms, label, steps,
                    elapsed / 60, eta)

    def end(self, steps: int) -> None:
        self.done_steps += steps
        self.done_arms += 1


def train_arm(args, arm: Arm, stage: str, seed: int, start: str | None, evaluator, progress,
              random_mask_density: float | None = None) -> dict:
    """Trains and evaluates one arm; returns its metrics, log history, output folder and timings."""
    steps = {"pretrain": args.pretrain_steps, "finetune": args.finetune_steps}.get(stage, args.scratch_steps)
    output_dir = Path(args.output_dir, f"seed{seed}", stage, arm.name)
    p_long = args.p_long if arm.p_long is None else arm.p_long
    masked = arm.objective in ("smartclip", "random_mask")
    model_args = ModelArguments(
        model_name_or_path=start, objective=arm.objective, mask_pooling=arm.mask_pooling,
        mask_learning_rate=args.mask_learning_rate, random_mask_density=random_mask_density,
        lambda_sparsity=args.lambda_sparsity if masked else None,
        mask_threshold=args.mask_threshold if masked else None,
    )
    # The theory scenes' partial captions are short captions: they share the non-long draws with the sentences.
    p_short = (1 - p_long) / 2 if args.scenes == "theory" and 0 < p_long < 1 else 0.0
    data_args = DataArguments(
        num_train_scenes=args.num_train_scenes, num_test_scenes=args.num_test_scenes, p_long=p_long,
        p_sentence=1 - p_long - p_short, p_short=p_short, scenes_partial_captions=args.scenes == "theory",
    )
    training_args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.finetune_learning_rate if stage == "finetune" else args.scratch_learning_rate,
        weight_decay=0.1,
        warmup_steps=0.05,
        lr_scheduler_type="cosine",
        logging_steps=min(25, steps),
        save_strategy="no",
        report_to=[],
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
    )
    progress.begin(f"seed {seed}, {stage}/{arm.name} ({arm.description})", steps)
    wall, cpu = time.monotonic(), time.process_time()
    result = run_training(model_args, data_args, training_args, eval_fn=evaluator)
    progress.end(steps)
    timing = {"wall_s": time.monotonic() - wall, "cpu_s": time.process_time() - cpu}
    density = {} if random_mask_density is None else {"random_mask_density": random_mask_density}
    return {**result["evaluation"], "log_history": result["log_history"], "output_dir": str(output_dir),
            "timing": timing, **density}


def learned_density(log_history: list[dict], last: int = 3) -> float:
    """The trained masks' density: the mean `mask_density` of the last `last` training logs of a SmartCLIP arm."""
    densities = [log["mask_density"] for log in log_history if "mask_density" in log][-last:]
    return statistics.fmean(densities)


def save_as_clip(model_dir: str, path: Path) -> None:
    """A trained arm's towers as a plain CLIP checkpoint, so each stage-2 arm converts it with `from_clip` and gets
    a fresh head of its own kind."""
    SmartCLIPModel.from_pretrained(model_dir).to_clip().save_pretrained(path)
    SmartCLIPProcessor.from_pretrained(model_dir).save_pretrained(path)


def run_seed(args: CompareArguments, seed: int, evaluator: Evaluator, progress: Progress) -> dict[str, dict]:
    """Every arm of one seed: `{"finetune/pretrained": ..., "finetune/direct-ft": ..., "scratch/clip": ...}`."""
    runs = {}
    if "finetune" in args.stages:
        pretrained = train_arm(args, PRETRAIN, "pretrain", seed, None, evaluator, progress)
        runs["finetune/pretrained"] = pretrained
        start = Path(args.output_dir, f"seed{seed}", "pretrained-clip")
        save_as_clip(pretrained["output_dir"], start)
        for arm in FINETUNE_ARMS:
            density = None
            if arm.objective == "random_mask":  # the control runs at the density of the masks it controls
                density = args.random_mask_density
                if density is None:
                    density = learned_density(runs["finetune/smartclip"]["log_history"])
            runs[f"finetune/{arm.name}"] = train_arm(args, arm, "finetune", seed, str(start), evaluator, progress,
                                                     density)
    if "scratch" in args.stages:
        for arm in SCRATCH_ARMS:
            runs[f"scratch/{arm.name}"] = train_arm(args, arm, "scratch", seed, None, evaluator, progress)
    # One model per top-level key besides the settings, as `smartclip-push --results` and `bench.accuracy` read.
    save_results({"settings": seed_settings(args), **runs}, Path(args.output_dir, f"seed{seed}", "results.json"))
    return runs


def seed_settings(args: CompareArguments) -> dict:
    """The settings that decide one seed's results (not which seeds run, nor where the report goes)."""
    return {name: value for name, value in asdict(args).items() if name not in ("seeds", "output_dir", "publish")}


def saved_seed(args: CompareArguments, seed: int) -> dict[str, dict] | None:
    """The runs of `seed` if an earlier run with the same settings saved them under `--output_dir`, else None.

    So an interrupted multi-seed run resumes at its first missing seed, and seeds run as separate processes (one
    `--seeds` each, same `--output_dir`) are summarised by a last call with all of them.
    """
    path = Path(args.output_dir, f"seed{seed}", "results.json")
    if not path.is_file():
        return None
    runs = json.loads(path.read_text(encoding="utf-8"))
    settings = runs.pop("settings")
    if settings != seed_settings(args):
        differ = sorted(k for k, v in seed_settings(args).items() if settings.get(k) != v)
        raise ValueError(
            f"{path} holds seed {seed}'s runs made with other settings ({', '.join(differ)}); delete it or choose "
            "another --output_dir."
        )
    logger.info("seed %d: reusing the runs saved in %s", seed, path)
    return runs


# ----- summary over seeds -----------------------------------------------------------------------------------------


def summarise(runs_by_seed: dict[int, dict[str, dict]]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """`{run: {scoring: {metric key: [value per seed]}}}` for the table's metrics."""
    summary: dict[str, dict[str, dict[str, list[float]]]] = {}
    for runs in runs_by_seed.values():
        for run, results in runs.items():
            for scoring in ("plain", "modular"):
                for _, key in COLUMNS:
                    if scoring in results and results[scoring].get(key) is not None:
                        summary.setdefault(run, {}).setdefault(scoring, {}).setdefault(key, []).append(
                            results[scoring][key]
                        )
    return summary


def compare_intervals(values: list[float], reference: list[float]) -> int:
    """+1 if every value is above every reference value, -1 if every one is below, 0 if the [min, max] overlap."""
    if min(values) > max(reference):
        return 1
    if max(values) < min(reference):
        return -1
    return 0


def _cell(values: list[float] | None, reference: list[float] | None) -> str:
    if not values:
        return "–"
    text = f"{statistics.fmean(values):.3f}"
    if len(values) > 1:
        text += f" [{min(values):.2f}, {max(values):.2f}]"
    if reference is not None and values is not reference:
        text += {1: " ↑", -1: " ↓", 0: ""}[compare_intervals(values, reference)]
    return text


WORDS = {1: "higher", -1: "lower", 0: "no clear difference"}
# The metrics that stand in for the paper's short-caption retrieval and zero-shot classification.
SHORT_COLUMNS = ("short T2I", "short I2T", "zero-shot", "atomic")
REFERENCE_RUN = {"finetune": "finetune/pretrained", "scratch": "scratch/clip"}
STAGE_TITLES = {
    "finetune": "Fine-tuning the stage-1 CLIP (↑/↓: [min, max] above/below the pretrained row's, no overlap)",
    "scratch": "From scratch on SmartCLIP's sampling (↑/↓: [min, max] above/below CLIP's, no overlap)",
}


def format_tables(summary: dict, descriptions: dict[str, str], seeds: list[int]) -> str:
    """Markdown: one table per stage, rows are arms and scorings, columns `COLUMNS`."""
    spread = f"{len(seeds)} seeds ({', '.join(map(str, seeds))}): mean [min, max]" if len(seeds) > 1 else (
        f"one seed ({seeds[0]}): no spread, so a mark only says the values differ; run --seeds 0,1,2 for intervals")
    blocks = []
    for stage, reference_run in REFERENCE_RUN.items():
        runs = [run for run in summary if run.startswith(stage + "/")]
        if not runs:
            continue
        reference = summary[reference_run]["plain"]
        lines = [f"**{STAGE_TITLES[stage]}**; {spread}.", "",
                 "| arm | scoring | " + " | ".join(label for label, _ in COLUMNS) + " |",
                 "|---|---|" + "---|" * len(COLUMNS)]
        for run in runs:
            for scoring, metrics in summary[run].items():
                cells = [_cell(metrics.get(key), reference.get(key)) for _, key in COLUMNS]
                lines.append(f"| {descriptions[run]} | {scoring} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def verdicts(summary: dict) -> list[str]:
    """The paper's predictions, in its order, each checked on the stage-2 table (plain scoring, the paper's
    inference). A metric differs only where the seeds' [min, max] do not overlap; a prediction about several
    metrics is "reproduced" when all of them behave as predicted, "partly" when some do."""
    if "finetune/pretrained" not in summary:
        return []

    def compare(run: str, other: str, column: str) -> int:
        key = dict(COLUMNS)[column]
        return compare_intervals(summary[f"finetune/{run}"]["plain"][key], summary[f"finetune/{other}"]["plain"][key])

    def verdict(predicted: list[bool]) -> str:
        return "reproduced" if all(predicted) else "partly reproduced" if any(predicted) else "not reproduced"

    def details(signs: dict[str, int]) -> str:
        return ", ".join(f"{column} {WORDS[sign]}" for column, sign in signs.items())

    lines = []
    signs = {column: compare("direct-ft", "pretrained", column) for column in ("long T2I", *SHORT_COLUMNS)}
    lines.append(
        "1. Direct FT gains long retrieval and loses short retrieval and zero-shot (COCO T2I R@1 32.7 -> 21.8): "
        f"{verdict([signs['long T2I'] == 1] + [signs[c] == -1 for c in SHORT_COLUMNS])} (vs pretrained: "
        f"{details(signs)})."
    )
    signs = {column: compare("longclip", "pretrained", column) for column in ("long T2I", *SHORT_COLUMNS)}
    lines.append(
        "2. Long-CLIP gains long retrieval and keeps short retrieval and zero-shot (COCO T2I 40.4): "
        f"{verdict([signs['long T2I'] == 1] + [signs[c] >= 0 for c in SHORT_COLUMNS])} (vs pretrained: "
        f"{details(signs)})."
    )
    for run, head in (("smartclip", "paper head"), ("smartclip-union", "union head")):
        signs = {column: compare(run, "longclip", column) for column in ("long T2I", "long I2T", "short T2I")}
        lines.append(
            f"3. SmartCLIP ({head}, plain scoring) beats Long-CLIP on long and short retrieval (Urban1k T2I 87.4 vs "
            f"79.5, COCO T2I 42.4 vs 40.4): {verdict([sign == 1 for sign in signs.values()])} ({details(signs)})."
        )
    return lines


# The concept-level diagnostics (docs/mask_diagnostics.md) the report shows, as (column, key).
DIAGNOSTICS = (
    ("long/sentence density", "density_ratio"),
    ("Jaccard same object", "jaccard_same_object"),
    ("Jaccard other object", "jaccard_different_object"),
    ("slot share", "variance_share_slot"),
    ("slot alignment", "alignment_slot"),
    ("rotated", "alignment_slot_rotated"),
)


def diagnostics_table(runs_by_seed: dict[int, dict[str, dict]], descriptions: dict[str, str]) -> str:
    """Markdown: each arm's concept-level diagnostics, the mean over seeds ("–" where an arm has none)."""
    lines = ["**Concept-level diagnostics** (mean over seeds; the mask columns only for trained heads):", "",
             "| arm | " + " | ".join(label for label, _ in DIAGNOSTICS) + " |", "|---|" + "---|" * len(DIAGNOSTICS)]
    for run in next(iter(runs_by_seed.values())):
        cells = []
        for _, key in DIAGNOSTICS:
            values = [runs[run].get("mask_diagnostics", {}).get(f"scenes/{key}") for runs in runs_by_seed.values()]
            values = [v for v in values if v is not None and v == v]
            cells.append(f"{statistics.fmean(values):.3f}" if values else "–")
        lines.append(f"| {descriptions[run]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----- the run ----------------------------------------------------------------------------------------------------


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
    evaluator = Evaluator(args)
    arms = ([PRETRAIN, *FINETUNE_ARMS] if "finetune" in args.stages else []) + (
        list(SCRATCH_ARMS) if "scratch" in args.stages else [])
    steps_per_seed = ("finetune" in args.stages) * (args.pretrain_steps + len(FINETUNE_ARMS) * args.finetune_steps) + (
        "scratch" in args.stages) * len(SCRATCH_ARMS) * args.scratch_steps
    saved = {seed: saved_seed(args, seed) for seed in args.seed_list}
    missing = [seed for seed, runs in saved.items() if runs is None]
    progress = Progress(steps_per_seed * len(missing), len(arms) * len(missing))
    start = time.monotonic(), time.process_time()

    runs_by_seed = {seed: saved[seed] or run_seed(args, seed, evaluator, progress) for seed in args.seed_list}

    # Report: results, tables, verdicts, plots and the hub-ready folder.
    descriptions = {f"finetune/{arm.name}": arm.description for arm in (PRETRAIN, *FINETUNE_ARMS)}
    descriptions |= {f"scratch/{arm.name}": f"{arm.description} (scratch)" for arm in SCRATCH_ARMS}
    summary = summarise(runs_by_seed)
    # Per seed, the arms' own time (training and evaluation), also for seeds reused from an earlier run.
    minutes = [[sum(run["timing"][kind] for run in runs.values()) / 60 for runs in runs_by_seed.values()]
               for kind in ("wall_s", "cpu_s")]
    timing = {"wall_s": time.monotonic() - start[0], "cpu_s": time.process_time() - start[1],
              "threads": torch.get_num_threads()}
    report = "\n\n".join([
        format_tables(summary, descriptions, args.seed_list),
        diagnostics_table(runs_by_seed, descriptions),
        "**The paper's predictions, checked** (stage 2, plain scoring):\n\n"
        + ("(--quick is a smoke test of a few steps: no verdicts)" if args.quick
           else "\n".join(verdicts(summary) or ["(no stage 2 in this run)"])),
        f"Settings: {args.seeds=}, {args.pretrain_steps=}, {args.finetune_steps=}, {args.scratch_steps=}, "
        f"{args.batch_size=}, {args.num_train_scenes=}, {args.num_test_scenes=}. Time per seed (training and "
        "evaluation of every arm): " + ", ".join(
            f"seed {seed} {wall:.1f} min wall / {cpu:.1f} min CPU" for seed, wall, cpu in zip(args.seed_list, *minutes)
        ) + f"; this call {timing['wall_s'] / 60:.1f} min wall, {timing['threads']} threads.",
    ])
    save_results({"settings": asdict(args), "timing": timing, "summary": summary,
                  **{f"seed{seed}": runs for seed, runs in runs_by_seed.items()}}, output_dir / "results.json")
    (output_dir / "results.md").write_text(report + "\n")
    first = runs_by_seed[args.seed_list[0]]
    if not args.quick:  # a few steps make no curves
        plot_training_curves({name: run["log_history"] for name, run in first.items()},
                             str(output_dir / "training_curves.png"))
    publish = args.publish if args.publish in first else next(name for name in first if "smartclip" in name)
    sentences = sorted({s for captions in evaluator.test_split["short_captions"] for s in captions})
    plot_masks(first[publish]["output_dir"], sentences, output_dir / "mask_usage.png", f"{publish}: mask usage")
    # Model, processor, run record and card: the Trainer's pickled arguments and states stay in the arm's folder.
    save_hub_ready(first[publish]["output_dir"], output_dir / "smartclip",
                   results=output_dir / f"seed{args.seed_list[0]}" / "results.json", model_key=publish)
    print(report)
    print(f"\nSaved: {output_dir / 'results.json'}, {output_dir / 'results.md'}, plots, and the hub-ready "
          f"SmartCLIP ({publish}, seed {args.seed_list[0]}) in {output_dir / 'smartclip'}.")
    return runs_by_seed


def main(argv: list[str] | None = None) -> None:
    """Console script `smartclip-compare`: status 0 on success; a user error is one line on stderr, status 2."""
    with user_errors("smartclip-compare"):
        (args,) = parse_flags_or_file((CompareArguments,), argv)
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
        transformers.utils.logging.set_verbosity_warning()  # keep the Trainer's progress bars, not its metric dumps
        run_compare(args)


if __name__ == "__main__":
    main()
