"""Build the Lightning pieces shared by every stage from the config: callbacks, loggers, trainer.

Each stage (tokenizer, generator) gets its own sub-folder for checkpoints and CSV metrics, and
its own schedule (``<stage>.max_steps``, ``<stage>.val_every``) on the shared ``trainer`` settings.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig

from barlab.cli import instantiate_checked
from barlab.errors import CheckpointError, ConfigError
from barlab.training.checkpoint_io import AtomicCheckpointIO

PER_STAGE_LOGGERS = ("CSVLogger", "TensorBoardLogger")


def checkpoint_dir(cfg: DictConfig, stage: str) -> Path:
    return Path(cfg.paths.output_dir) / "checkpoints" / stage


def build_callbacks(cfg: DictConfig, stage: str, names: tuple[str, ...] | None = None) -> list[L.Callback]:
    """Instantiate ``cfg.callbacks`` (only ``names`` if given); checkpoints go to checkpoints/<stage>/."""
    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None or (names is not None and name not in names):
            continue
        extra = {"dirpath": str(checkpoint_dir(cfg, stage))} if name == "model_checkpoint" else {}
        callbacks.append(instantiate_checked(node, f"callbacks.{name}", **extra))
    return callbacks


def build_loggers(cfg: DictConfig, stage: str) -> list:
    """Instantiate ``cfg.logger``; CSV and TensorBoard write into a per-stage version folder."""
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is None:
            continue
        extra = {"version": stage} if str(node.get("_target_", "")).endswith(PER_STAGE_LOGGERS) else {}
        try:
            loggers.append(instantiate_checked(node, f"logger.{name}", **extra))
        except ConfigError as err:
            if "tensorboard" in str(err).lower():
                raise ConfigError("logger", "TensorBoard is not installed",
                                  fix="pip install tensorboard, or logger=csv") from None
            raise
    return loggers


def auto_precision() -> str:
    """bf16 autocast where the GPU supports it; fp32 elsewhere (bf16 on CPUs without AMX is slower)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def build_trainer(cfg: DictConfig, stage_cfg: DictConfig, callbacks: list, loggers: list) -> L.Trainer:
    """The ``trainer`` config with the stage's ``max_steps`` / ``val_every`` and atomic checkpoints."""
    extra = {"max_steps": stage_cfg.max_steps, "val_check_interval": stage_cfg.val_every}
    if cfg.trainer.get("precision") == "auto":
        extra["precision"] = auto_precision()
    return instantiate_checked(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False,
                               plugins=[AtomicCheckpointIO()], **extra)


def resolve_ckpt_path(cfg: DictConfig, stage: str) -> str | None:
    """``ckpt_path``: null; ``last`` (this run's checkpoints/<stage>/last.ckpt if it exists); or a file."""
    value = cfg.get("ckpt_path")
    if value in (None, ""):
        return None
    if value == "last":
        last = checkpoint_dir(cfg, stage) / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(value).is_file():
        raise CheckpointError(f"ckpt_path={value} does not exist (set ckpt_path=null to start afresh)")
    return str(value)
