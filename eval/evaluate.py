"""`smartclip-eval`: retrieval, zero-shot, the atomic-concept probe and mask statistics, under plain and modular
scoring, side by side.

Results are a dict keyed first by scoring, then by `"{set}/{metric}"`:

    {"plain":   {"scenes_long/t2i_R@1": 0.21, ..., "scenes_atomic/acc": 0.53},
     "modular": {...same keys...},
     "mask_stats": {"scenes/density_long": 0.40, "scenes/density_sentence": 0.21, "scenes/sentence_in_long": 0.85},
     "counts": {"scenes_long": {"images": 1000, "texts": 1000}, ...}}

A scoring that was not run has no key; mask statistics are computed only with modular scoring (a model scored
plainly never uses its masks). Every score comes from `modeling_smartclip.retrieval.text_image_similarity`, the
one masked-similarity implementation that the loss and `forward` also call.
"""

import argparse
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from transformers import CLIPModel

from modeling_smartclip import SmartCLIPModel, SmartCLIPProcessor
from modeling_smartclip.configuration_smartclip import SCORINGS
from modeling_smartclip.loading import load_model_and_processor
from modeling_smartclip.retrieval import (
    EncodedTexts,
    ImageGallery,
    encode_gallery,
    encode_texts,
    text_image_similarity,
)

from smartclip_data.sources import DataArguments, load_image, load_source
from .sets import (
    AtomicProbeSet,
    ClassificationSet,
    EvalSet,
    MaskStatsSet,
    RetrievalSet,
    classification_set_from_dataset,
    classification_set_from_folder,
    load_coco_captions,
    load_urban1k,
    retrieval_set_from_dataset,
    scene_eval_sets,
)
from .metrics import classification_metrics, retrieval_metrics
from smartclip_data.scenes import make_scenes

RECALL_KS = (1, 5, 10)


def default_scorings(model: "SmartCLIPModel | CLIPModel") -> tuple[str, ...]:
    """Both scorings for a SmartCLIP whose mask head was trained; plain only for CLIP, a converted CLIP, the CLIP
    baseline and the random-mask control, whose heads were never trained."""
    if isinstance(model, CLIPModel) or not model.config.mask_head_trained:
        return ("plain",)
    return SCORINGS


class _Encoder:
    """Encodes images and captions in batches, each image sequence and each distinct caption only once per
    evaluation (the built-in sets share their images, and the mask statistics reuse the retrieval captions)."""

    def __init__(self, model: SmartCLIPModel, processor: SmartCLIPProcessor, batch_size: int):
        self.model, self.processor, self.batch_size = model, processor, batch_size
        self._galleries: dict[int, ImageGallery] = {}
        self._texts: dict[tuple[str, ...], EncodedTexts] = {}

    def images(self, images: Sequence) -> ImageGallery:
        # Keyed by identity: the sets are alive for the whole evaluation, so an id is never reused meanwhile.
        if id(images) not in self._galleries:
            embeds = []
            for start in range(0, len(images), self.batch_size):
                batch = [load_image(image) for image in images[start : start + self.batch_size]]
                pixel_values = self.processor(images=batch, return_tensors="pt")["pixel_values"]
                embeds.append(encode_gallery(self.model, pixel_values, self.batch_size).image_embeds)
            self._galleries[id(images)] = ImageGallery.from_embeddings(torch.cat(embeds))
        return self._galleries[id(images)]

    def texts(self, texts: list[str]) -> EncodedTexts:
        """`(n_text, D)` embeddings and masks; a caption repeated in `texts` is encoded once."""
        unique = tuple(dict.fromkeys(texts))
        if unique not in self._texts:
            embeds, masks = [], []
            for start in range(0, len(unique), self.batch_size):
                batch = list(unique[start : start + self.batch_size])
                tokens = self.processor(text=batch, return_tensors="pt", padding=True)
                encoded = encode_texts(self.model, tokens["input_ids"], tokens.get("attention_mask"), self.batch_size)
                embeds.append(encoded.text_embeds)
                masks.append(encoded.text_masks)
            self._texts[unique] = EncodedTexts(torch.cat(embeds), torch.cat(masks))
        encoded = self._texts[unique]
        if len(unique) == len(texts):
            return encoded
        position = {text: i for i, text in enumerate(unique)}
        rows = torch.tensor([position[text] for text in texts], device=encoded.text_embeds.device)
        return EncodedTexts(encoded.text_embeds[rows], encoded.text_masks[rows])


def class_prompts(encoder: _Encoder, eval_set: ClassificationSet) -> EncodedTexts:
    """One embedding and one mask per class from its template prompts.

    Embedding: the mean of the templates' unit-norm embeddings, renormalised (CLIP's prompt ensemble).
    Mask: the union (element-wise max) of the templates' binary masks, so the class is compared through every
    dimension any of its phrasings talks about; an intersection would drop a concept that one template's wording
    happens not to switch on, and the union matches how the `"union"` head builds a caption's mask from its words.
    """
    prompts = [template.format(name) for name in eval_set.class_names for template in eval_set.templates]
    encoded = encoder.texts(prompts)
    shape = (len(eval_set.class_names), len(eval_set.templates), -1)
    embeds = encoded.text_embeds.reshape(shape).mean(dim=1)  # (n_class, D)
    masks = encoded.text_masks.reshape(shape).amax(dim=1)  # (n_class, D)
    return EncodedTexts(embeds / embeds.norm(dim=-1, keepdim=True), masks)


