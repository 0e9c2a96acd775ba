"""Sampling grids (``python -m barlab.sample -m ... score=true``) → one table.

A grid point is a folder with ``sample_info.json`` (and ``metrics.json`` when it was scored). Each
row holds the point's sampling settings (``guidance``, ``temperature``, ``schedule``, ``allocation``:
``head default`` unless ``sampling.allocation`` was set),
its scores (``fid``, ``class_accuracy``, ``precision``, ``recall``, ``feature_label``), its sampling
speed, the generator's head and, when the generator belongs to a sweep job, that job's overrides
(``head``, ``tokenizer.bits``, ...), so a head sweep's grids line up with its table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

INFO_NAME = "sample_info.json"
# What tells one generator from another in a grid table, and one unmasking plan from another: the
# guidance x temperature surface of a panel or a best point is taken within one value of these.
GENERATOR_KEYS = ("head", "tokenizer.bits", "run_dir")
PLAN_KEYS = ("schedule", "allocation")
DEFAULT_ALLOCATION = "head default"
SCORES = ("fid", "class_accuracy", "precision", "recall", "kid", "inception_score", "feature_label", "backend")


def _owning_job(point: Path, root: Path) -> Path | None:
    """The nearest folder above ``point`` (up to ``root``) that holds a job's results.json."""
    for parent in point.parents:
        if (parent / "results.json").is_file():
            return parent
        if parent == root:
            return None
    return None


def grid_row(info_file: Path, root: Path) -> dict[str, Any]:
    """One row of a grid table from a point's ``sample_info.json`` (+ ``metrics.json``)."""
    from barlab.analysis.collect import job_row

    info = json.loads(info_file.read_text())
    sampling = info.get("sampling") or {}
    row: dict[str, Any] = {
        "guidance": sampling.get("guidance"), "temperature": sampling.get("temperature"),
        "schedule": sampling.get("schedule"),
        "allocation": "-".join(map(str, sampling["allocation"])) if sampling.get("allocation") else DEFAULT_ALLOCATION,
        "head": info.get("head"), "num_samples": info.get("num_samples"),
        "images_per_s": info.get("images_per_s"), "sampling_s": info.get("sampling_s"),
    }
    metrics_file = info_file.parent / "metrics.json"
    if metrics_file.is_file():
        scores = json.loads(metrics_file.read_text())
        row.update({k: scores.get(k) for k in SCORES})
    job = _owning_job(info_file.parent, root)
    if job is not None:
        owner = job_row(job)
        for key in owner.pop("_overrides"):
            row[key] = owner.get(key)
        row["params_head"] = owner.get("params_head")
        row["run_dir"] = str(job)
    row["point"] = str(info_file.parent.relative_to(root))
    return row


def load_grid(folder: str | os.PathLike):
    """Every sampling-grid point under ``folder`` as a pandas DataFrame (empty if there is none)."""
    import pandas as pd

    root = Path(folder)
    rows = [grid_row(path, root) for path in sorted(root.rglob(INFO_NAME))]
    return pd.DataFrame(rows)


def surface_keys(frame) -> list[str]:
    """The columns of ``frame`` that split it into guidance x temperature surfaces: the generator
    (head, bits, run) and the unmasking plan (schedule, allocation). An allocation override sampled at
    one (g, tau) is its own surface, never a cell of the head-default grid."""
    return [k for k in GENERATOR_KEYS + PLAN_KEYS if k in frame]


def best_points(frame, by: str = "fid"):
    """The row with the lowest ``by`` on each surface (:func:`surface_keys`) of a grid table."""
    keys = surface_keys(frame)
    scored = frame.dropna(subset=[by])
    if scored.empty:
        return scored.reset_index(drop=True)
    best = scored.loc[scored.groupby(keys, dropna=False)[by].idxmin()] if keys else scored.loc[[scored[by].idxmin()]]
    return best.reset_index(drop=True)
