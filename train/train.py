"""`smartclip-train`: train SmartCLIP (or the CLIP baseline, or the random-mask control) with the HF Trainer.

Start from a CLIP checkpoint (converted with `SmartCLIPModel.from_clip`), a SmartCLIP checkpoint, or small towers
from scratch; train on the built-in scenes, any `datasets` source, or csv/json files of image paths and captions.
Every `TrainingArguments` option works (mixed precision, gradient accumulation, `--resume_from_checkpoint`,
`report_to`, `torch_compile`, `torchrun` / `accelerate launch`), and so do the data and model flags of transformers'
`run_clip.py` (`--caption_column`, `--train_file`, `--max_seq_length`, `--freeze_vision_model`, `--do_eval`, ...).
Reads top to bottom: arguments, model, objective, then `run_training` (output folder, data, train, save, report) and
`main`; the Trainer subclass is in `trainer.py`, the output folder's rules in `run_folder.py`. A related method (e.g.
`methods/setclip/`) calls `run_training` with its own `objective` and `data_step`.

    smartclip-train --output_dir outputs/smartclip --max_steps 2000 --learning_rate 1e-3 --use_cpu
    smartclip-train --model_name_or_path openai/clip-vit-base-patch16 --freeze_first_positions 20 \
        --learning_rate 1e-6 --mask_learning_rate 1e-3 --dataset_name my/captions --caption_column caption ...
"""

import contextlib
import functools
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers
from huggingface_hub import snapshot_download
from torch.utils.data import Dataset
from transformers import CLIPModel, HfArgumentParser, TrainingArguments, set_seed

from modeling_smartclip import SmartCLIPConfig, SmartCLIPModel, SmartCLIPProcessor
from modeling_smartclip.loading import load_model_and_processor
from smartclip_data.scratch import scratch_clip_config, scratch_processor
from smartclip_data.sources import DataArguments, DropCounter, load_split
from smartclip_hub.card import write_model_card
from smartclip_hub.secrets import scrub

from .cli import raise_parse_errors, unknown_flags_error, user_errors
from .collator import CaptionCollator, CaptionEpochCallback
from .distributed import shut_down
from .objectives import OBJECTIVES, TrainingLoss
from .run_folder import RunLock, check_output_dir, resolve_checkpoint
from .trainer import SmartCLIPTrainer, recall_by_scoring

logger = logging.getLogger(__name__)

POSITION_EMBEDDING = "text_model.embeddings.position_embedding.weight"
# What a Hub snapshot of the starting model needs: configs, tokenizer files, safetensors weights (never a pickle).
MODEL_FILES = ("*.json", "*.safetensors", "*.txt", "*.model")
# `(train_dataset, collator) -> (train_dataset, collator)`: a related method's data step (e.g. Set-CLIP's batches).
DataStep = Callable[[Dataset, CaptionCollator], tuple[Dataset, Callable]]


# ----- arguments --------------------------------------------------------------------------------------------------


