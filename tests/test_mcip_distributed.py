"""MCIP's objective on two gloo processes, each with half the batch, equals one process with the whole batch (in
its own file: the spawned processes import only what this file imports)."""

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from transformers import CLIPModel

from modeling_smartclip import SmartCLIPModel
from smartclip_data.scratch import scratch_clip_config, scratch_processor
from smartclip_methods.mcip.objective import MCIPLoss, freeze_for_stage
from smartclip_train.trainer import MODEL_INPUTS

WORLD_SIZE, PER_RANK, K = 2, 3, 2
CAPTIONS = ["a red circle.", "a blue square.", "a green cross.", "a red circle.", "a yellow triangle.",
            "a small red square.", "a triangle.", "a blue circle.", "a large cross.", "a green square.",
            "a red cross.", "a yellow circle."]


def tiny_model_objective_and_batch() -> tuple[SmartCLIPModel, MCIPLoss, dict]:
    """The same model, class proxies and batch in every process (seeded, float64); MCIP's freezing applied."""
    torch.manual_seed(0)
    processor = scratch_processor()
    model = SmartCLIPModel.from_clip(CLIPModel(scratch_clip_config(processor, hidden_size=32, num_layers=1,
                                                                   projection_dim=16))).double()
    freeze_for_stage(model, "mcip")
    objective = MCIPLoss(class_weight=1.0, caption_weight=0.5, scale=8.0, margin=0.3)
    model.add_module("mcip_class_head", objective.build_class_head(3, 16).double())
    batch = dict(processor.tokenizer(CAPTIONS[::K], padding=True, return_tensors="pt"))
    captions = processor.tokenizer(CAPTIONS, padding=True, return_tensors="pt")
    batch |= {"caption_input_ids": captions["input_ids"], "caption_attention_mask": captions["attention_mask"],
              "caption_valid": torch.tensor([[True, True]] * 5 + [[True, False]]),
              "caption_keys": torch.tensor([CAPTIONS.index(c) for c in CAPTIONS]).reshape(6, K),  # text -> key
              "class_labels": torch.tensor([0, 1, 2, 0, 2, 1]),
              "pixel_values": torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1)).double()}
    return model, objective, batch


def loss_and_grads(model, objective, batch) -> dict:
    model.zero_grad(set_to_none=True)
    outputs = model(**{name: value for name, value in batch.items() if name in MODEL_INPUTS}, return_logits=False)
    loss, _ = objective(model, outputs, batch)
    loss.backward()
    return {"loss": loss.detach().reshape(1)} | {
        name: param.grad for name, param in model.named_parameters() if param.grad is not None}


def rank_slice(batch: dict, rank: int) -> dict:
    rows = lambda n: slice(rank * n, (rank + 1) * n)  # noqa: E731
    return {name: value[rows(PER_RANK * K) if name.startswith("caption_input") or name == "caption_attention_mask"
                        else rows(PER_RANK)] for name, value in batch.items()}


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        model, objective, batch = tiny_model_objective_and_batch()
        result = loss_and_grads(model, objective, rank_slice(batch, rank))
        for name, value in result.items():
            if name != "loss":  # what DDP does with the gradients
                dist.all_reduce(value)
                value /= WORLD_SIZE
        save_file({name: value.contiguous() for name, value in result.items()}, f"{out_dir}/{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_process_on_the_whole_batch(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    model, objective, batch = tiny_model_objective_and_batch()
    expected = loss_and_grads(model, objective, batch)
    assert "mcip_class_head.W" in expected and not any(name.startswith(("text_", "mask_head")) for name in expected)
    for rank in range(WORLD_SIZE):
        got = load_file(tmp_path / f"{rank}.safetensors")
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value, rtol=0, atol=1e-9, msg=f"{name} on rank {rank}")


