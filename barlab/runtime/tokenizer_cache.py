"""A content-addressed cache of trained tokenizers and their token shards.

Sweep jobs that share a tokenizer config train it once: ``head=linear,bitwise,mbm
tokenizer.bits=8,16,24,32`` trains 4 tokenizers, not 12. An entry lives in
``<cache.dir>/tokenizers/<key>/``::

    key.json           # what the key was made of (the resolved settings below)
    result.json        # the tokenizer stage's result (PSNR, rFID, ...) from the run that trained it
    tokenizer.pt       # the exported tokenizer
    recon_grid.png     # its reconstruction grid, when it had one
    tokens_<n>/        # token shards of that tokenizer, n sequences per shard (written on first use);
                       # tokens_<n>_train<N>... when generator.data.pretokenize limits them

**The key** is a hash of every resolved setting that changes the trained weights or the stage's
numbers: ``tokenizer``, ``data`` (less loader processes and machine paths), ``seed``, ``trainer``,
``callbacks`` (EMA; not the report-only ``progress_log``), ``final_eval`` and ``metrics`` (less
the generator's ``gfid``), plus :data:`CACHE_FORMAT`. Two configs that differ anywhere there never
share an entry. The key does not cover barlab's code: after a change to the tokenizer's code, train afresh with
``cache.tokenizer=false`` or delete the entry.

**Parallel jobs and ranks.** Rank 0 of a job holds an exclusive file lock on the key while it looks
the entry up and, on a miss, while it trains and publishes it; other jobs with the same key wait,
then reuse it. Every rank of a job must make the same choice (a rank that trains alone waits
forever in DDP's first collective), so rank 0 writes its choice into the run folder
(``stages/tokenizer.cache.json``) under this attempt's token (:func:`attempt_token`), and the other
ranks read it instead of looking the cache up themselves. An entry is published by renaming a
finished temporary folder, so a reader never sees half an entry; a job killed while training
leaves none, and the next job with that key trains it.

The run folder stays complete: a cached ``tokenizer.pt`` is hard-linked into it (copied across file
systems), and ``<run>/tokens`` is a symbolic link to the entry's shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from barlab.errors import BarlabError
from barlab.runtime.run_state import RunState, is_rank_zero, resolved_nodes, wait_for_file
from barlab.tokenizer.checkpoint import load_tokenizer
from barlab.utils.io import atomic_write_json, disk_full_as_error, link_or_copy
from barlab.utils.locks import exclusive_lock

log = logging.getLogger("barlab")

# Bump when the meaning of an entry changes (its files, or what the key covers).
CACHE_FORMAT = 1
KEY_NODES = ("tokenizer", "data", "seed", "trainer", "callbacks", "final_eval", "metrics")
# Callbacks that only report (they never change the trained weights): left out of the key.
REPORT_ONLY_CALLBACKS = ("progress_log",)
DECISION_FILE = "tokenizer.cache.json"
# How long a rank > 0 waits for rank 0's choice (rank 0 may first wait for another job's training).
DECISION_TIMEOUT_S = 7 * 24 * 3600.0


def cache_key(cfg: DictConfig) -> tuple[str, dict[str, Any]]:
    """``(key, spec)``: the 16-hex-digit key of ``cfg``'s tokenizer and the settings it hashes."""
    run_dir = str(cfg.paths.output_dir)

    def without_run_paths(node: Any) -> Any:  # where this run writes (checkpoints, grids) is not a setting
        if isinstance(node, dict):
            return {k: without_run_paths(v) for k, v in node.items()
                    if not (isinstance(v, str) and v.startswith(run_dir))}
        return node

    spec = without_run_paths(resolved_nodes(cfg, KEY_NODES))
    spec["metrics"] = {k: v for k, v in (spec.get("metrics") or {}).items() if k != "gfid"}
    spec["callbacks"] = {k: v for k, v in (spec.get("callbacks") or {}).items() if k not in REPORT_ONLY_CALLBACKS}
    spec["format"] = CACHE_FORMAT
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16], spec


def attempt_token() -> str:
    """An id shared by every rank of this attempt of a job, and different for every attempt.

    SLURM: job id, step id and restart count (all tasks of a step share them). torchrun: its run id
    and restart count. Otherwise rank 0 draws one and leaves it in ``BARLAB_ATTEMPT``, which the
    child ranks it starts inherit (``JobProcesses`` removes it when the job ends).
    """
    if os.environ.get("SLURM_JOB_ID"):
        names = ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_RESTART_COUNT")
    elif os.environ.get("TORCHELASTIC_RUN_ID"):
        names = ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")
    else:
        return os.environ.setdefault("BARLAB_ATTEMPT", uuid.uuid4().hex)
    return ".".join(os.environ.get(name, "0") for name in names)


