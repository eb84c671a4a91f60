"""Inference throughput. `get_image_features` images/s, `get_text_features` texts/s and the zero-shot
pipeline's images/s, SmartCLIP vs `CLIPModel` (identical towers). Goals: features >= 0.95; pipeline
>= 0.98 under plain scoring (`forward` skips the mask head there) and >= 0.93 under modular scoring.

The pipeline runs SmartCLIP's `forward`, which reads the configured scoring; both scorings are measured.

    python -m bench.inference [--size mid] [--batch 64] [--quick]
"""

import numpy as np
import torch
from PIL import Image
from transformers import pipeline

from smartclip_data.scenes import COLOURS, SHAPES, SIZES
from smartclip_train.train import resolve_device

from .cli import main_for, parser
from .measure import count_flops, profile_difference, time_runs
from .report import Goal, row, section
from .towers import add_tower_arguments, random_batch, towers_from_arguments

GOAL = Goal(0.95, at_most=False)
PIPELINE_GOALS = {"plain": Goal(0.98, at_most=False), "modular": Goal(0.93, at_most=False)}
REPEATS = 9
LABELS = [f"{size} {colour} {shape}" for size in SIZES for colour in COLOURS for shape in SHAPES][:10]
TEMPLATE = "a photo of a {}."


def random_images(count: int, side: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)) for _ in range(count)]


def zero_shot(model, processor, device: torch.device):
    return pipeline(
        "zero-shot-image-classification", model=model, tokenizer=processor.tokenizer,
        image_processor=processor.image_processor, device=device,
    )


def flop_ratio(call, smartclip, clip) -> float:
    """CLIP's FLOPs over SmartCLIP's for `call(model)` (autograd on): the throughput ratio the extra work alone
    would give."""
    return count_flops(lambda: call(clip)) / count_flops(lambda: call(smartclip))


def run(args) -> dict:
    device = resolve_device(args.device)
    batch_size = 4 if args.quick else args.batch
    text_len = 16 if args.quick else args.text_len
    n_images = 2 if args.quick else args.pipeline_images
    repeats = args.repeats or (1 if args.quick else REPEATS)
    size_name, size, processor, clip, smartclip = towers_from_arguments(args)
    clip.to(device).eval()
    smartclip.to(device).eval()
    batch = {k: v.to(device) for k, v in random_batch(size, processor, batch_size, text_len).items()}
    images = random_images(n_images, size.image_size)
    print(f"[inference] size {size_name}, batch {batch_size}, text length {text_len}, {repeats} repeats")

    rows = []
    for kind, unit, call in (
        ("image", "images/s", lambda m: m.get_image_features(batch["pixel_values"]).pooler_output),
        ("text", "texts/s", lambda m: m.get_text_features(batch["input_ids"], batch["attention_mask"]).pooler_output),
    ):
        with torch.inference_mode():
            runs = {"smartclip": lambda: call(smartclip), "clip": lambda: call(clip)}
            seconds = time_runs(runs, repeats, args.warmup, device)
        rows.append(
            row(
                f"get_{kind}_features, batch {batch_size}", seconds["smartclip"].rate(batch_size, unit),
                seconds["clip"].rate(batch_size, unit), GOAL, flop_ratio=flop_ratio(call, smartclip, clip),
            )
        )

    # one forward of the pipeline: every label's prompt against one image
    prompts = [TEMPLATE.format(label) for label in LABELS]
    pipeline_inputs = processor(text=prompts, images=images[:1], return_tensors="pt", padding=True).to(device)

    pipelines = {"smartclip": zero_shot(smartclip, processor, device), "clip": zero_shot(clip, processor, device)}
    runs = {
        name: (lambda pipe=pipe: pipe(images, candidate_labels=LABELS, hypothesis_template=TEMPLATE))
        for name, pipe in pipelines.items()
    }
    forward_call = lambda m: m(**pipeline_inputs)
    profiled = False
    for scoring in ("plain", "modular"):
        smartclip.config.scoring = scoring
        seconds = time_runs(runs, repeats, args.warmup, device)
        result = row(
            f"zero-shot pipeline, {scoring} scoring, {len(LABELS)} labels",
            seconds["smartclip"].rate(n_images, "images/s"), seconds["clip"].rate(n_images, "images/s"),
            PIPELINE_GOALS[scoring], scoring=scoring, flop_ratio=flop_ratio(forward_call, smartclip, clip),
        )
        if result["met"] is False and not args.quick and device.type == "cpu" and not profiled:
            result["profile"] = profile_difference(runs)  # once, at the first pipeline row that misses
            profiled = True
        rows.append(result)
    smartclip.config.scoring = "plain"

    notes = [
        f"towers: {size_name} {size}; feature batches of {batch_size}, captions of {text_len} tokens.",
        f"pipeline: {n_images} random {size.image_size}x{size.image_size} images per call, one image per forward "
        f"(the pipeline's default), {len(LABELS)} labels, template {TEMPLATE!r}; SmartCLIP's forward runs the mask "
        "head only under modular scoring (output_text_masks=None skips it under plain scoring without a loss).",
        "ratio = SmartCLIP throughput / CLIP throughput (medians); flop_ratio = CLIP FLOPs / SmartCLIP FLOPs "
        "(torch.utils.flop_counter), the ratio that SmartCLIP's extra work alone would give.",
    ]
    settings = {
        "size": size_name, "mask_heads": smartclip.config.mask_num_attention_heads,
        "mask_width": smartclip.config.mask_hidden_size, "batch": batch_size,
        "text_len": text_len, "pipeline_images": n_images, "repeats": repeats,
    }
    return section("inference", "Inference throughput", device, settings, rows, notes)


def arguments():
    p = add_tower_arguments(parser(__doc__.splitlines()[0]))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--text-len", type=int, default=77)
    p.add_argument("--pipeline-images", type=int, default=16)
    return p


if __name__ == "__main__":
    main_for("inference", run, arguments())
