"""Shared test helpers: run barlab's entry points in a subprocess, read their results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def error_lines(stderr: str) -> list[str]:
    """The lines barlab prints for a user error."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]
