"""The loss alone. `modular_loss` vs `clip_loss`, forward + backward: time and peak memory; and the
local loss (open_clip's `local_loss`) on one of 2 ranks vs the global loss.

Goals: at B=4096, peak memory <= 1.35x CLIP's and time <= 2x, and no `(B, B, D)` tensor anywhere (the
per-pair form `cos(I_b * M_a, T_a)` built directly would hold `B*B*D*4` bytes; the table shows that figure next to
the largest tensor the modular loss really allocates); per-rank loss memory with the local loss at 2 ranks x B/2
<= 0.6x the global loss's.

    python -m bench.loss [--batch 256 1024 4096] [--dim 512 768] [--quick]
"""

import torch
import torch.nn.functional as F

from modeling_smartclip.losses import clip_loss, modular_loss
from smartclip_train.train import resolve_device

from .cli import main_for, parser
from .measure import Memory, peak_memory, saved_tensor_bytes, time_runs
from .report import Goal, memory_figure, row, section

MEMORY_GOAL = Goal(1.35, at_most=True)
TIME_GOAL = Goal(2.0, at_most=True)
LOCAL_MEMORY_GOAL = Goal(0.6, at_most=True)
GOAL_BATCH = 4096  # the goals are stated at this batch; smaller batches are shown without a goal
RANKS = 2
MIB = 2**20


