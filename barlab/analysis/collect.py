"""Gather a sweep folder into one table: one row per job, failed and missing jobs included.

A row holds the swept overrides under their own names (``head``, ``tokenizer.bits``, ``point``),
the job's scalar results (``psnr``, ``rfid``, ``gfid``, ``class_accuracy``, ``bits_per_image``,
...), and an ``outcome``:

- ``ok``: finished;
- ``refused``: stopped by a config check before training (e.g. a linear head over 2^32 codes);
- ``failed``: another user error (bad data, missing checkpoint);
- ``oom``: crashed out of memory; ``crashed``: any other crash; ``interrupted``: stopped (SIGTERM, Ctrl-C);
- ``missing``: the job folder exists but has no results.json (killed hard, or still running).

``reason`` says why for every outcome but ``ok``. The outcome is the one results.json records, set from the
type of what stopped the job (:func:`barlab.pipeline.results.outcome_of`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from barlab.pipeline.results import RESULTS_NAME, parse_overrides


def job_dirs(root: Path) -> list[Path]:
    """Every folder under ``root`` that is a job: it has results.json or Hydra's .hydra/overrides.yaml."""
    jobs = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("checkpoints", "tokens", "samples", "recon", "csv",
                                                        "wandb", "tensorboard", ".submitit")]
        here = Path(dirpath)
        if RESULTS_NAME in filenames or (here / ".hydra" / "overrides.yaml").is_file():
            jobs.add(here)
    return sorted(jobs, key=lambda p: (len(p.parts), _num(p.name), str(p)))


def _num(name: str) -> int:
    return int(name) if name.isdigit() else 1 << 30


def _overrides_from_hydra(job: Path) -> dict[str, Any]:
    path = job / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    try:
        return parse_overrides(yaml.safe_load(path.read_text()) or [])
    except yaml.YAMLError:
        return {}


PARAM_COLUMNS = ("params_head", "params_backbone")  # parameter counts of the generator's head and backbone


def job_row(job: Path) -> dict[str, Any]:
    """One row: overrides, scalar results, outcome and reason of the job in ``job``."""
    row: dict[str, Any] = {}
    path = job / RESULTS_NAME
    body: dict[str, Any] = {}
    if path.is_file():
        try:
            body = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            body = {"status": "crashed", "outcome": "crashed", "error": f"unreadable results.json: {err}"}
    overrides = body.get("overrides") or _overrides_from_hydra(job)
    row.update({k: v for k, v in overrides.items() if not k.startswith("hydra")})
    for key, value in body.items():
        if key in ("overrides",) or isinstance(value, (dict, list)):
            continue
        row[f"result.{key}" if key in overrides else key] = value
    stage = body.get("generator")  # stage=all nests the generator stage's numbers: lift its sizes
    for key in PARAM_COLUMNS:
        if key not in row and isinstance(stage, dict) and stage.get(key) is not None:
            row[key] = stage[key]
    status = body.get("status", "missing")
    row["status"] = status
    row["outcome"] = body.get("outcome", status)
    row["reason"] = (body.get("error") or ("no results.json: the job was killed or is still running"
                                           if not body else "")) if status != "ok" else ""
    row["job"] = body.get("job_num", _num(job.name) if job.name.isdigit() else None)
    row["run_dir"] = str(job)
    row["_overrides"] = [k for k in overrides if not k.startswith("hydra")]
    return row


def load_rows(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of every job under ``folder`` (a multirun folder, or any folder of runs)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    rows = [job_row(job) for job in job_dirs(root)]
    for row in rows:
        row.pop("_overrides")
    return rows


def load_sweep(folder: str | os.PathLike):
    """The sweep as a pandas DataFrame (one row per job), with the tokenizers' ``family`` column
    (discrete or continuous)."""
    import pandas as pd

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    rows = [job_row(job) for job in job_dirs(root)]
    swept = list(dict.fromkeys(k for row in rows for k in row.pop("_overrides")))
    frame = pd.DataFrame(rows)
    frame.attrs["swept"] = swept  # the override keys of the jobs, in order of appearance
    if "quantizer" in frame and "family" not in frame:  # results.json files written before the family key
        frame["family"] = frame["quantizer"].map(
            lambda q: None if not isinstance(q, str) else ("continuous" if q == "KLLatent" else "discrete"))
    return frame


def latest_sweep(task: str, log_dir: str | os.PathLike = "outputs") -> Path:
    """The newest ``<log_dir>/<task>/multiruns/<date_time>`` folder."""
    base = Path(log_dir) / task / "multiruns"
    runs = sorted(p for p in base.glob("*") if p.is_dir()) if base.is_dir() else []
    if not runs:
        raise FileNotFoundError(f"no sweep under {base}; run `python -m barlab.train -m -cd sweeps -cn {task}` first")
    return runs[-1]
