"""The ``device=`` knob of the one-shot tools (sample, evaluate, bench)."""

from __future__ import annotations

import torch

from barlab.errors import ConfigError


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA if present), ``cpu`` or ``cuda``; a bad name or a missing GPU is refused in one line."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "CUDA is not available on this machine", fix="device=cpu (or auto)")
    if name not in ("cpu", "cuda"):
        raise ConfigError("device", f"unknown device {name!r}", fix="device=auto")
    return torch.device(name)
