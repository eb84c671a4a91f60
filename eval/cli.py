"""`smartclip-eval`: the command. Builds the sets named on the command line, evaluates them with `evaluate.py`,
writes the JSON and prints the table (`tables.py`).

The JSON adds what was evaluated to `evaluate_model`'s results: `"model"` (its path and the sha256 of its
config.json), `"scorings"` and `"datasets"` (each set's source), with every number rounded to 4 decimals.
"""

import argparse
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from datasets import get_dataset_split_names
from huggingface_hub import hf_hub_download

from modeling_smartclip.configuration_smartclip import SCORINGS
from modeling_smartclip.loading import load_model_and_processor
from smartclip_data.scenes import make_scenes
from smartclip_data.sources import DataArguments, load_source
from smartclip_train.cli import raise_parse_errors, user_errors

from .evaluate import evaluate_model
from .image_retrieval import image_retrieval_set_from_dataset, scene_image_retrieval_set
from .sets import (
    OPENAI_IMAGENET_TEMPLATES,
    EvalSet,
    classification_set_from_dataset,
    classification_set_from_folder,
    load_coco_captions,
    load_urban1k,
    read_classnames,
    read_templates,
    retrieval_set_from_dataset,
    scene_eval_sets,
)
from .robust import ATTACKS, check_attack, parse_eps, robust_evaluation
from .tables import format_table, save_results

logger = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = raise_parse_errors(argparse.ArgumentParser(prog="smartclip-eval", description=__doc__.split("\n\n")[0]))
    parser.add_argument("--model", required=True, help="SmartCLIP folder, or a CLIP folder / Hub id (converted)")
    parser.add_argument("--builtin", action="store_true", help="built-in scenes test split (default without data)")
    parser.add_argument("--num_test_scenes", type=int, default=1000)
    parser.add_argument("--scenes_seed", type=int, default=0)
    parser.add_argument("--urban1k", help="Urban1k-style folder with image/ and caption/")
    parser.add_argument("--coco_json", help="COCO captions JSON, e.g. annotations/captions_val2017.json")
    parser.add_argument("--coco_images", help="image folder of --coco_json")
    parser.add_argument("--zeroshot_folder", help="folder of class subfolders of images")
    parser.add_argument("--dataset", help="a datasets Hub name, data folder or save_to_disk folder")
    parser.add_argument("--split", help="split of --dataset (default: 'test', or the only split if it has one)")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--caption_column", help="caption column(s), comma separated; strings or lists of strings")
    parser.add_argument("--label_column", help="ClassLabel column for zero-shot classification")
    parser.add_argument("--i2i_label_column", help="integer class column: image-to-image retrieval (mAP, R@1)")
    parser.add_argument(
        "--templates",
        help="zero-shot prompt templates: a text file (one per line, '{}' for the class name) or a JSON list "
        "(default: OpenAI's 80 ImageNet templates)",
    )
    parser.add_argument(
        "--classnames",
        help="zero-shot class names in label order (sorted subfolders of --zeroshot_folder): one per line or a "
        "JSON list (default: the subfolder names or the ClassLabel names)",
    )
    parser.add_argument("--scorings", help="comma separated subset of plain,modular (default: by model type)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default="results.json")
    parser.add_argument("--attack", choices=ATTACKS, help="also zero-shot top-1 under this l_inf attack (robust.py)")
    parser.add_argument("--eps", default="2/255,4/255", help="--attack budgets in [0, 1] pixels, comma separated")
    parser.add_argument("--attack_steps", type=int, default=10, help="--attack iterations")
    args = parser.parse_args(argv)
    try:
        args.eps = [parse_eps(eps) for eps in args.eps.split(",")]
        for eps in args.eps if args.attack else ():
            check_attack(eps, args.attack_steps, where=f"--attack {args.attack} --attack_steps")
    except ValueError as error:
        parser.error(str(error))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}, but torch sees no CUDA device; use --device cpu.")
    if bool(args.coco_json) != bool(args.coco_images):
        parser.error("--coco_json and --coco_images go together.")
    if args.dataset and not (args.caption_column or args.label_column or args.i2i_label_column):
        parser.error("--dataset needs --caption_column (retrieval), --label_column (zero-shot) and/or "
                     "--i2i_label_column (image-to-image retrieval).")
    if (args.templates or args.classnames) and not (args.zeroshot_folder or args.label_column):
        parser.error("--templates and --classnames apply to --zeroshot_folder or --dataset --label_column.")
    if args.classnames and args.zeroshot_folder and args.label_column:
        parser.error("--classnames names the classes of one zero-shot set; give --zeroshot_folder or --label_column.")
    return args


