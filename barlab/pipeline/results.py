"""``results.json``: the one file per run that sweeps, notebooks and ``barlab.analysis`` read.

Its schema lives here, and only :func:`write_results` writes it:

- every run: ``status`` (``ok`` | ``failed`` | ``crashed`` | ``interrupted``), ``outcome`` (below),
  ``overrides`` (the swept ``key=value`` pairs, YAML-typed), ``job_num``, ``stage``, ``wall_time_s``,
  ``run_dir``, ``host``, ``finished``;
- a run that stopped: ``error``, one line (:func:`failure_body`);
- a finished stage: :class:`TokenizerResult` or :class:`GeneratorResult`; ``stage=all``: the
  headline keys of both, flat, and each stage's whole result under ``tokenizer`` and ``generator``
  (:func:`all_stages_summary`).

A job's ``outcome`` comes from the type of what stopped it (:func:`outcome_of`), never from its text:

=============  ===============================================================================
``ok``         finished
``refused``    a :class:`~barlab.errors.ConfigError`: a bad knob, stopped before training
``failed``     another barlab error (data, checkpoint, divergence, disk full)
``oom``        out of memory (``torch.OutOfMemoryError``, ``MemoryError``)
``crashed``    any other exception
``interrupted`` stopped (SIGTERM, Ctrl-C)
``missing``    no results.json (the job was killed hard, or is still running; set by the reader)
=============  ===============================================================================
"""

from __future__ import annotations

import datetime as _dt
import socket
from pathlib import Path
from typing import Any, TypedDict

import yaml

from barlab.errors import BarlabError, ConfigError
from barlab.utils.io import atomic_write_json

RESULTS_NAME = "results.json"

OUTCOMES = ("ok", "refused", "failed", "oom", "crashed", "interrupted", "missing")
STATUS_OF = {"ok": "ok", "refused": "failed", "failed": "failed", "oom": "crashed", "crashed": "crashed",
             "interrupted": "interrupted", "missing": "missing"}
"""outcome -> ``status`` (the coarser field results.json has always had)."""


class TokenizerResult(TypedDict, total=False):
    """What the tokenizer stage returns (and results.json holds for ``stage=tokenizer``)."""

    stage: str
    quantizer: str                 # class name of the quantizer: BinaryFSQ, FSQ, KLLatent
    family: str                    # discrete | continuous (the study-1 axis)
    bits_per_token: int
    grid: list[int]                # token grid (h, w)
    bits_per_image: int
    psnr: float | None
    ssim: float | None
    val_loss: float | None
    rfid: float                    # + kid, precision, recall, metrics_backend, metrics_label (``headline``)
    metrics: dict[str, float]      # every validation metric, by its logged name
    rfid_eval: dict[str, Any] | None
    bit_stats: dict[str, Any] | None
    train_steps: int
    resumed_from_step: int | None
    skipped_samples: int
    artifacts: dict[str, str | None]  # tokenizer, checkpoint, recon_grid
    cache: dict[str, Any]          # the tokenizer cache's entry, key, hit, trained_in
    reused: bool                   # finished in an earlier attempt of this run


class GeneratorResult(TypedDict, total=False):
    """What the generator stage returns (and results.json holds for ``stage=generator``)."""

    head: str
    bits_per_step: int
    ar_steps: int
    token_shuffle: int
    params_backbone: int
    params_head: int
    train_loss: float | None       # mean over the last 50 training steps
    train_bit_accuracy: float | None
    val_loss: float | None
    val_bit_accuracy: float | None
    train_steps: int
    resumed_from_step: int | None
    train_time_s: float
    sampling_time_s: float | None
    sampling_images_per_s: float | None  # the scored samples over sampling_time_s
    sampling: dict[str, Any]
    gfid: float                    # + kid, precision, recall, inception_score, class_accuracy, metrics_*
    gfid_eval: dict[str, Any] | None
    # + diag_* numbers and diagnostics_label (barlab.pipeline.diagnostics), with diagnostics.enabled
    artifacts: dict[str, str | None]  # sample_grid, tokens, generator, samples, checkpoint
    reused: bool


TOKENIZER_SUMMARY = ("quantizer", "family", "bits_per_token", "grid", "bits_per_image", "psnr", "ssim", "val_loss",
                     "rfid",
                     "metrics_backend", "metrics_label", "skipped_samples")
"""The tokenizer's keys that ``stage=all`` shows at the top level (its kid, precision and recall would
collide with the generator's: they stay under ``tokenizer``)."""
GENERATOR_SUMMARY = {"train_loss": "generator_train_loss", "train_bit_accuracy": "generator_train_bit_accuracy",
                     "val_loss": "generator_val_loss", "val_bit_accuracy": "generator_val_bit_accuracy",
                     "train_time_s": "generator_train_time_s", "sampling_time_s": "sampling_time_s",
                     "sampling_images_per_s": "sampling_images_per_s"}
"""The generator's keys that ``stage=all`` shows at the top level, and their names there."""
GENERATOR_SCORES = ("gfid", "class_accuracy", "inception_score", "precision", "recall", "kid")


def all_stages_summary(tokenizer: TokenizerResult, generator: GeneratorResult) -> dict[str, Any]:
    """The results.json body of ``stage=all``: both stages' headline numbers, flat, and each whole."""
    cache = tokenizer.get("cache")
    return {
        **{k: tokenizer[k] for k in TOKENIZER_SUMMARY if k in tokenizer},
        "stage": "all",
        "head": generator["head"],
        **{name: generator.get(k) for k, name in GENERATOR_SUMMARY.items()},
        **{k: generator[k] for k in GENERATOR_SCORES if k in generator},
        **{k: v for k, v in generator.items() if k.startswith("diag")},
        "tokenizer_cached": bool(cache and cache.get("hit")),
        "tokenizer": tokenizer,
        "generator": generator,
    }


def outcome_of(err: BaseException) -> str:
    """What stopped a run, by the exception's type (see the module docstring)."""
    import torch

    if isinstance(err, ConfigError):
        return "refused"
    if isinstance(err, BarlabError):
        return "failed"
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return "oom"
    return "crashed" if isinstance(err, Exception) else "interrupted"


def failure_body(err: BaseException, stage: str | None, seconds: float) -> dict[str, Any]:
    """The results.json body of a run stopped by ``err``: status, outcome, a one-line error, stage, time."""
    outcome = outcome_of(err)
    if isinstance(err, BarlabError):
        error = str(err)
    elif isinstance(err, Exception):
        error = f"{type(err).__name__}: {err}"
    else:
        error = type(err).__name__
    return {"status": STATUS_OF[outcome], "outcome": outcome, "error": error, "stage": stage,
            "wall_time_s": round(seconds, 1)}


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

    ``body`` without a ``status`` is a finished run (``ok``). Only global rank 0 writes (DDP / SLURM
    ranks share the run folder and rank 0 holds the scores).
    """
    from lightning.pytorch.utilities import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) != 0:
        return Path(run_dir) / RESULTS_NAME
    context = hydra_context()
    status = body.pop("status", "ok")
    payload = {
        "status": status,
        "outcome": body.pop("outcome", "ok" if status == "ok" else status),
        "overrides": context["overrides"],
        "job_num": context["job_num"],
        **body,
        "run_dir": str(run_dir),
        "host": socket.gethostname(),
        "finished": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    return atomic_write_json(Path(run_dir) / RESULTS_NAME, payload)
