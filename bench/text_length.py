"""What Long-CLIP-style positions cost. SmartCLIP texts/s at 248 tokens vs 77 tokens.

Measured for `get_text_features` (the text tower) and `encode_text_and_masks` (tower + mask head), on captions that
fill every position (no padding). No goal: the ratio is what a caption of 248 tokens costs next to one of CLIP's 77.

    python -m bench.text_length [--size mid] [--batch 64] [--quick]
"""

import torch

from smartclip_train.train import resolve_device

from .cli import main_for, parser
from .measure import count_flops, time_runs
from .report import row, section
from .towers import CLIP_TEXT_POSITIONS, add_tower_arguments, random_batch, towers_from_arguments

LONG = 248
REPEATS = 7


def run(args) -> dict:
    device = resolve_device(args.device)
    batch_size = 4 if args.quick else args.batch
    repeats = args.repeats or (1 if args.quick else REPEATS)
    size_name, size, processor, _, smartclip = towers_from_arguments(args)
    smartclip.to(device).eval()
    batches = {
        length: {k: v.to(device) for k, v in random_batch(size, processor, batch_size, length).items()}
        for length in (LONG, CLIP_TEXT_POSITIONS)
    }
    lengths = f"{LONG} vs {CLIP_TEXT_POSITIONS} tokens"
    print(f"[text_length] size {size_name}, batch {batch_size}, {lengths}, {repeats} repeats")

    rows = []
    for method in ("get_text_features", "encode_text_and_masks"):
        calls = {
            length: (lambda batch=batch: getattr(smartclip, method)(batch["input_ids"], batch["attention_mask"]))
            for length, batch in batches.items()
        }
        with torch.inference_mode():
            seconds = time_runs(calls, repeats, args.warmup, device)
        rates = {length: seconds[length].rate(batch_size, "texts/s") for length in calls}
        rows.append(
            row(
                f"{method}, {LONG} vs {CLIP_TEXT_POSITIONS} tokens", rates[LONG], rates[CLIP_TEXT_POSITIONS],
                flop_ratio=count_flops(calls[CLIP_TEXT_POSITIONS]) / count_flops(calls[LONG]),
            )
        )
    notes = [
        f"towers: {size_name} {size}; batches of {batch_size} captions with every position filled.",
        f"ratio = texts/s at {LONG} tokens / texts/s at {CLIP_TEXT_POSITIONS} tokens (medians); flop_ratio = the "
        "same ratio from FLOPs alone (torch.utils.flop_counter). Attention grows with the square of the length, "
        "the rest linearly, so the ratio is a little under 77/248 = 0.31.",
    ]
    settings = {
        "size": size_name, "mask_heads": smartclip.config.mask_num_attention_heads,
        "mask_width": smartclip.config.mask_hidden_size, "batch": batch_size,
        "lengths": [LONG, CLIP_TEXT_POSITIONS], "repeats": repeats,
    }
    labels = (f"{LONG} tokens", f"{CLIP_TEXT_POSITIONS} tokens")
    return section("text_length", "Text length: 248 vs 77 tokens", device, settings, rows, notes, labels)


def arguments():
    p = add_tower_arguments(parser(__doc__.splitlines()[0]))
    p.add_argument("--batch", type=int, default=64)
    return p


if __name__ == "__main__":
    main_for("text_length", run, arguments())