def choose_split(dataset: str) -> str:
    """`"test"` if `dataset` has a test split, else its only split (logged); a `ValueError` listing the splits when
    there are several and none is `"test"`."""
    path = Path(dataset)
    if (path / "state.json").is_file():  # a `save_to_disk` Dataset: one split under whatever name is asked
        return "test"
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
    else:
        splits = get_dataset_split_names(dataset)
    if "test" in splits:
        return "test"
    if len(splits) == 1:
        logger.warning("%s has no 'test' split; evaluating its only split, %r.", dataset, splits[0])
        return splits[0]
    raise ValueError(f"{dataset} has splits {list(splits)} and none is 'test'; choose one with --split.")


def eval_sets_from_args(args: argparse.Namespace) -> tuple[list[EvalSet], dict[str, str]]:
    """The sets named on the command line (the built-in scenes when none is), and each set's source."""
    templates = read_templates(args.templates) if args.templates else OPENAI_IMAGENET_TEMPLATES
    class_names = read_classnames(args.classnames) if args.classnames else None
    templates_source = f"templates {args.templates or 'OpenAI ImageNet (80)'}"
    sets: list[EvalSet] = []
    sources: dict[str, str] = {}

    def add(eval_set: EvalSet, source: str) -> None:
        sets.append(eval_set)
        sources[eval_set.name] = source

    if args.urban1k:
        add(load_urban1k(args.urban1k), str(args.urban1k))
    if args.coco_json:
        add(load_coco_captions(args.coco_json, args.coco_images), f"{args.coco_json} with images {args.coco_images}")
    if args.zeroshot_folder:
        eval_set = classification_set_from_folder(args.zeroshot_folder, templates, class_names=class_names)
        add(eval_set, f"{args.zeroshot_folder}, {templates_source}")
    if args.dataset:
        split_name = args.split or choose_split(args.dataset)
        split = load_source(DataArguments(dataset_name=args.dataset), split_name)
        name = Path(args.dataset).name or args.dataset
        source = f"{args.dataset}, split {split_name}"
        if args.caption_column:
            add(retrieval_set_from_dataset(split, args.image_column, args.caption_column.split(","), name), source)
        if args.label_column:
            eval_set = classification_set_from_dataset(
                split, args.image_column, args.label_column, f"{name}_zeroshot", templates, class_names
            )
            add(eval_set, f"{source}, {templates_source}")
        if args.i2i_label_column:
            eval_set = image_retrieval_set_from_dataset(split, args.image_column, args.i2i_label_column, f"{name}_i2i")
            add(eval_set, source)
    if args.builtin or not sets:
        # The test split does not depend on the number of training scenes, so none is generated.
        scenes = make_scenes(num_train=0, num_test=args.num_test_scenes, seed=args.scenes_seed)["test"]
        source = f"built-in scenes, test split ({args.num_test_scenes} scenes, seed {args.scenes_seed})"
        scene_sets = scene_eval_sets(scenes)
        scene_sets.append(scene_image_retrieval_set(scenes, images=scene_sets[0].images))  # images encoded once
        sets = scene_sets + sets
        sources = {eval_set.name: source for eval_set in scene_sets} | sources
    return sets, sources


def describe_model(path: str) -> dict[str, str]:
    """The evaluated checkpoint: `{"path", "config_sha256"}`, the hash of its config.json's bytes (a local folder, or
    the Hub file the loader has just cached)."""
    config_file = Path(path, "config.json") if Path(path).is_dir() else Path(hf_hub_download(path, "config.json"))
    return {"path": str(path), "config_sha256": hashlib.sha256(config_file.read_bytes()).hexdigest()}


def run(argv: Sequence[str] | None = None) -> dict:
    """`smartclip-eval` as a function: evaluates, writes the JSON, prints the table and returns the results."""
    args = parse_args(argv)
    model, processor = load_model_and_processor(args.model)
    model.to(args.device)
    eval_sets, sources = eval_sets_from_args(args)
    scorings = args.scorings.split(",") if args.scorings else None
    results = evaluate_model(model, processor, eval_sets, scorings, args.batch_size, progress=True)
    scorings = [scoring for scoring in SCORINGS if scoring in results]
    if args.attack:  # beside each scoring's clean acc1: "<set>/acc1_<attack>_eps<k>"
        robust = robust_evaluation(model, processor, eval_sets, scorings, args.attack, args.eps, args.attack_steps,
                                   args.batch_size)
        for scoring, metrics in robust.items():
            results[scoring].update(metrics)
    results = {"model": describe_model(args.model), "scorings": scorings, "datasets": sources} | results
    save_results(results, args.output)
    print(format_table({Path(args.model).name or args.model: results}))
    print(f"\nresults written to {args.output}")
    return results


def main(argv: Sequence[str] | None = None) -> None:
    """Console script `smartclip-eval`: exit status 0 on success; a user error is one line on stderr, status 2."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    with user_errors("smartclip-eval"):
        run(argv)


__all__ = ["choose_split", "describe_model", "eval_sets_from_args", "main", "parse_args", "run"]

if __name__ == "__main__":
    main()
