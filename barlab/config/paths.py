"""Where barlab's Hydra configs live."""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent.parent / "configs"
"""``configs/``: the entry configs (train, sample, evaluate, export, bench) and their groups."""

SWEEPS_DIR = CONFIG_DIR.parent / "sweeps"
"""``sweeps/``: the studies as complete Hydra configs, run with ``-cd sweeps -cn <name>``."""