def loss_inputs(batch: int, dim: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Leaf tensors shaped like the model's: unit-norm `(B, D)` embeddings, a 0/1 mask and its probabilities
    (both receive gradients, as the straight-through mask does), and the log-temperature."""
    generator = torch.Generator().manual_seed(seed)
    probs = torch.rand(batch, dim, generator=generator)
    leaves = {
        "text_embeds": F.normalize(torch.randn(batch, dim, generator=generator), dim=-1),
        "image_embeds": F.normalize(torch.randn(batch, dim, generator=generator), dim=-1),
        "text_masks": (probs > 0.5).float(),
        "text_mask_probs": probs,
        "logit_scale": torch.tensor(2.6592),
    }
    return {name: tensor.to(device).requires_grad_() for name, tensor in leaves.items()}


def clear_grads(inputs: dict[str, torch.Tensor]) -> None:
    for tensor in inputs.values():
        if torch.is_tensor(tensor):
            tensor.grad = None


def forward_backward(loss_fn, inputs: dict[str, torch.Tensor]) -> None:
    clear_grads(inputs)
    loss_fn(inputs).backward()


def loss_peak_memory(loss_fn, inputs: dict[str, torch.Tensor], device: torch.device) -> Memory:
    """Peak memory of forward + backward, gradients included; the previous gradients are freed before, not during,
    the measurement (a free of older memory would offset the loss's own allocations)."""
    clear_grads(inputs)
    return peak_memory(lambda: loss_fn(inputs).backward(), device)


def modular(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return modular_loss(**inputs)


def local_inputs(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank 0 of `RANKS` with the local loss: its own `(B / RANKS, D)` rows and the gathered `(B, D)` features, all
    leaves that receive gradients (in a real run the gathered ones come from the all-gather)."""
    rows = len(inputs["text_embeds"]) // RANKS
    own = {name: inputs[name][:rows].detach().clone().requires_grad_() for name in
           ("text_embeds", "image_embeds", "text_masks", "text_mask_probs")}
    gathered = {f"all_{name}": inputs[name].detach().clone().requires_grad_() for name in
                ("text_embeds", "image_embeds", "text_masks")}
    return {**own, **gathered, "logit_scale": inputs["logit_scale"], "label_offset": 0}


def local_modular(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return modular_loss(**inputs)


def clip(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return clip_loss(inputs["text_embeds"], inputs["image_embeds"], inputs["logit_scale"])


def run(args) -> dict:
    device = resolve_device(args.device)
    batches = [32, 64] if args.quick else args.batch
    dims = [16] if args.quick else args.dim
    print(f"[loss] batches {batches}, dims {dims}")
    rows = []
    for dim in dims:
        for batch in batches:
            # the largest sizes take seconds per call on one CPU core: fewer repeats there
            repeats = args.repeats or (1 if args.quick else 5 if batch * batch * dim <= 1024**2 * 768 else 3)
            inputs = loss_inputs(batch, dim, device)
            local = local_inputs(inputs)
            losses = {"modular": modular, "clip": clip}
            runs = {name: (lambda fn=fn: forward_backward(fn, inputs)) for name, fn in losses.items()}
            seconds = time_runs(runs, repeats, args.warmup, device)
            memory = {name: loss_peak_memory(fn, inputs, device) for name, fn in losses.items()}
            memory["local"] = loss_peak_memory(local_modular, local, device)
            saved = {name: saved_tensor_bytes(lambda fn=fn: fn(inputs))[1] / MIB for name, fn in losses.items()}
            naive_mib = batch * batch * dim * 4 / MIB
            label, shape = f"B={batch}, D={dim}", {"batch": batch, "dim": dim}
            at_goal = batch == GOAL_BATCH or args.quick
            rows.append(
                row(f"loss time, {label}", seconds["modular"], seconds["clip"], TIME_GOAL if at_goal else None, **shape)
            )
            largest = memory["modular"].largest_allocation_bytes
            largest_mib = largest / MIB if largest is not None else None
            rows.append(
                row(
                    f"loss peak memory, {label}", memory_figure(memory["modular"]), memory_figure(memory["clip"]),
                    MEMORY_GOAL if at_goal else None, **shape, naive_pairwise_mib=naive_mib,
                    largest_tensor_mib=largest_mib,
                    saved_for_backward_mib={"ours": saved["modular"], "clip": saved["clip"]},
                    detail=(
                        f"per-pair B*B*D*4 = {naive_mib:,.1f} MiB; largest tensor "
                        f"{'n/a' if largest_mib is None else f'{largest_mib:,.1f}'} MiB; saved for backward "
                        f"{saved['modular']:,.1f} vs {saved['clip']:,.1f} MiB"
                    ),
                )
            )
            rows.append(
                row(
                    f"local loss peak memory per rank, {RANKS} ranks x B={batch // RANKS}, D={dim}",
                    memory_figure(memory["local"]), memory_figure(memory["modular"]),
                    LOCAL_MEMORY_GOAL if at_goal else None, **shape, ranks=RANKS,
                )
            )
    notes = [
        "inputs are leaf tensors (B, D): unit-norm text and image embeddings, a 0/1 mask and its probabilities "
        "(all receiving gradients) and the log-temperature; one call = loss forward + backward.",
        "peak memory: CUDA, torch.cuda.max_memory_allocated; CPU, the running sum of torch's allocations and frees "
        "recorded by torch.profiler (profile_memory=True) during forward + backward, gradients included. "
        "'saved for backward' sums the distinct storages autograd saves (saved_tensors_hooks) plus the loss.",
        "naive_pairwise_mib = B*B*D*4 bytes, what materialising cos(I_b * M_a, T_a) per pair would hold; "
        "largest_tensor_mib = the largest single allocation the modular loss makes.",
        "floor: the modular loss has two more (B, D) inputs that receive gradients (mask and probabilities), so its "
        "input gradients alone are 4*B*D*4 bytes against CLIP's 2*B*D*4; while B*B is small next to B*D (B <= D) "
        "that alone puts the ratio near 2, so the goals apply at B=4096, where the (B, B) terms dominate.",
        "masked_similarity's training path (an autograd function) keeps one (B, B) tensor for backward and "
        "recomputes the numerator there; the logit scale multiplies the (B, D) side.",
        f"local loss: rank 0 of {RANKS}, modular_loss(own (B/{RANKS}, D) features, all_* = the gathered (B, D) "
        "features, all leaves receiving gradients), against the global modular loss on (B, D); the gather's own "
        "buffers are not counted (they are the same (B, D) features either way).",
    ]
    settings = {"batches": batches, "dims": dims, "warmup": args.warmup}
    return section(
        "loss", "Modular loss vs CLIP loss (forward + backward)", device, settings, rows, notes, ("modular", "CLIP")
    )


def arguments():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--dim", type=int, nargs="+", default=[512, 768])
    return p


if __name__ == "__main__":
    main_for("loss", run, arguments())