@dataclass
class ModelArguments:
    """The starting model, the objective and the mask head."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A CLIP checkpoint (converted on the fly), a SmartCLIP checkpoint, or None: small towers "
                  "from scratch for the built-in scenes."},
    )
    from_scratch: bool = field(
        default=False,
        metadata={"help": "Train small random towers (the --scratch_* sizes, the built-in scenes' word tokenizer) on "
                  "your own data instead of starting from --model_name_or_path."},
    )
    processor_name_or_path: str | None = field(
        default=None, metadata={"help": "Processor source; default: the model's."}
    )
    objective: str = field(
        default="smartclip",
        metadata={"help": "Training objective: smartclip (the modular loss), clip (the baseline), random_mask (the "
                  "control: random masks of --random_mask_density), paired_mask (the paper's 'w.o. Modular' "
                  "ablation: each image masked by its own caption's mask), longclip.", "choices": list(OBJECTIVES)},
    )
    lambda_align: float | None = field(default=None, metadata={"help": "Weight of the modular contrastive term."})
    lambda_sparsity: float | None = field(
        default=None,
        metadata={"help": "Weight of the sparsity term, in the paper's units (Eq. 8-9: per caption the L1 norm of its "
                  "soft mask, summed over dimensions, averaged over the batch); None: the model config's."},
    )
    random_mask_density: float | None = field(
        default=None,
        metadata={"help": "random_mask objective: density of the random masks (that of the trained SmartCLIP masks "
                  "it controls); None: the starting model's head's own, only if that head was trained."},
    )
    mask_pooling: str | None = field(default=None, metadata={"help": "Mask head pooling: attention (paper) or union."})
    mask_hidden_size: int | None = field(default=None, metadata={"help": "Mask head width; None: the text tower's."})
    mask_num_attention_heads: int | None = field(default=None, metadata={"help": "Mask head attention heads."})
    mask_intermediate_size: int | None = field(default=None, metadata={"help": "Mask head MLP width."})
    mask_threshold: float | None = field(default=None, metadata={"help": "Sigmoid threshold of the hard mask."})
    mask_learning_rate: float = field(
        default=1e-3,
        metadata={"help": "Learning rate of the mask head (towers: --learning_rate); the paper uses 1e-3."},
    )
    freeze_first_positions: int = field(
        default=0, metadata={"help": "Keep the first N text position rows fixed (Long-CLIP fine-tuning: 20)."}
    )
    scratch_hidden_size: int = field(default=64, metadata={"help": "From scratch: tower width."})
    scratch_num_layers: int = field(default=2, metadata={"help": "From scratch: layers per tower."})
    scratch_num_heads: int = field(default=4, metadata={"help": "From scratch: attention heads per tower."})
    scratch_patch_size: int = field(default=8, metadata={"help": "From scratch: ViT patch size."})
    scratch_projection_dim: int = field(default=64, metadata={"help": "From scratch: joint embedding size."})
    freeze_vision_model: bool = field(
        default=False, metadata={"help": "Train without updating the vision tower (its projection trains; run_clip.py)."}
    )
    freeze_text_model: bool = field(
        default=False,
        metadata={"help": "Train without updating the text tower (its projection and the mask head train; run_clip.py)."},
    )
    local_loss: bool = field(
        default=False,
        metadata={"help": "Multi-GPU: each rank scores its own captions against all images (open_clip's local loss), "
                  "instead of the full global similarity matrix on every rank."},
    )
    model_revision: str = field(
        default="main", metadata={"help": "Hub branch, tag or commit of --model_name_or_path (run_clip.py)."}
    )
    token: str | None = field(
        default=None,
        metadata={"help": "Hub token for private models and datasets; default: the saved login. Never saved."},
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads (models and datasets) are kept."})
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Accepted for run_clip.py command lines; not needed: SmartCLIP and CLIP checkpoints load "
                  "with this package's classes, and `datasets` no longer runs loading scripts."},
    )

    def config_overrides(self) -> dict:
        """The `SmartCLIPConfig` fields set on the command line."""
        names = ("lambda_align", "lambda_sparsity", "mask_threshold", "mask_pooling", "mask_hidden_size",
                 "mask_num_attention_heads", "mask_intermediate_size")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def hub_kwargs(self) -> dict:
        """`token` and `cache_dir` as Hub downloads take them (only the ones set)."""
        return {name: getattr(self, name) for name in ("token", "cache_dir") if getattr(self, name) is not None}

    def __post_init__(self):
        if self.from_scratch and self.model_name_or_path is not None:
            raise ValueError(
                f"--from_scratch and --model_name_or_path={self.model_name_or_path!r}: expected one starting model."
            )
        if self.mask_learning_rate < 0:
            raise ValueError(f"--mask_learning_rate={self.mask_learning_rate}; expected a learning rate >= 0.")


@dataclass
class SmartCLIPTrainingArguments(TrainingArguments):
    """`TrainingArguments` with `--overwrite_output_dir`, which transformers 5 dropped and run_clip.py passes."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into an --output_dir that holds an earlier run (its checkpoints are removed); "
                  "without it such a folder is refused unless --resume_from_checkpoint is given."},
    )

    def __post_init__(self):
        if self.output_dir is not None and Path(self.output_dir).exists() and not Path(self.output_dir).is_dir():
            raise ValueError(f"--output_dir={str(self.output_dir)!r} is a file; expected a folder (new or existing).")
        super().__post_init__()


