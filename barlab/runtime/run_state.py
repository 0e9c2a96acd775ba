"""A run folder's own record, so that a restarted job finds and continues its run.

``<run>/run.json`` (rank 0 writes it, atomically)::

    {"run_name": "...", "created": "...",
     "recipe": {...},                    # the resolved settings that define the run (see RECIPE_KEYS)
     "attempts": [{"started", "host", "pid", "slurm_job_id", "slurm_restart_count"}, ...],
     "wandb_ids": {"tokenizer": "...", "generator": "..."}}

``<run>/stages/<stage>.json``: the stage's result, written when the stage has finished; a
restarted ``stage=all`` job reuses a finished stage instead of training it again.

A job started in a folder that already holds work (a requeued SLURM job, or the same command run
again with the same ``run_name``) is a *restart*: it must carry the same recipe (else one line
names the first setting that differs), and each stage continues from its ``last.ckpt``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from barlab.errors import CheckpointError, ConfigError, DataError
from barlab.utils.io import atomic_write_json

log = logging.getLogger("barlab")

RUN_FILE = "run.json"
# What defines a run: changing any of these between a job and its restart is refused.
RECIPE_KEYS = ("stage", "seed", "tokenizer_ckpt", "data", "tokenizer", "generator", "head")
# ... except these, which may differ between attempts (loader processes, machine-specific paths).
VOLATILE = ("num_workers", "shards_dir", "download_dir", "idx_dir", "train_urls", "val_urls")


def is_rank_zero() -> bool:
    """Global rank 0 (Lightning reads RANK / LOCAL_RANK / SLURM_PROCID when it is imported)."""
    return getattr(rank_zero_only, "rank", 0) == 0


def resolved_nodes(cfg: DictConfig, keys: tuple[str, ...]) -> dict[str, Any]:
    """The resolved config nodes ``keys`` as plain Python, less the :data:`VOLATILE` settings."""
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in VOLATILE}
        return node

    full = OmegaConf.to_container(cfg, resolve=True)
    return {key: strip(full.get(key)) for key in keys}


def _recipe(cfg: DictConfig) -> dict[str, Any]:
    return resolved_nodes(cfg, RECIPE_KEYS)


# Keys a run recorded before they moved out of the generator node still carries there: the MBM head's
# size (now head.width / head.depth, already in the recorded head node, resolved) and the preset's
# sampling settings (now the top-level sampling node, which no recipe holds; its allocation was
# head.allocation). Left out of an old record, so that such a run continues.
MOVED_FROM_GENERATOR = ("head_width", "head_depth", "sampling")


def _in_current_layout(recipe: dict[str, Any]) -> dict[str, Any]:
    gen = recipe.get("generator")
    if isinstance(gen, dict) and any(key in gen for key in MOVED_FROM_GENERATOR):
        return {**recipe, "generator": {k: v for k, v in gen.items() if k not in MOVED_FROM_GENERATOR}}
    return recipe


def _first_difference(old: Any, new: Any, prefix: str = "") -> str | None:
    """Dotted path of the first setting that differs between two recipes, None if equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(old) + [k for k in new if k not in old]
        # a knob before the nested nodes that interpolate it (tokenizer.bits before tokenizer.quantizer.bits)
        keys.sort(key=lambda k: isinstance(old.get(k), dict) or isinstance(new.get(k), dict))
        for key in keys:
            found = _first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if old == new else f"{prefix.rstrip('.')} (was {old!r}, now {new!r})"


def stream_seed(seed: int, step: int) -> int:
    """Seed of the training data stream of a job that starts at ``step``.

    WebDataset's resampled stream has no position to restore, so a resumed job draws a fresh
    stream: a restart at step 0 replays the original one, a restart at step s draws another (it
    neither repeats the pre-empted epoch from its start nor reproduces an uninterrupted run).
    """
    return int(seed) if step == 0 else (int(seed) * 1_000_003 + int(step)) % 2**31


