"""What does a SmartCLIP training step cost next to a CLIP one?

One step = zero the gradients, forward, loss, backward, AdamW step. SmartCLIP's step is `SmartCLIPTrainer`'s: a
forward without logits (`return_logits=False`, `output_text_masks=True`) and the `smartclip` objective; a second row
times `forward(return_loss=True)`. `CLIPModel` runs `forward(return_loss=True)`; towers, weights and inputs are
identical. Goal: time ratio <= 1.05 at batches 64 and 256.

    python -m bench.train_step [--size mid] [--batch 64 256] [--quick]
"""

import torch

from smartclip_train.objectives import build_objective
from smartclip_train.train import resolve_device

from .cli import main_for, parser
from .measure import count_flops, profile_difference, time_runs
from .report import Goal, row, section
from .towers import add_tower_arguments, random_batch, towers_from_arguments

GOAL = Goal(1.05, at_most=True)
REPEATS = 7


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> None:
    """`forward(return_loss=True)`, backward, step (CLIPModel's, and SmartCLIP's own loss)."""
    optimizer.zero_grad(set_to_none=True)
    model(**batch, return_loss=True).loss.backward()
    optimizer.step()


def trainer_step(model, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor], objective) -> None:
    """What `SmartCLIPTrainer.compute_loss` runs, then backward and step."""
    optimizer.zero_grad(set_to_none=True)
    outputs = model(**batch, output_text_masks=objective.needs_text_masks, return_logits=False)
    objective(model, outputs, batch)[0].backward()
    optimizer.step()


def run(args) -> dict:
    device = resolve_device(args.device)
    batches = [8] if args.quick else args.batch
    text_len = 16 if args.quick else args.text_len
    repeats = args.repeats or (1 if args.quick else REPEATS)
    size_name, size, processor, clip, smartclip = towers_from_arguments(args)
    clip.to(device).train()
    smartclip.to(device).train()
    optimizers = {"smartclip": torch.optim.AdamW(smartclip.parameters()), "clip": torch.optim.AdamW(clip.parameters())}
    objective = build_objective("smartclip")

    print(f"[train_step] size {size_name}, text length {text_len}, batches {batches}, {repeats} repeats")
    rows, profiled = [], False
    for batch_size in batches:
        batch = {k: v.to(device) for k, v in random_batch(size, processor, batch_size, text_len).items()}
        steps = {
            "trainer": lambda: trainer_step(smartclip, optimizers["smartclip"], batch, objective),
            "return_loss": lambda: training_step(smartclip, optimizers["smartclip"], batch),
            "clip": lambda: training_step(clip, optimizers["clip"], batch),
        }
        seconds = time_runs(steps, repeats, args.warmup, device)
        flops = {name: count_flops(step) for name, step in steps.items()}
        for variant, label in (("trainer", "SmartCLIPTrainer's step"), ("return_loss", "forward(return_loss=True)")):
            result = row(
                f"training step, batch {batch_size}, {label}", seconds[variant], seconds["clip"], GOAL,
                batch=batch_size, variant=variant, flop_ratio=flops[variant] / flops["clip"],
            )
            if result["met"] is False and not args.quick and device.type == "cpu" and not profiled:
                result["profile"] = profile_difference({variant: steps[variant], "clip": steps["clip"]})
                profiled = True  # once, at the first row that misses
            rows.append(result)

    notes = [
        f"towers: {size_name} {size}; captions of {text_len} tokens; SmartCLIP = CLIP's towers + mask head "
        f"({sum(p.numel() for p in smartclip.mask_head.parameters()):,} parameters, "
        f"{sum(p.numel() for p in clip.parameters()):,} in CLIP) + modular loss.",
        "ratio = SmartCLIP step time / CLIP step time (medians); runs alternate between the two models. "
        "flop_ratio = the same ratio in matmul/attention FLOPs (torch.utils.flop_counter), the work the mask head "
        "and the modular loss add whatever the machine's load.",
    ]
    settings = {
        "size": size_name, "mask_heads": smartclip.config.mask_num_attention_heads,
        "mask_width": smartclip.config.mask_hidden_size, "batches": batches,
        "text_len": text_len, "repeats": repeats, "warmup": args.warmup,
    }
    return section("train_step", "Training step time (forward + backward + AdamW)", device, settings, rows, notes)


def arguments():
    p = add_tower_arguments(parser(__doc__.splitlines()[0]))
    p.add_argument("--batch", type=int, nargs="+", default=[64, 256], help="batch sizes")
    p.add_argument("--text-len", type=int, default=77, help="tokens per caption")
    return p


if __name__ == "__main__":
    main_for("train_step", run, arguments())