# ----- model ------------------------------------------------------------------------------------------------------


def local_snapshot(path: str, args: ModelArguments) -> str:
    """`path` if it is a local folder, else the folder of its Hub snapshot at `--model_revision`, downloaded with
    `--token` / `--cache_dir`: the loader flags stay with the download and never reach a config."""
    if Path(path).is_dir():
        return path
    try:
        return snapshot_download(path, revision=args.model_revision, allow_patterns=list(MODEL_FILES),
                                 **args.hub_kwargs())
    except OSError as error:  # the Hub's message does not name what it looked for
        message = f"{path!r} is not a local folder, and no Hub repo of that name could be downloaded: {error}"
        raise OSError(message) from error


def check_starting_model(model_args: ModelArguments, data_args: DataArguments) -> None:
    """Your own data needs a starting model, or `--from_scratch` said out loud: small random towers with the built-in
    scenes' word tokenizer would otherwise train on captions whose words that tokenizer spells letter by letter."""
    if model_args.model_name_or_path is not None or model_args.from_scratch or data_args.builtin:
        return
    source = "--dataset_name" if data_args.dataset_name is not None else (
        "--train_file" if data_args.train_file is not None else "--validation_file")
    raise ValueError(
        f"{source} without --model_name_or_path: pass --model_name_or_path (a CLIP or SmartCLIP folder or Hub id, "
        "e.g. openai/clip-vit-base-patch16), or --from_scratch to train small random towers with the built-in "
        "scenes' word tokenizer."
    )


def load_starting_model(args: ModelArguments) -> tuple[SmartCLIPModel, SmartCLIPProcessor]:
    """The starting SmartCLIP and its processor: `args.model_name_or_path` (CLIP or SmartCLIP), or small towers
    from scratch when it is None."""
    if args.model_name_or_path is not None:
        processor_path = args.processor_name_or_path and local_snapshot(args.processor_name_or_path, args)
        return load_model_and_processor(
            local_snapshot(args.model_name_or_path, args), processor_path, **args.config_overrides()
        )
    processor = scratch_processor()
    clip_config = scratch_clip_config(
        processor, hidden_size=args.scratch_hidden_size, num_layers=args.scratch_num_layers,
        num_heads=args.scratch_num_heads, patch_size=args.scratch_patch_size,
        projection_dim=args.scratch_projection_dim,
    )
    return SmartCLIPModel.from_clip(CLIPModel(clip_config), **args.config_overrides()), processor


def _zero_rows(grad: torch.Tensor, rows: int) -> torch.Tensor:
    return grad.index_fill(0, torch.arange(rows, device=grad.device), 0.0)


def freeze_position_rows(model: SmartCLIPModel, rows: int) -> None:
    """Keeps the first `rows` text position embeddings fixed, as Long-CLIP does with the 20 it does not stretch.

    A gradient hook zeroes their gradient; the trainer also leaves the position table out of weight decay
    (`no_decay`), which would otherwise shrink the frozen rows.
    """
    weight = model.text_model.embeddings.position_embedding.weight
    if not 0 <= rows <= len(weight):
        raise ValueError(f"--freeze_first_positions={rows}; expected 0 to {len(weight)} (the text positions).")
    if rows and weight.requires_grad:  # (a frozen text tower keeps every row anyway)
        weight.register_hook(functools.partial(_zero_rows, rows=rows))


def freeze_towers(model: SmartCLIPModel, vision: bool, text: bool) -> None:
    """run_clip.py's `--freeze_vision_model` / `--freeze_text_model`: the tower gets no updates; its projection (and,
    for the text tower, the mask head reading its states) still trains."""
    if vision:
        model.vision_model.requires_grad_(False)
    if text:
        model.text_model.requires_grad_(False)


def caption_processor(processor: SmartCLIPProcessor, max_seq_length: int | None, positions: int) -> Callable:
    """What the collator tokenizes with: `processor`, or `processor` called with `max_length=max_seq_length` (the
    saved processor keeps its own limit)."""
    if max_seq_length is None:
        return processor
    if max_seq_length > positions:
        raise ValueError(f"--max_seq_length={max_seq_length}; expected at most {positions} (the model's text positions).")
    return functools.partial(processor, max_length=max_seq_length)


