"""Two gloo processes, each with half the batch, train exactly like one process with the whole batch: every core
objective, with the global and with the local loss; and spawned ranks that hang are killed within a bound."""

import itertools
import time
import warnings

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from transformers import CLIPModel

from modeling_smartclip import SmartCLIPModel
from smartclip_data.scratch import scratch_clip_config, scratch_processor
from smartclip_train.collator import split_sentences
from smartclip_train.distributed import process_group, spawn
from smartclip_train.objectives import build_objective
from smartclip_train.trainer import MODEL_INPUTS
from tests.support import free_port

WORLD_SIZE = 2
SPAWN_TIMEOUT = 180  # seconds; the ranks take about 10 s
PER_RANK = 3
OBJECTIVES = {"smartclip": {}, "clip": {}, "paired_mask": {}, "longclip": {"pca_dim": 2}}  # pca_dim below the 6 images' rank
CAPTIONS = [
    "a red circle.", "a large blue square at the top left.", "a green cross and a yellow triangle.",
    "a small red square at the bottom right. a blue circle.", "a triangle.", "a yellow cross at the top right.",
]


def tiny_model_and_batch() -> tuple[SmartCLIPModel, dict]:
    """The same model and batch in every process (seeded); the batch holds each caption's first sentence too."""
    torch.manual_seed(0)
    processor = scratch_processor()
    config = scratch_clip_config(processor, hidden_size=32, num_layers=1, projection_dim=16)
    # float64: with float32, batch-size-dependent rounding can flip a mask bit that sits at the threshold.
    model = SmartCLIPModel.from_clip(CLIPModel(config), mask_num_attention_heads=4).double()
    # Captions and their first sentences tokenized together, as the collator does for Long-CLIP (same width).
    texts = processor.tokenizer(CAPTIONS + [split_sentences(c)[0] for c in CAPTIONS], padding=True, return_tensors="pt")
    batch = {name: texts[name][: len(CAPTIONS)] for name in ("input_ids", "attention_mask")}
    batch["first_input_ids"], batch["first_attention_mask"] = (texts[name][len(CAPTIONS) :] for name in texts)
    pixel_values = torch.randn(len(CAPTIONS), 3, 32, 32, generator=torch.Generator().manual_seed(1))
    batch["pixel_values"] = pixel_values.double()
    return model, batch


def with_first_sentences(batch: dict) -> dict:
    """The batch as `CaptionCollator(first_sentence=True)` delivers it: first sentences after the captions."""
    return batch | {name: torch.cat([batch[name], batch[f"first_{name}"]]) for name in ("input_ids", "attention_mask")}


def loss_and_grads(model: SmartCLIPModel, loss_name: str, batch: dict, local_loss: bool = False) -> dict:
    """One forward and backward through the objective, called as `SmartCLIPTrainer.compute_loss` calls it:
    `{"loss": ..., <param name>: grad, ...}`."""
    objective = build_objective(loss_name, local_loss=local_loss, **OBJECTIVES[loss_name])
    return objective_loss_and_grads(model, batch, objective)


def objective_loss_and_grads(model: SmartCLIPModel, batch: dict, objective) -> dict:
    """`loss_and_grads` for a built objective (a core one or a related method's)."""
    model.zero_grad(set_to_none=True)
    model_inputs = with_first_sentences(batch) if objective.needs_first_sentence else batch
    model_inputs = {name: value for name, value in model_inputs.items() if name in MODEL_INPUTS}
    outputs = model(**model_inputs, output_text_masks=objective.needs_text_masks, return_logits=False)
    loss, _ = objective(model, outputs, batch)
    loss.backward()
    grads = {name: param.grad for name, param in model.named_parameters() if param.grad is not None}
    return {"loss": loss.detach().reshape(1), **grads}


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    with process_group(rank, WORLD_SIZE, port):
        model, batch = tiny_model_and_batch()
        local = {name: value[rank * PER_RANK : (rank + 1) * PER_RANK] for name, value in batch.items()}
        for loss_name, local_loss in itertools.product(OBJECTIVES, (False, True)):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = loss_and_grads(model, loss_name, local, local_loss)
            for name, value in result.items():
                # What DDP does: average the gradients over ranks. A local loss is each rank's share of the global
                # one, so its mean over ranks is the global loss.
                if name != "loss" or local_loss:
                    dist.all_reduce(value)
                    value /= WORLD_SIZE
            path = f"{out_dir}/{loss_name}-{'local' if local_loss else 'global'}-{rank}.safetensors"
            save_file({name: value.contiguous() for name, value in result.items()}, path)
            with open(f"{out_dir}/warnings-{rank}.txt", "a") as log:
                log.writelines(f"{warning.message}\n" for warning in caught)


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ranks")
    spawn(_worker, args=(free_port(), str(out_dir)), nprocs=WORLD_SIZE, timeout=SPAWN_TIMEOUT)
    return out_dir


@pytest.mark.parametrize("mode", ["global", "local"])
@pytest.mark.parametrize("loss_name", list(OBJECTIVES))
def test_two_ranks_match_one_process_on_the_whole_batch(two_rank_results, loss_name, mode):
    model, batch = tiny_model_and_batch()
    assert len(batch["input_ids"]) == WORLD_SIZE * PER_RANK
    expected = loss_and_grads(model, loss_name, batch)  # one process: the local loss is the global one
    assert ("mask_head.to_logits.weight" in expected) == (loss_name in ("smartclip", "paired_mask"))
    for rank in range(WORLD_SIZE):
        got = load_file(two_rank_results / f"{loss_name}-{mode}-{rank}.safetensors")
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value, rtol=0, atol=1e-5, msg=f"{loss_name}: {name} on rank {rank}")


def test_gathering_uses_no_deprecated_collective(two_rank_results):
    for rank in range(WORLD_SIZE):
        assert "torch.distributed.nn.functional" not in (two_rank_results / f"warnings-{rank}.txt").read_text()


def _wait_for_a_missing_rank(rank: int, port: int) -> None:
    """Rank 1 never joins the group: rank 0 waits for it (in the group's set-up) until killed."""
    if rank == 0:
        with process_group(rank, WORLD_SIZE, port):
            pass
    else:
        time.sleep(3600)


def test_spawned_ranks_that_hang_are_killed_and_reported():
    with pytest.raises(TimeoutError, match=r"ranks \[0, 1\] of _wait_for_a_missing_rank still running after 10 s"):
        spawn(_wait_for_a_missing_rank, args=(free_port(),), nprocs=WORLD_SIZE, timeout=10)


def test_every_test_runs_under_a_time_limit(pytestconfig):
    assert pytestconfig.pluginmanager.hasplugin("timeout"), "pytest-timeout (the [test] extra) is not installed"
    assert 0 < float(pytestconfig.getini("timeout")) <= 600