class TokenizerCache:
    """The cache entry of one tokenizer config; see the module docstring."""

    def __init__(self, cfg: DictConfig):
        self.key, self.spec = cache_key(cfg)
        self.root = Path(cfg.cache.dir) / "tokenizers"
        self.entry = self.root / self.key

    @property
    def lock_path(self) -> str:
        return str(self.root / f"{self.key}.lock")

    @staticmethod
    def tokens_dir_of(entry: str | Path, shard_size: int, suffix: str = "") -> Path:
        """Where the token shards (``shard_size`` sequences each) of the tokenizer in ``entry`` live;
        ``suffix`` tells apart shards pretokenized with limits (``PretokenizeLimits.folder_suffix``)."""
        return Path(entry) / f"tokens_{int(shard_size)}{suffix}"

    def lookup(self) -> dict[str, Any] | None:
        """The stored stage result if the entry is complete and its tokenizer loads, else None."""
        result_file = self.entry / "result.json"
        if not result_file.is_file():
            return None
        try:
            load_tokenizer(self.entry / "tokenizer.pt", knob="cache")
        except BarlabError as err:
            log.warning("tokenizer cache entry %s is unusable (%s); training afresh", self.entry, err)
            return None
        return json.loads(result_file.read_text())

    def publish(self, result: dict[str, Any]) -> None:
        """Store a finished stage's tokenizer and result as this key's entry (rank 0, lock held)."""
        artifacts = result["artifacts"]
        self.root.mkdir(parents=True, exist_ok=True)
        with disk_full_as_error(self.entry):
            staging = Path(tempfile.mkdtemp(prefix=f".{self.key}.", dir=self.root))
            try:
                link_or_copy(Path(artifacts["tokenizer"]), staging / "tokenizer.pt")
                if artifacts.get("recon_grid") and Path(artifacts["recon_grid"]).is_file():
                    shutil.copy2(artifacts["recon_grid"], staging / "recon_grid.png")
                atomic_write_json(staging / "key.json", self.spec)
                atomic_write_json(staging / "result.json", result)
                if self.entry.exists():  # an unusable entry that lookup() skipped
                    shutil.rmtree(self.entry)
                os.replace(staging, self.entry)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        log.info("tokenizer cache: stored %s", self.entry)

    def adopt(self, cached: dict[str, Any], run_dir: Path) -> dict[str, Any]:
        """A run's tokenizer result from a cache hit: the entry's files linked into ``run_dir``."""
        link_or_copy(self.entry / "tokenizer.pt", run_dir / "tokenizer.pt")
        grid = self.entry / "recon_grid.png"
        if grid.is_file():
            link_or_copy(grid, run_dir / "recon_grid.png")
        artifacts = {**cached["artifacts"], "tokenizer": str(run_dir / "tokenizer.pt"),
                     "recon_grid": str(run_dir / "recon_grid.png") if grid.is_file() else None}
        return {**cached, "artifacts": artifacts, "resumed_from_step": 0,
                "cache": {**self.describe(), "hit": True, "trained_in": cached.get("cache", {}).get("trained_in")}}

    def describe(self) -> dict[str, Any]:
        return {"key": self.key, "entry": str(self.entry)}


def _read_decision(path: Path, token: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    decision = json.loads(path.read_text())
    return decision if decision.get("attempt") == token else None


def run_cached_tokenizer_stage(cfg: DictConfig, state: RunState,
                               train: Callable[[DictConfig, RunState], dict[str, Any]]) -> dict[str, Any]:
    """The tokenizer stage through the cache: reuse the entry of this config, or ``train`` and store it.

    ``train`` is the stage itself (:func:`barlab.pipeline.tokenizer_stage.run_tokenizer_stage`).
    Returns its result, with ``cache: {key, entry, hit, trained_in}``.
    """
    cache, run_dir = TokenizerCache(cfg), Path(state.run_dir)
    decision_file, token = run_dir / "stages" / DECISION_FILE, attempt_token()
    if not is_rank_zero():  # follow rank 0's choice (see the module docstring)
        decision = wait_for_file(decision_file, lambda p: _read_decision(p, token), DECISION_TIMEOUT_S,
                                 "rank 0's tokenizer-cache decision")
        return decision["result"] if decision["hit"] else train(cfg, state)

    with exclusive_lock(cache.lock_path, f"tokenizer {cache.key}"):
        cached = cache.lookup()
        result = cache.adopt(cached, run_dir) if cached is not None else None
        atomic_write_json(decision_file, {"attempt": token, "hit": result is not None, "result": result})
        if result is not None:
            log.info("tokenizer: reusing the cached tokenizer %s (trained in %s)", cache.entry,
                     result["cache"].get("trained_in"))
            return result
        log.info("tokenizer: no cached tokenizer for key %s; training it", cache.key)
        trained = train(cfg, state)
        trained = {**trained, "cache": {**cache.describe(), "hit": False, "trained_in": str(run_dir)}}
        cache.publish(trained)
    return trained
