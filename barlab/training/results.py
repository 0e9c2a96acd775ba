"""``results.json``: the one file per run that sweeps, notebooks and ``barlab.analysis`` read."""

from __future__ import annotations

import datetime as _dt
import socket
from pathlib import Path
from typing import Any

import yaml

from barlab.utils.io import atomic_write_json

RESULTS_NAME = "results.json"


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["tokenizer.bits=10", "head=mbm"]`` → ``{"tokenizer.bits": 10, "head": "mbm"}`` (YAML-typed)."""
    parsed: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            continue
        key, value = item.split("=", 1)
        try:
            parsed[key.lstrip("+~")] = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed[key.lstrip("+~")] = value
    return parsed


def hydra_context() -> dict[str, Any]:
    """The overrides and job identity of the current Hydra job (empty outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
    except (ImportError, ValueError):
        return {"overrides": {}, "job_num": None, "mode": "none"}
    return {
        "overrides": parse_overrides(list(hydra_cfg.overrides.task)),
        "job_num": hydra_cfg.job.get("num"),
        "mode": str(hydra_cfg.mode).split(".")[-1].lower() if hydra_cfg.mode is not None else "run",
    }


def write_results(run_dir: str | Path, body: dict[str, Any]) -> Path:
    """Write ``<run_dir>/results.json`` atomically, stamped with time, host and Hydra overrides.

    Only global rank 0 writes (DDP / SLURM ranks share the run folder and rank 0 holds the scores).
    """
    from lightning.pytorch.utilities import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) != 0:
        return Path(run_dir) / RESULTS_NAME
    context = hydra_context()
    payload = {
        "status": body.pop("status", "ok"),
        "overrides": context["overrides"],
        "job_num": context["job_num"],
        **body,
        "run_dir": str(run_dir),
        "host": socket.gethostname(),
        "finished": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    return atomic_write_json(Path(run_dir) / RESULTS_NAME, payload)