def checkpoint_step(path: str | Path) -> int:
    """``global_step`` of a Lightning checkpoint, read without loading its tensors."""
    try:
        payload = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        return int(payload.get("global_step", 0))
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        raise CheckpointError(f"{path}: not a readable Lightning checkpoint ({type(err).__name__}); "
                              "delete it to start the stage afresh") from None


def wait_for_file(path: Path, read: Callable[[Path], Any | None], timeout_s: float, what: str) -> Any:
    """Wait (non-zero ranks) until ``read(path)`` returns something other than None; return it."""
    deadline = time.monotonic() + timeout_s
    while (found := read(path)) is None:
        if time.monotonic() > deadline:
            raise DataError(f"{path}: {what} did not arrive within {timeout_s:.0f} s")
        time.sleep(1.0)
    return found


def wait_for_manifest(folder: Path, read: Callable[[str], dict | None], timeout_s: float = 3600.0) -> dict:
    """Wait (non-zero ranks) until rank 0 has finished the shard folder ``folder``; its manifest."""
    return wait_for_file(Path(folder), lambda p: read(str(p)), timeout_s, "rank 0's finished shards")


class RunState:
    """The record of one run folder; see the module docstring."""

    def __init__(self, run_dir: str | Path, record: dict[str, Any]):
        self.run_dir = Path(run_dir)
        self.record = record

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, cfg: DictConfig) -> "RunState":
        """Read (or start) the record of ``cfg.paths.output_dir`` and count this attempt.

        Raises ConfigError if the folder holds another recipe's work, or work while ``resume=false``.
        """
        run_dir = Path(cfg.paths.output_dir)
        path = run_dir / RUN_FILE
        recipe = _recipe(cfg)
        record = json.loads(path.read_text()) if path.is_file() else None
        if record is not None:
            if not cfg.get("resume", True) and cls.holds_work(run_dir):
                raise ConfigError("resume", f"run folder {run_dir} already holds a run and resume=false",
                                  fix="choose a new run_name=..., or resume=true to continue it")
            changed = _first_difference(_in_current_layout(record.get("recipe", {})), recipe)
            if changed:
                raise ConfigError("run_name", f"run folder {run_dir} holds a run with other settings: {changed}",
                                  fix="choose a new run_name=..., or run the original command to continue it")
        else:
            record = {"run_name": str(cfg.get("run_name") or run_dir.name),
                      "created": _dt.datetime.now().isoformat(timespec="seconds"),
                      "recipe": recipe, "attempts": [], "wandb_ids": {}}
        state = cls(run_dir, record)
        if is_rank_zero():
            record["attempts"].append({
                "started": _dt.datetime.now().isoformat(timespec="seconds"),
                "host": socket.gethostname(), "pid": os.getpid(),
                "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", 0)),
            })
            state.save()
            if state.restarts:
                log.info("continuing run %s (restart %d)", run_dir, state.restarts)
        return state

    @staticmethod
    def holds_work(run_dir: Path) -> bool:
        """A stage finished or a checkpoint was written in ``run_dir``."""
        return any((run_dir / "stages").glob("*.json")) or any((run_dir / "checkpoints").glob("*/*.ckpt"))

    def save(self) -> None:
        if is_rank_zero():
            atomic_write_json(self.run_dir / RUN_FILE, self.record)

    # ------------------------------------------------------------------ queries
    @property
    def restarts(self) -> int:
        """How many times this run was started again after its first attempt."""
        return max(0, len(self.record["attempts"]) - 1)

    def finished_stage(self, stage: str) -> dict[str, Any] | None:
        """The stored result of ``stage`` if it finished in an earlier attempt, else None."""
        path = self.run_dir / "stages" / f"{stage}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def mark_finished(self, stage: str, body: dict[str, Any]) -> None:
        """Record that ``stage`` finished, with its result (rank 0)."""
        if is_rank_zero():
            atomic_write_json(self.run_dir / "stages" / f"{stage}.json", body)

    def wandb_id(self, stage: str) -> str:
        """This run's wandb run id for ``stage``: made once, reused by every restart."""
        ids = self.record.setdefault("wandb_ids", {})
        if stage not in ids:
            ids[stage] = uuid.uuid4().hex[:12]
            self.save()
        return ids[stage]
