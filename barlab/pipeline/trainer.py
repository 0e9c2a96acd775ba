"""Build the Lightning pieces shared by every stage from the config: callbacks, loggers, trainer,
and the optimiser / LR-schedule factories of a stage's ``optim`` and ``scheduler`` nodes.

Each stage (tokenizer, generator) gets its own sub-folder for checkpoints and CSV metrics, and
its own schedule (``<stage>.max_steps``, ``<stage>.val_every``) on the shared ``trainer`` settings.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from barlab.config.instantiate import instantiate_checked
from barlab.errors import CheckpointError, ConfigError
from barlab.lightning.callbacks.finite_loss import FiniteLossGuard
from barlab.lightning.callbacks.preemption import PreemptionCheckpoint
from barlab.lightning.callbacks.rng_state import RNGState
from barlab.pipeline.results import hydra_context
from barlab.runtime.checkpoint_checks import check_resume_checkpoint
from barlab.runtime.checkpoint_io import AtomicCheckpointIO
from barlab.runtime.distributed import install_child_command, track_launcher
from barlab.runtime.run_state import RunState, checkpoint_step
from barlab.utils.progress import bars_shown

log = logging.getLogger("barlab")

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
    return callbacks + system_callbacks(cfg, stage)


def system_callbacks(cfg: DictConfig, stage: str) -> list[L.Callback]:
    """Callbacks every training stage gets, whatever ``cfg.callbacks`` holds: the RNG streams in each
    checkpoint, the non-finite-loss guard, and the checkpoint on a SLURM pre-emption signal."""
    return [RNGState(), FiniteLossGuard(stage), PreemptionCheckpoint(str(checkpoint_dir(cfg, stage) / "last.ckpt"))]


def build_loggers(cfg: DictConfig, stage: str, state: RunState) -> list:
    """Instantiate ``cfg.logger``; CSV and TensorBoard write into a per-stage version folder.

    wandb gets one run per stage and job: its id is kept in the run folder (a restarted job logs
    on into the same wandb run), its group is the sweep (or the run), its name says job and stage.
    """
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is None:
            continue
        target = str(node.get("_target_", ""))
        extra = {"version": stage} if target.endswith(PER_STAGE_LOGGERS) else {}
        if target.endswith("WandbLogger"):
            extra = wandb_identity(cfg, stage, state)
        try:
            loggers.append(instantiate_checked(node, f"logger.{name}", **extra))
        except ConfigError as err:
            if "tensorboard" in str(err).lower():
                raise ConfigError("logger", "TensorBoard is not installed",
                                  fix="pip install tensorboard, or logger=csv") from None
            raise
    return loggers


def wandb_identity(cfg: DictConfig, stage: str, state: RunState) -> dict[str, str]:
    """WandbLogger arguments that make one resumable wandb run per (job, stage), grouped by sweep."""
    context = hydra_context()
    job = f"/{context['job_num']}" if context["mode"] == "multirun" else ""
    return {"id": state.wandb_id(stage), "resume": "allow", "group": f"{cfg.task_name}/{cfg.run_name}",
            "name": f"{cfg.run_name}{job}/{stage}", "job_type": stage}


def finish_wandb() -> None:
    """End the active wandb run, if any, so that the next stage or sweep job starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def auto_precision() -> str:
    """bf16 autocast where the GPU supports it; fp32 elsewhere (bf16 on CPUs without AMX is slower)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def build_optimization(stage_cfg: DictConfig, stage: str) -> dict:
    """The stage's ``optim`` and ``scheduler`` nodes as factories, and its ``grad_clip``: the
    LightningModule arguments ``optimizer``, ``scheduler`` and ``grad_clip``.

    Both nodes are ``_partial_``; lists (``betas``) arrive as plain Python lists, never OmegaConf
    nodes, so they pickle into checkpoints like any number.
    """
    return {
        "optimizer": instantiate_checked(stage_cfg.optim, f"{stage}.optim", _convert_="all"),
        "scheduler": instantiate_checked(stage_cfg.scheduler, f"{stage}.scheduler", _convert_="all"),
        "grad_clip": stage_cfg.grad_clip,
    }


def build_trainer(cfg: DictConfig, stage_cfg: DictConfig, callbacks: list, loggers: list) -> L.Trainer:
    """The ``trainer`` config with the stage's ``max_steps`` / ``val_every`` and atomic checkpoints.

    The progress bar is drawn only on a terminal; elsewhere ``callbacks.progress_log`` logs lines.
    With ``val_every >= max_steps`` the training loop does not validate: the only validation would fall
    on the last step, and every stage validates right after training (``final_eval``) anyway.
    """
    extra = {"max_steps": stage_cfg.max_steps, "val_check_interval": stage_cfg.val_every,
             "enable_progress_bar": bars_shown(cfg.trainer.get("enable_progress_bar", True))}
    if stage_cfg.val_every >= stage_cfg.max_steps:
        extra["limit_val_batches"] = 0
    if cfg.trainer.get("precision") == "auto":
        extra["precision"] = auto_precision()
    install_child_command()
    trainer = instantiate_checked(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False,
                                  plugins=[AtomicCheckpointIO()], **extra)
    track_launcher(trainer)
    return trainer


def log_config(trainer: L.Trainer, cfg: DictConfig) -> None:
    """Send the run's whole config (resolved) to every logger as its hyperparameters."""
    hparams = OmegaConf.to_container(cfg, resolve=True)
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)


def resolve_ckpt_path(cfg: DictConfig, stage: str, module: L.LightningModule) -> str | None:
    """The checkpoint ``stage`` resumes from, checked against ``module`` before anything trains.

    - ``ckpt_path`` null (default) or ``last``: this run folder's ``checkpoints/<stage>/last.ckpt`` if
      it exists and ``resume`` is on (a requeued or re-run job continues), else None (start afresh);
    - a file: that checkpoint (``stage=tokenizer`` or ``stage=generator`` only).
    """
    value = cfg.get("ckpt_path")
    if value in (None, "", "last"):
        last = checkpoint_dir(cfg, stage) / "last.ckpt"
        if not last.is_file() or (value is None and not cfg.get("resume", True)):
            return None
        check_resume_checkpoint(last, stage, module)
        return str(last)
    if not Path(value).is_file():
        raise CheckpointError(f"ckpt_path={value} does not exist (set ckpt_path=null to start afresh)")
    check_resume_checkpoint(value, stage, module)
    return str(value)


def resume_point(cfg: DictConfig, stage: str, module: L.LightningModule) -> tuple[str | None, int]:
    """``(checkpoint to resume from or None, its step)``, logged, for ``trainer.fit(ckpt_path=...)``."""
    ckpt_path = resolve_ckpt_path(cfg, stage, module)
    step = checkpoint_step(ckpt_path) if ckpt_path else 0
    if ckpt_path:
        log.info("%s: resuming from %s at step %d", stage, ckpt_path, step)
    return ckpt_path, step
