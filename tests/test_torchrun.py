"""`torchrun` and `accelerate launch` with two gloo processes through the real Trainer end with the weights of one
process trained on the concatenated batches (per-device batch b on 2 processes vs 2b on 1, same data order), for
every objective and a streamed source, train Set-CLIP, and leave no process group behind. Every launch is bounded: a
hang fails the test."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from smartclip_train.objectives import OBJECTIVES
from smartclip_train.train import main as train_main

WORLD_SIZE = 2
PER_DEVICE = 4
LAUNCH_TIMEOUT = 240  # seconds; a launch takes about 20 s on 2 busy cores


def flags(model_dir, output_dir, per_device: int, objective: str = "smartclip") -> list[str]:
    """`smartclip-train` flags of a 3-step run on 24 built-in scenes (one epoch of global batch 8).

    Plain SGD: an update proportional to the gradient shows a gradient that is off by a factor (Adam's would not),
    and keeps float-order noise at noise level (Adam turns the noise in the key biases' gradients, zero in exact
    arithmetic as softmax cancels them, into steps of the learning rate's size).
    """
    return [
        "--model_name_or_path", str(model_dir), "--mask_num_attention_heads", "4", "--objective", objective,
        "--output_dir", str(output_dir), "--per_device_train_batch_size", str(per_device), "--max_steps", "3",
        "--num_train_scenes", "24", "--optim", "sgd", "--learning_rate", "0.1", "--mask_learning_rate", "0.1",
        "--use_cpu", "--seed", "0", "--report_to", "none",
        "--save_strategy", "no", "--logging_steps", "1", "--disable_tqdm", "true", "--dataloader_num_workers", "0",
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(command: list[str], cwd) -> str:
    """Runs `command` in its own session; fails the test if it exits non-zero or runs past `LAUNCH_TIMEOUT` (then
    the whole session, the launcher's workers included, is killed). Returns its stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:
        try:
            _, stderr = process.communicate(timeout=LAUNCH_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            _, stderr = process.communicate()
            pytest.fail(f"{' '.join(command[:4])} ... ran past {LAUNCH_TIMEOUT} s:\n{stderr[-4000:]}")
    errors = [line for line in stderr.splitlines() if "Error" in line]  # the launcher's summary hides the cause
    assert process.returncode == 0, "\n".join(errors[:5]) + "\n" + stderr[-2000:]
    return stderr


def torchrun(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD_SIZE),
            *arguments]


def assert_same_weights(got_dir, expected_dir) -> None:
    got, expected = load_file(got_dir / "model.safetensors"), load_file(expected_dir / "model.safetensors")
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-6, msg=name)  # the updates: ~1e-3


def one_process(model_dir, output_dir, objective: str = "smartclip", extra: list[str] = ()):
    """The reference: `smartclip-train` in this process on batches of `WORLD_SIZE * PER_DEVICE`."""
    train_main(flags(model_dir, output_dir, WORLD_SIZE * PER_DEVICE, objective) + list(extra))
    return output_dir


# What each rank runs: `smartclip-train`'s `main`, then a record of what it left behind (every rank's process group
# and DDP model should be gone when `main` returns).
CLI_CHILD = """
import gc, json, os, sys
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from smartclip_train.train import main

main(sys.argv[1:])
gc.collect()
left = {"process_group": dist.is_initialized(),
        "ddp_models": sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())}
with open(f"left-{os.environ['RANK']}.json", "w") as f:
    json.dump(left, f)
"""


def test_torchrun_two_processes_equal_one_process_and_leave_no_group(tmp_path, clip_dir):
    (tmp_path / "child.py").write_text(CLI_CHILD)
    launch(torchrun("child.py", *flags(clip_dir, tmp_path / "two", PER_DEVICE)), tmp_path)
    assert_same_weights(tmp_path / "two", one_process(clip_dir, tmp_path / "one"))
    for rank in range(WORLD_SIZE):
        left = json.loads((tmp_path / f"left-{rank}.json").read_text())
        assert left == {"process_group": False, "ddp_models": 0}, f"rank {rank}"


def test_accelerate_launch_two_cpu_processes_equal_one_process(tmp_path, clip_dir):
    # accelerate runs MULTI_CPU through mpirun; without MPI its `torchrun` launcher starts the processes, and
    # `use_cpu` (with `--use_cpu`) keeps them on gloo.
    config = tmp_path / "accelerate.yaml"
    config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nuse_cpu: true\nnum_machines: 1\n"
        f"num_processes: {WORLD_SIZE}\nmachine_rank: 0\nmain_process_ip: 127.0.0.1\n"
        f"main_process_port: {free_port()}\nmixed_precision: 'no'\ngpu_ids: all\n"
    )
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "-m",
               "smartclip_train.train", *flags(clip_dir, tmp_path / "two", PER_DEVICE, "clip")]
    launch(command, tmp_path)
    assert_same_weights(tmp_path / "two", one_process(clip_dir, tmp_path / "one", "clip"))


# The other objectives, a streamed source and the Set-CLIP plug-in in one torchrun launch: each run parses its command
# line as its script does and trains through `run_training`; the group is ended once, after the last.
OBJECTIVES_CHILD = """
import json, sys
from smartclip_methods.setclip.train import SetCLIPArguments, run_setclip_training
from smartclip_train.distributed import shut_down
from smartclip_train.train import parse_args, run_training

for argv in json.loads(sys.argv[1]):
    if "--setclip_base" in argv:
        *arguments, setclip_args = parse_args(argv, extra_arguments=(SetCLIPArguments,))
        run_setclip_training(*arguments, setclip_args)
    else:
        run_training(*parse_args(argv))
shut_down()
"""
# `{output folder: (objective, extra flags)}`; smartclip and clip are the tests above.
RUNS = {name: (name, []) for name in OBJECTIVES if name not in ("smartclip", "clip")} | {
    "random_mask": ("random_mask", ["--random_mask_density", "0.5"]),  # the starting head is untrained
    "streaming": ("smartclip", ["--streaming"]),
    "setclip": ("smartclip", ["--setclip_base", "smartclip", "--setclip_paired_fraction", "0.5"]),
}
# Runs that 2 processes cannot reproduce with 1: each rank draws its own random masks, and Set-CLIP mixes pairs and
# unpaired items per device batch.
NOT_COMPARED = {"random_mask", "setclip"}


def test_torchrun_trains_every_objective_a_stream_and_setclip(tmp_path, clip_dir):
    (tmp_path / "child.py").write_text(OBJECTIVES_CHILD)
    argvs = [flags(clip_dir, tmp_path / name, PER_DEVICE, objective) + extra
             for name, (objective, extra) in RUNS.items()]
    launch(torchrun("child.py", json.dumps(argvs)), tmp_path)
    for name, (objective, extra) in RUNS.items():
        assert (tmp_path / name / "model.safetensors").is_file(), name
        if name not in NOT_COMPARED:
            assert_same_weights(tmp_path / name, one_process(clip_dir, tmp_path / f"{name}-one", objective, extra))
