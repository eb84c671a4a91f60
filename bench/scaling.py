"""Data-parallel scaling. One process vs two (gloo, spawned) on the same global batch: SmartCLIP
training-step time and the loss agreement.

Each process holds `global_batch / world_size` pairs; the loss is the training objective's
(`smartclip_train.objectives`, which all-gathers the features so every rank computes the global batch's loss, or with `local_loss` its own rows
against the gathered ones), called as `SmartCLIPTrainer.compute_loss` calls it, and the model is wrapped in DDP when
there are two processes. Both runs start from the same weights and see the same batch, so the first step's loss and
gradient must agree up to float summation order; later steps may drift apart as updates amplify those differences.

    python -m bench.scaling [--size mid] [--global-batch 64] [--quick]
"""

import json
import socket
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from smartclip_train.distributed import process_group, spawn
from smartclip_train.objectives import build_objective
from smartclip_train.train import resolve_device

from .cli import main_for, parser
from .measure import Figure, time_runs
from .report import row, section
from .towers import add_tower_arguments, build_models, build_processor, random_batch, tower_size

SPAWN_TIMEOUT = 1800  # seconds; a run takes seconds (--quick) to minutes: past this it is a hang, and fails


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, settings: dict, out_path: str) -> None:
    """One rank: time `warmup + repeats` training steps on its share of the global batch; rank 0 writes the result."""
    torch.set_num_threads(settings["threads"])
    with process_group(rank, world_size, port):
        _time_steps(rank, world_size, settings, out_path)  # returns before the group ends: DDP is freed first


def _time_steps(rank: int, world_size: int, settings: dict, out_path: str) -> None:
    size = tower_size(settings["size"])
    processor = build_processor(size)
    # seeded: the same weights in every process
    _, model = build_models(size, processor, 0, settings["mask_heads"], settings["mask_width"])
    batch = random_batch(size, processor, settings["global_batch"], settings["text_len"], seed=1)
    share = settings["global_batch"] // world_size
    local = {name: value[rank * share : (rank + 1) * share] for name, value in batch.items()}
    model.train()
    wrapped = DistributedDataParallel(model) if world_size > 1 else model
    optimizer = torch.optim.AdamW(model.parameters())
    loss_fn = build_objective("smartclip", local_loss=settings["local_loss"])
    losses, grad_norms = [], []

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        outputs = wrapped(**local, output_text_masks=loss_fn.needs_text_masks, return_logits=False)
        loss, _ = loss_fn(wrapped, outputs, local)
        if settings["local_loss"]:  # each rank's share: the global loss is their mean (logged, not trained)
            loss_value = loss.detach().clone()
            dist.all_reduce(loss_value)
            losses.append(loss_value.item() / world_size)
        loss.backward()  # DDP averages the gradients over ranks here
        grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
        grad_norms.append(torch.cat(grads).norm().item())
        optimizer.step()
        if not settings["local_loss"]:
            losses.append(loss.item())

    seconds = time_runs({"step": step}, settings["repeats"], settings["warmup"])["step"]
    if rank == 0:
        result = {"seconds": asdict(seconds), "losses": losses, "grad_norms": grad_norms}
        Path(out_path).write_text(json.dumps(result))


def spawn_run(world_size: int, settings: dict, local_loss: bool = False) -> dict:
    """Runs `world_size` spawned processes; returns rank 0's step time and per-step losses and gradient norms."""
    with tempfile.TemporaryDirectory() as folder:
        out_path = str(Path(folder) / "result.json")
        settings = {**settings, "local_loss": local_loss}
        spawn(_worker, args=(world_size, free_port(), settings, out_path), nprocs=world_size, timeout=SPAWN_TIMEOUT)
        return json.loads(Path(out_path).read_text())


def run(args) -> dict:
    device = resolve_device(args.device)
    if device.type != "cpu":
        print("[scaling] gloo runs on CPU; measuring on CPU")
    settings = {
        "size": "tiny" if args.quick else args.size,
        "global_batch": 8 if args.quick else args.global_batch,
        "text_len": 16 if args.quick else args.text_len,
        "repeats": args.repeats or (1 if args.quick else 5),
        "warmup": args.warmup,
        "threads": args.threads,
        "mask_heads": args.mask_heads,
        "mask_width": args.mask_width,
    }
    if settings["global_batch"] % 2:
        raise ValueError(f"global_batch={settings['global_batch']}; expected an even number (two processes share it).")
    print(f"[scaling] {settings}")
    results = {world_size: spawn_run(world_size, settings) for world_size in (1, 2)}
    results["local"] = spawn_run(2, settings, local_loss=True)
    seconds = {key: Figure(**result["seconds"]) for key, result in results.items()}
    rows = []
    for key, label in ((2, "2 processes vs 1"), ("local", "2 processes with local_loss vs 1")):
        one, two = results[1]["losses"], results[key]["losses"]
        first_loss = abs(one[0] - two[0])
        first_grad = abs(results[1]["grad_norms"][0] - results[key]["grad_norms"][0]) / results[1]["grad_norms"][0]
        largest = max(abs(a - b) for a, b in zip(one, two))
        rows.append(
            row(
                f"training step, global batch {settings['global_batch']}, {label}", seconds[key], seconds[1],
                losses_1_process=one, losses_2_processes=two, first_loss_difference=first_loss,
                first_grad_norm_relative_difference=first_grad, max_loss_difference=largest,
                local_loss=key == "local",
                detail=(
                    f"first step: loss difference {first_loss:.1e}, gradient norm relative difference "
                    f"{first_grad:.1e}; largest loss difference over {len(one)} steps {largest:.1e}"
                ),
            )
        )
        print(f"    losses, 1 process: {[round(v, 6) for v in one]}; {label}: {[round(v, 6) for v in two]}")
    notes = [
        f"SmartCLIP, towers {settings['size']}, captions of {settings['text_len']} tokens; {settings['threads']} "
        "torch thread(s) per process, so two processes use twice the cores; ideal ratio 0.5.",
        "loss: smartclip_train.objectives' 'smartclip' objective (features all-gathered with autograd; the second row "
        "with local_loss=True, whose logged loss is the mean of the ranks' local losses), DDP over 2 ranks; "
        "agreement: the first step (same weights, same global batch) compares the loss and the gradient norm after "
        "DDP's averaging; every later step's loss is listed too (updates can amplify float-order differences, e.g. "
        "when a mask probability sits at the 0.5 threshold).",
    ]
    title = "Data-parallel scaling: 1 vs 2 processes (gloo)"
    return section("scaling", title, torch.device("cpu"), settings, rows, notes, ("2 processes", "1 process"))


def arguments():
    p = add_tower_arguments(parser(__doc__.splitlines()[0]))
    p.add_argument("--global-batch", type=int, default=64)
    p.add_argument("--text-len", type=int, default=77)
    return p


if __name__ == "__main__":
    main_for("scaling", run, arguments())
