"""Runs Python code in a fresh interpreter where this repository's packages are NOT importable.

`python -S` skips site-packages' `.pth` files (the editable install's import hook lives there); putting the
site-packages directory back on PYTHONPATH keeps transformers & co. importable, and a temporary working directory
keeps the checkout off `sys.path`. This is how a Hub user with only `trust_remote_code=True` sees a saved model.
"""

import json
import os
import subprocess
import sys
import sysconfig
import tempfile


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