def _retrieval(encoder: _Encoder, eval_set: RetrievalSet, scoring: str) -> dict[str, float]:
    similarity = text_image_similarity(encoder.texts(eval_set.texts), encoder.images(eval_set.images), scoring)
    recalls = retrieval_metrics(similarity, eval_set.text_to_image, RECALL_KS)
    # t2i = a text retrieves images (CLIP_benchmark's image retrieval); i2t = an image retrieves texts.
    metrics = {f"t2i_R@{k}": recalls[f"image_retrieval_recall@{k}"] for k in RECALL_KS}
    metrics |= {f"i2t_R@{k}": recalls[f"text_retrieval_recall@{k}"] for k in RECALL_KS}
    return metrics


def _zeroshot(encoder: _Encoder, eval_set: ClassificationSet, scoring: str) -> dict[str, float]:
    similarity = text_image_similarity(class_prompts(encoder, eval_set), encoder.images(eval_set.images), scoring)
    return classification_metrics(similarity, eval_set.labels)


def _atomic(encoder: _Encoder, eval_set: AtomicProbeSet, scoring: str) -> dict[str, float]:
    similarity = text_image_similarity(encoder.texts(eval_set.prompts), encoder.images(eval_set.images), scoring)
    device = similarity.device
    scores = similarity[eval_set.candidates.to(device), eval_set.object_image.to(device)[:, None]]  # (n_object, n_cand)
    target, held = eval_set.target.to(device), eval_set.held_out.to(device)
    # Each object is a one-image classification among its candidate prompts.
    return {
        "acc": classification_metrics(scores.T, target)["acc1"],
        "acc_held_out": classification_metrics(scores[held].T, target[held])["acc1"] if held.any() else math.nan,
    }


def _mask_stats(encoder: _Encoder, eval_set: MaskStatsSet) -> dict[str, float]:
    long_masks = encoder.texts(eval_set.long_captions).text_masks  # (n_long, D)
    sentence_masks = encoder.texts(eval_set.sentences).text_masks  # (n_sentence, D)
    inside = (sentence_masks * long_masks[eval_set.sentence_to_long.to(long_masks.device)]).sum(dim=1)
    size = sentence_masks.sum(dim=1)
    # A sentence with an empty mask has no share to measure; it is left out of the mean.
    nonempty = size > 0
    return {
        "density_long": long_masks.mean().item(),
        "density_sentence": sentence_masks.mean().item(),
        "sentence_in_long": (inside[nonempty] / size[nonempty]).mean().item() if nonempty.any() else math.nan,
    }


@torch.no_grad()
def evaluate_model(
    model: "SmartCLIPModel | CLIPModel",
    processor: SmartCLIPProcessor,
    eval_sets: Iterable[EvalSet],
    scorings: Sequence[str] | None = None,
    batch_size: int = 64,
) -> dict:
    """Every metric of every set under every scoring in `scorings` (default: `default_scorings(model)`).

    A transformers `CLIPModel` is converted with `SmartCLIPModel.from_clip` and scored plainly. Encoding runs in
    batches of `batch_size` on `model.device`. Returns the dict described in this module's docstring.
    """
    if isinstance(model, CLIPModel):
        model = SmartCLIPModel.from_clip(model).to(model.device)
        scorings = scorings or ("plain",)
    scorings = tuple(scorings or default_scorings(model))
    unknown = [s for s in scorings if s not in SCORINGS]
    if unknown or not scorings:
        raise ValueError(f"scorings={scorings}; expected a non-empty subset of {SCORINGS}.")

    was_training = model.training
    model.eval()
    try:
        results = _evaluate(_Encoder(model, processor, batch_size), eval_sets, scorings)
    finally:
        model.train(was_training)
    return results


def _evaluate(encoder: _Encoder, eval_sets: Iterable[EvalSet], scorings: tuple[str, ...]) -> dict:
    results: dict[str, dict] = {scoring: {} for scoring in scorings}
    counts: dict[str, dict[str, int]] = {}
    for eval_set in eval_sets:
        if isinstance(eval_set, MaskStatsSet):
            if "modular" in scorings:
                stats = _mask_stats(encoder, eval_set)
                results.setdefault("mask_stats", {}).update({f"{eval_set.name}/{k}": v for k, v in stats.items()})
            continue
        task = {RetrievalSet: _retrieval, ClassificationSet: _zeroshot, AtomicProbeSet: _atomic}.get(type(eval_set))
        if task is None:
            raise ValueError(f"cannot evaluate a {type(eval_set).__name__}; expected one of the sets in eval_data.")
        for scoring in scorings:
            metrics = task(encoder, eval_set, scoring)
            results[scoring].update({f"{eval_set.name}/{k}": v for k, v in metrics.items()})
        counts[eval_set.name] = eval_set.counts()
    results["counts"] = counts
    return results