# ----- objective --------------------------------------------------------------------------------------------------


def objective_from_arguments(args: ModelArguments, config: SmartCLIPConfig) -> TrainingLoss:
    """The `--objective`, weighted by the (possibly overridden) model config."""
    if args.random_mask_density is not None and args.objective != "random_mask":
        raise ValueError(f"--random_mask_density applies to --objective random_mask, not {args.objective!r}.")
    return OBJECTIVES[args.objective].from_arguments(args, config)


def prepare_model_for_objective(model: SmartCLIPModel, objective: TrainingLoss) -> None:
    """Freezes a head (and a `logit_scale`) the objective does not train, and records in the config how the trained
    model scores and whether its head was trained: the modular objective saves modular scoring, the CLIP baseline and
    the random-mask control plain scoring."""
    model.mask_head.requires_grad_(objective.trains_mask_head)
    model.logit_scale.requires_grad_(objective.trains_logit_scale)
    model.config.scoring = objective.scoring
    model.config.loss_type = objective.config_loss_type
    model.config.mask_head_trained = objective.trains_mask_head


# ----- the run ----------------------------------------------------------------------------------------------------


def _drop_metrics(split: str, counts: dict[str, int]) -> dict[str, int]:
    return {f"{split}_dropped_{reason.replace(' ', '_')}": count for reason, count in counts.items()}


def write_run_record(output_dir: str, model_args: ModelArguments, data_args: DataArguments,
                     training_args: TrainingArguments) -> None:
    """`training_args.json`: `{"model": ..., "data": ..., "training": ...}`, the arguments of the run without any
    token (the model card reads it; `training_args.bin`, the Trainer's pickle, is never read)."""
    record = {
        "model": asdict(model_args),
        "data": asdict(data_args),
        "training": training_args.to_sanitized_dict(),
    }
    record, _ = scrub(json.loads(json.dumps(record, default=str)))  # credentials by name or look, at any depth
    Path(output_dir, "training_args.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")


