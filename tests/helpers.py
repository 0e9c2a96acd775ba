"""Shared test helpers: run barlab's entry points in a subprocess, read their results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_module(module: str, *args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` with outputs and data under ``cwd`` (never the repo)."""
    env = dict(os.environ)
    env.update({
        "BARLAB_ROOT": str(cwd),
        "BARLAB_DATA_DIR": str(cwd / "data"),
        "WANDB_MODE": "offline",
        "PYTHONUNBUFFERED": "1",
    })
    # its own process group: a timeout kills every process it started (DDP ranks too), not only itself
    with subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def error_lines(stderr: str) -> list[str]:
    """The lines barlab prints for a user error."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def gpu_count() -> int:
    """CUDA devices this process sees (0 without a CUDA build of torch)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_if(min_gpus: int = 0) -> pytest.MarkDecorator:
    """A ``skipif`` mark, RunIf-style: skip unless the machine has what the test needs.

    Use it with the ``gpu`` marker (so ``-m "not gpu"`` deselects the test everywhere)::

        @pytest.mark.gpu
        @run_if(min_gpus=1)
        def test_on_cuda(): ...
    """
    reasons = []
    if min_gpus and gpu_count() < min_gpus:
        reasons.append(f"needs {min_gpus} GPU(s), has {gpu_count()}")
    return pytest.mark.skipif(bool(reasons), reason="; ".join(reasons) or "requirements met")
