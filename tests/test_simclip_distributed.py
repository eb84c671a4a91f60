"""Two gloo processes, each with half the batch, get Sim-CLIP's loss and gradients of one process on the whole batch,
and `torchrun` of `smartclip-train-simclip` ends with one process's weights (without the random start, whose draws
depend on how the batch is split)."""

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from transformers import CLIPModel

from modeling_smartclip import SmartCLIPModel
from smartclip_data.scratch import scratch_clip_config, scratch_processor
from smartclip_methods.simclip.objective import SimCLIPLoss
from smartclip_methods.simclip.train import main as simclip_main

from .test_distributed import objective_loss_and_grads
from .test_torchrun import PER_DEVICE, assert_same_weights, flags, launch, torchrun

WORLD_SIZE, PER_RANK = 2, 3


def tiny_model_batch_and_objective() -> tuple[SmartCLIPModel, dict, SimCLIPLoss]:
    """The same student, teacher and batch in every process; float64, so that batch-size-dependent rounding stays
    far below the tolerance."""
    torch.manual_seed(0)
    processor = scratch_processor()
    config = scratch_clip_config(processor, hidden_size=32, num_layers=1, projection_dim=16)
    model = SmartCLIPModel.from_clip(CLIPModel(config)).double()
    objective = SimCLIPLoss.from_model(model, processor, steps=3, random_start=False, symmetric_weight=0.5,
                                       clean_weight=0.5)
    with torch.no_grad():  # the student moves away from its teacher
        for param in model.vision_model.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=torch.Generator().manual_seed(2), dtype=param.dtype))
    batch = dict(processor.tokenizer(["a red circle."] * WORLD_SIZE * PER_RANK, padding=True, return_tensors="pt"))
    pixels = torch.rand(WORLD_SIZE * PER_RANK, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    batch["pixel_values"] = objective.normalisation(pixels.double())
    return model.train(), batch, objective


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        model, batch, objective = tiny_model_batch_and_objective()
        local = {name: value[rank * PER_RANK : (rank + 1) * PER_RANK] for name, value in batch.items()}
        result = objective_loss_and_grads(model, local, objective)
        for value in result.values():  # DDP's mean of the gradients; the loss is a per-image mean, averaged the same
            dist.all_reduce(value)
            value /= WORLD_SIZE
        save_file({name: value.contiguous() for name, value in result.items()}, f"{out_dir}/rank-{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ranks_match_one_process_on_the_whole_batch(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    model, batch, objective = tiny_model_batch_and_objective()
    expected = objective_loss_and_grads(model, batch, objective)
    assert "visual_projection.weight" in expected and "text_projection.weight" not in expected
    for rank in range(WORLD_SIZE):
        got = load_file(tmp_path / f"rank-{rank}.safetensors")
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value, rtol=0, atol=1e-9, msg=f"{name} on rank {rank}")


# ----- through the real Trainer under torchrun ----------------------------------------------------------------------

SIMCLIP_CHILD = """
import sys
from smartclip_methods.simclip.train import main

main(sys.argv[1:])
"""
SIMCLIP_FLAGS = ["--simclip_random_start", "False", "--simclip_steps", "2", "--simclip_eps", "8/255"]


def test_torchrun_two_processes_equal_one_process(tmp_path, clip_dir):
    (tmp_path / "child.py").write_text(SIMCLIP_CHILD)
    launch(torchrun("child.py", *flags(clip_dir, tmp_path / "two", PER_DEVICE), *SIMCLIP_FLAGS), tmp_path)
    simclip_main(flags(clip_dir, tmp_path / "one", WORLD_SIZE * PER_DEVICE) + SIMCLIP_FLAGS)
    assert_same_weights(tmp_path / "two", tmp_path / "one")
    two, start = load_file(tmp_path / "two" / "model.safetensors"), SmartCLIPModel.from_clip(clip_dir).state_dict()
    assert not torch.equal(two["visual_projection.weight"], start["visual_projection.weight"])  # it trained
    assert torch.equal(two["text_projection.weight"], start["text_projection.weight"])  # and only the image side