def run_training(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
    eval_fn: Callable[[SmartCLIPModel, SmartCLIPProcessor], dict] | None = None,
    callbacks: list | None = None,
    objective: TrainingLoss | None = None,
    data_step: DataStep | None = None,
) -> dict:
    """Trains, saves model and processor (safetensors) to `training_args.output_dir`, and reports.

    The output folder is locked while the run writes into it; a folder holding an earlier run is refused unless
    `--resume_from_checkpoint` (`last`: the last complete checkpoint) or `--overwrite_output_dir` is given (see
    `run_folder`). `--do_eval` without `--do_train` (and without `--eval_strategy`) evaluates the starting model
    only; otherwise the run trains, and evaluates when there is an evaluation split. The folder ends with the model,
    `training_args.json` and a model card (`README.md`), ready to push.

    Args:
        eval_fn: called as `eval_fn(model, processor)` on the main process after training; its dict is returned
            under `"evaluation"` (e.g. `smartclip_eval.evaluate`'s metrics).
        callbacks: extra `TrainerCallback`s.
        objective: a related method's objective; default: `--objective` (`model_args.objective`).
        data_step: a related method's change to the training data and collator (`DataStep`).

    Returns:
        A JSON-serialisable dict: `output_dir`, `resumed_from` (the checkpoint, or None), `train` (the Trainer's
        metrics plus dropped-row counts), `eval` (eval loss and recall, when there is an evaluation split), `dropped`
        (`{split: {reason: count}}`), `log_history`, `evaluation`.
    """
    # Phase 1: settings this pipeline relies on.
    check_starting_model(model_args, data_args)
    training_args.remove_unused_columns = False  # the collator reads the image and caption columns itself
    if training_args.ddp_find_unused_parameters is None:
        # The Trainer's default (True) has DDP mark, at the end of `forward`, every parameter that `forward`'s outputs
        # do not reach as ready; the objectives use `logit_scale` after `forward`, so its gradient marks it ready a
        # second time and DDP stops. The search is not needed: every objective uses every trainable parameter (one
        # that leaves the mask head or the scale out freezes it, `prepare_model_for_objective`).
        training_args.ddp_find_unused_parameters = False
    if training_args.accelerator_config.dispatch_batches is None:
        # A stream (`--streaming`, Set-CLIP's blocks) would by default be read by the main process alone, which
        # concatenates every rank's batch and fails on captions padded to different lengths; instead each rank reads
        # the stream and keeps its own batches (rank r the r-th of each `world_size` consecutive ones).
        training_args.accelerator_config.dispatch_batches = False
    if training_args.dataloader_persistent_workers and training_args.dataloader_num_workers > 0:
        logger.warning("--dataloader_persistent_workers: workers keep the first epoch's caption draws in later epochs.")
    evaluate_only = training_args.do_eval and not training_args.do_train and training_args.eval_strategy == "no"
    eval_split = data_args.eval_split_for(training_args.do_eval)
    output_dir = str(training_args.output_dir)
    main_process = training_args.process_index == 0
    # A plain `TrainingArguments` (transformers 5 has no `overwrite_output_dir`) never overwrites.
    overwrite = getattr(training_args, "overwrite_output_dir", False)

    with RunLock(output_dir) if main_process else contextlib.nullcontext():
        # Phase 2: the output folder: which checkpoint to resume, and no silent reuse of an earlier run's folder.
        checkpoint = None if evaluate_only else resolve_checkpoint(training_args.resume_from_checkpoint, output_dir)
        if main_process and not evaluate_only:
            check_output_dir(output_dir, overwrite, checkpoint)
        set_seed(training_args.seed)  # before the model: initialisation is part of the run

        # Phase 3: model, processor and objective.
        model, processor = load_starting_model(model_args)
        objective = objective or objective_from_arguments(model_args, model.config)
        if not evaluate_only:  # evaluation alone scores the starting model as it was saved
            prepare_model_for_objective(model, objective)
        freeze_towers(model, model_args.freeze_vision_model, model_args.freeze_text_model)
        freeze_position_rows(model, model_args.freeze_first_positions)

        # Phase 4: data, checked and cleaned, with a caption drawn per image and step by the collator.
        drops = {split: DropCounter(training_args.dataloader_num_workers) for split in ("train", "eval")}
        hub_kwargs = model_args.hub_kwargs()
        with training_args.main_process_first(desc="loading and checking the data"):
            train_dataset = eval_dataset = None
            if not evaluate_only:
                train_dataset = load_split(
                    data_args, data_args.train_split, drops["train"], data_args.max_train_samples, **hub_kwargs
                )
            if eval_split is not None:
                eval_dataset = load_split(data_args, eval_split, drops["eval"], data_args.max_eval_samples, **hub_kwargs)
        seed = training_args.seed if data_args.caption_seed is None else data_args.caption_seed
        positions = model.config.text_config.max_position_embeddings
        collator = CaptionCollator(
            caption_processor(processor, data_args.max_seq_length, positions),
            data_args.p_long, data_args.p_sentence, data_args.p_short, seed=seed,
            first_sentence=objective.needs_first_sentence,
        )
        data_collator = collator
        if data_step is not None and train_dataset is not None:
            train_dataset, data_collator = data_step(train_dataset, collator)

        # Phase 5: train (and save), evaluate.
        trainer = SmartCLIPTrainer(
            model=model,
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=data_collator,
            processing_class=processor,
            callbacks=[CaptionEpochCallback(collator), *(callbacks or [])],
            training_loss=objective,
            mask_learning_rate=model_args.mask_learning_rate,
            no_decay=(POSITION_EMBEDDING,) if model_args.freeze_first_positions else (),
        )
        train_metrics = {}
        if not evaluate_only:
            train_metrics = trainer.train(resume_from_checkpoint=checkpoint).metrics
            trainer.save_model()  # model (safetensors, remote code, scoring in its config) and processor, whole
        eval_metrics = trainer.evaluate() if eval_dataset is not None else {}

        # Phase 6: report, dropped rows included (streamed data is counted as it is read, hence after evaluation).
        dropped = {}
        if train_dataset is not None:
            dropped["train"] = drops["train"].totals()
        if eval_dataset is not None:
            dropped["eval"] = drops["eval"].totals()
        for split, counts in dropped.items():
            level = logging.WARNING if any(counts.values()) else logging.INFO
            logger.log(level, "Dropped %s rows: %s", split, ", ".join(f"{n} {reason}" for reason, n in counts.items()))
        if train_dataset is not None:
            train_metrics = {**train_metrics, **_drop_metrics("train", dropped["train"])}
            trainer.log_metrics("train", train_metrics)
            trainer.save_metrics("train", train_metrics)
            trainer.save_state()
        if eval_dataset is not None:
            eval_metrics = {**eval_metrics, **_drop_metrics("eval", dropped["eval"])}
            trainer.log_metrics("eval", eval_metrics)
            trainer.save_metrics("eval", eval_metrics)
        if train_dataset is not None and trainer.is_world_process_zero():
            write_run_record(output_dir, model_args, data_args, training_args)
            write_model_card(output_dir, recall_by_scoring(eval_metrics, trainer.model.config.scoring))
            if training_args.push_to_hub:  # the folder as `smartclip-push` stages it: model, processor, card
                trainer.push_to_hub()
        evaluation = {}
        if eval_fn is not None and trainer.is_world_process_zero():
            evaluation = eval_fn(trainer.model.eval(), processor)
    return {
        "output_dir": output_dir,
        "resumed_from": checkpoint,
        "train": train_metrics,
        "eval": eval_metrics,
        "dropped": dropped,
        "log_history": trainer.state.log_history,
        "evaluation": evaluation,
    }