def _cell(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def format_table(results_by_model: dict[str, dict]) -> str:
    """A markdown table of metrics (rows) by model and scoring (columns), and one of mask statistics if any.

    `results_by_model` maps a model's name to what `evaluate_model` returned for it; a model evaluated under plain
    scoring only simply has no modular column.
    """
    columns = [(model, s) for model, results in results_by_model.items() for s in SCORINGS if s in results]
    rows = list(dict.fromkeys(metric for model, s in columns for metric in results_by_model[model][s]))
    lines = [
        "| metric | " + " | ".join(f"{model} ({s})" for model, s in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    lines += [
        f"| {metric} | " + " | ".join(_cell(results_by_model[m][s].get(metric)) for m, s in columns) + " |"
        for metric in rows
    ]
    masked = [model for model, results in results_by_model.items() if "mask_stats" in results]
    if masked:
        stats = list(dict.fromkeys(k for model in masked for k in results_by_model[model]["mask_stats"]))
        lines += ["", "| mask statistic | " + " | ".join(masked) + " |", "|---|" + "---|" * len(masked)]
        lines += [
            f"| {stat} | " + " | ".join(_cell(results_by_model[m]["mask_stats"].get(stat)) for m in masked) + " |"
            for stat in stats
        ]
    return "\n".join(lines)


def save_results(results: dict, path: "str | Path") -> None:
    """Writes `results` as strict JSON: a NaN (e.g. `acc5` with fewer than 5 classes) becomes `null`."""

    def strict(value):
        if isinstance(value, dict):
            return {k: strict(v) for k, v in value.items()}
        return None if isinstance(value, float) and math.isnan(value) else value

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(strict(results), indent=2, allow_nan=False) + "\n", encoding="utf-8")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="smartclip-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="SmartCLIP folder, or a CLIP folder / Hub id (converted)")
    parser.add_argument("--builtin", action="store_true", help="built-in scenes test split (default without data)")
    parser.add_argument("--num_train_scenes", type=int, default=20000, help="train size the scenes were made with")
    parser.add_argument("--num_test_scenes", type=int, default=1000)
    parser.add_argument("--scenes_seed", type=int, default=0)
    parser.add_argument("--urban1k", help="Urban1k-style folder with image/ and caption/")
    parser.add_argument("--coco_json", help="COCO captions JSON, e.g. annotations/captions_val2017.json")
    parser.add_argument("--coco_images", help="image folder of --coco_json")
    parser.add_argument("--zeroshot_folder", help="folder of class subfolders of images")
    parser.add_argument("--dataset", help="a datasets Hub name, data folder or save_to_disk folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--caption_column", help="caption column(s), comma separated; strings or lists of strings")
    parser.add_argument("--label_column", help="ClassLabel column for zero-shot classification")
    parser.add_argument("--scorings", help="comma separated subset of plain,modular (default: by model type)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default="results.json")
    args = parser.parse_args(argv)
    if bool(args.coco_json) != bool(args.coco_images):
        parser.error("--coco_json and --coco_images go together.")
    if args.dataset and not (args.caption_column or args.label_column):
        parser.error("--dataset needs --caption_column (retrieval) and/or --label_column (zero-shot).")
    return args


def eval_sets_from_args(args: argparse.Namespace) -> list[EvalSet]:
    """The sets named on the command line; the built-in scenes when none is."""
    sets: list[EvalSet] = []
    if args.urban1k:
        sets.append(load_urban1k(args.urban1k))
    if args.coco_json:
        sets.append(load_coco_captions(args.coco_json, args.coco_images))
    if args.zeroshot_folder:
        sets.append(classification_set_from_folder(args.zeroshot_folder))
    if args.dataset:
        split = load_source(DataArguments(dataset_name=args.dataset), args.split)
        name = Path(args.dataset).name or args.dataset
        if args.caption_column:
            captions = args.caption_column.split(",")
            sets.append(retrieval_set_from_dataset(split, args.image_column, captions, name))
        if args.label_column:
            sets.append(classification_set_from_dataset(split, args.image_column, args.label_column, f"{name}_zeroshot"))
    if args.builtin or not sets:
        # Made with the training run's sizes and seed, this is exactly the test split that run held out.
        scenes = make_scenes(num_train=args.num_train_scenes, num_test=args.num_test_scenes, seed=args.scenes_seed)
        sets = scene_eval_sets(scenes["test"]) + sets
    return sets


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    model, processor = load_model_and_processor(args.model)
    model.to(args.device)
    scorings = args.scorings.split(",") if args.scorings else None
    results = evaluate_model(model, processor, eval_sets_from_args(args), scorings, args.batch_size)
    save_results(results, args.output)
    print(format_table({Path(args.model).name or args.model: results}))
    print(f"\nresults written to {args.output}")
    return results


__all__ = [
    "class_prompts", "default_scorings", "evaluate_model", "format_table", "main",
    "save_results",
]

if __name__ == "__main__":
    main()
