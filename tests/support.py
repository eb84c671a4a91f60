"""What several test files share: a fresh interpreter without this package, a free loopback port, the naive
one-pair-at-a-time references of the masked similarity, and the demo's fixtures (a tiny hub-ready SmartCLIP, a
gallery folder, the app on loopback, a record of outgoing connections).

`run_without_package` runs code where this repository's packages are NOT importable: `python -S` skips
site-packages' `.pth` files (the editable install's import hook lives there); putting the site-packages directory
back on PYTHONPATH keeps transformers & co. importable, and a temporary working directory keeps the checkout off
`sys.path`. This is how a Hub user with only `trust_remote_code=True` sees a saved model.
"""

import contextlib
import json
import os
import re
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
import traceback
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from modeling_smartclip import SmartCLIPModel
from smartclip_data.scenes import COLOURS, SHAPES, make_scene

LOOPBACK = {"127.0.0.1", "::1", "localhost", "::ffff:127.0.0.1"}
# Gradio's queue statistics call pandas options that pandas 3 deprecates; the warnings are Gradio's, not the demo's.
GRADIO_PANDAS_WARNINGS = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]
UNREADABLE = "broken.png"
_connections: list | None = None
_hook_installed = False


# ----- processes and ports ----------------------------------------------------------------------------------------


def with_caption_specific_masks(model: SmartCLIPModel) -> SmartCLIPModel:
    """`model` with its head's last Linear drawn at std 1 and no bias: masks that differ between captions, as a
    trained head's do (a fresh head is all-on, so its modular scores equal the plain ones). In place; returned."""
    with torch.no_grad():
        model.mask_head.to_logits.weight.normal_()
        model.mask_head.to_logits.bias.zero_()
    return model


def run_without_package(code: str, env: dict[str, str] | None = None, timeout: int = 300) -> dict:
    """Runs `code`, which must print one JSON object on its last stdout line; returns that object."""
    full_env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"], "HF_HUB_OFFLINE": "1", **(env or {})}
    with tempfile.TemporaryDirectory() as cwd:
        result = subprocess.run(
            [sys.executable, "-S", "-c", code], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
        )
    if result.returncode:
        raise RuntimeError(f"fresh process failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----- references -------------------------------------------------------------------------------------------------


def naive_masked_similarity(text, image, masks):
    """cos(image_b * mask_a, text_a), one pair at a time."""
    out = torch.empty(len(text), len(image), dtype=text.dtype)
    for a in range(len(text)):
        for b in range(len(image)):
            out[a, b] = torch.nn.functional.cosine_similarity(image[b] * masks[a], text[a], dim=0)
    return out


def naive_linear_in_mask_similarity(text, image, masks, scale):
    """The documented formula, one pair at a time: `scale * <T_a * M_a, I_b> / (|T_a| sqrt(M_a . I_b^2))`. For binary
    masks it is the masked cosine; it is also what the straight-through gradient reaches the masks through."""
    rows = []
    for a in range(len(text)):
        row = [
            scale * (text[a] * masks[a] * image[b]).sum()
            / (text[a].norm() * (masks[a] * image[b].square()).sum().clamp_min(1e-6).sqrt())
            for b in range(len(image))
        ]
        rows.append(torch.stack(row))
    return torch.stack(rows)


# ----- the demo ---------------------------------------------------------------------------------------------------


def save_tiny_smartclip(clip_dir: Path, processor, path: Path) -> Path:
    """A SmartCLIP converted from the tiny test CLIP (modular scoring), saved with its processor as the Hub has it."""
    torch.manual_seed(0)  # the mask head is freshly initialised: the same masks on every run
    SmartCLIPModel.from_clip(clip_dir, scoring="modular").save_pretrained(path)
    processor.save_pretrained(path)
    return path


def write_gallery_folder(path: Path, size: int = 6) -> Path:
    """`size` scene PNGs, a file that only pretends to be a PNG, and the scenes' short captions."""
    rng = np.random.default_rng(0)
    pairs = [(shape, colour) for shape in SHAPES for colour in COLOURS]
    path.mkdir(parents=True)
    captions = []
    for i in range(size):
        scene = make_scene(rng, pairs)
        scene["image"].save(path / f"scene_{i}.png")
        captions += scene["short_captions"]
    (path / UNREADABLE).write_bytes(b"these bytes are not a PNG")
    (path / "captions.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
    return path


@contextlib.contextmanager
def running_demo(model_dir: Path, gallery_dir: Path):
    """Loads, builds and serves the demo on a free loopback port; yields `(url, demo, startup_seconds)`."""
    from smartclip_demo.app import SmartCLIPDemo, build_app, load_gallery_folder, serve  # gradio: demo tests only

    start = time.perf_counter()
    demo = SmartCLIPDemo.from_pretrained(str(model_dir), load_gallery_folder(gallery_dir))
    app = build_app(demo)
    _, url, _ = serve(app, "127.0.0.1", free_port(), prevent_thread_lock=True)
    try:
        yield url, demo, time.perf_counter() - start
    finally:
        app.close()


def _caller() -> str:
    """Where a connection came from, for the failure message: the innermost frames outside the socket layers."""
    frames = [
        f for f in traceback.extract_stack()[:-3] if not re.search(r"socket|httpcore|httpx|anyio|asyncio", f.filename)
    ]
    return " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames[-8:]))


def _record_connection(event: str, args: tuple) -> None:
    if _connections is None:
        return
    if event == "socket.connect" and isinstance(args[1], tuple) and args[1][0] not in LOOPBACK:
        _connections.append(("connect", args[1], _caller()))
    elif event == "socket.getaddrinfo":
        host = args[0].decode() if isinstance(args[0], bytes) else args[0]
        if host is not None and host not in LOOPBACK:
            _connections.append(("resolve", host, _caller()))


@contextlib.contextmanager
def recording_outgoing_connections():
    """Yields a list that fills with every non-loopback connect or name lookup made while the block runs.

    Audit hooks cannot be removed, so one hook is installed for the session and only records inside this block.
    """
    global _connections, _hook_installed
    if not _hook_installed:
        sys.addaudithook(_record_connection)
        _hook_installed = True
    _connections = []
    try:
        yield _connections
    finally:
        _connections = None


def write_huge_png(path: Path, width: int = 12_000, height: int = 12_000) -> Path:
    """A valid 1-bit PNG of `width` x `height` black pixels: a few tens of KB on disk, 430 MB once decoded to RGB.

    Written by hand (PIL would first allocate the whole image): signature, IHDR, one zlib-compressed IDAT, IEND.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte "none", then the row's bits
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * height, 9))
        + chunk(b"IEND", b"")
    )
    return path