def parse_flags_or_file(dataclass_types: tuple[type, ...], argv: list[str] | None = None) -> tuple:
    """One instance of each `HfArgumentParser` dataclass, from command-line flags or a single `.json` / `.yaml`
    file holding them."""
    parser = raise_parse_errors(HfArgumentParser(dataclass_types))
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(argv[0])
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(argv[0])
    *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        raise unknown_flags_error(unknown, parser)
    return tuple(parsed)


def resolve_device(device: str) -> torch.device:
    """A command's `--device`: `"auto"` picks CUDA when available, else CPU; `"cuda"` without CUDA is an error."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device={device!r}; expected 'auto', 'cpu' or 'cuda'.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device='cuda' but torch sees no CUDA device.")
    return torch.device(device)


def parse_args(argv: list[str] | None = None, extra_arguments: tuple[type, ...] = ()) -> tuple:
    """`(ModelArguments, DataArguments, SmartCLIPTrainingArguments, *extra)`; `extra_arguments` are a related
    method's own dataclasses."""
    return parse_flags_or_file((ModelArguments, DataArguments, SmartCLIPTrainingArguments, *extra_arguments), argv)


def run_command(prog: str, run: Callable, argv: list[str] | None = None, extra_arguments: tuple[type, ...] = ()) -> None:
    """The body of every training command (`smartclip-train` and each related method's): parses `smartclip-train`'s
    flags plus `extra_arguments`, sets up logging and calls `run(model_args, data_args, training_args, *extra)`.
    Status 0 on success; a user error is one line on stderr, status 2 (`user_errors`)."""
    with user_errors(prog):
        arguments = parse_args(argv, extra_arguments)
        set_up_logging(arguments[2])
        run(*arguments)
        shut_down()  # under torchrun or accelerate launch: the group ends here, not in the interpreter's exit


def main(argv: list[str] | None = None) -> None:
    """Console script `smartclip-train`."""
    run_command("smartclip-train", run_training, argv)


def set_up_logging(training_args: TrainingArguments) -> None:
    level = training_args.get_process_log_level()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level)
    transformers.utils.logging.set_verbosity(level)


if __name__ == "__main__":
    main()


__all__ = [
    "DataStep",
    "run_command",
    "ModelArguments",
    "DataArguments",
    "SmartCLIPTrainingArguments",
    "caption_processor",
    "check_starting_model",
    "freeze_position_rows",
    "freeze_towers",
    "load_starting_model",
    "local_snapshot",
    "main",
    "objective_from_arguments",
    "parse_args",
    "parse_flags_or_file",
    "prepare_model_for_objective",
    "resolve_device",
    "run_training",
    "set_up_logging",
    "write_run_record",
]
