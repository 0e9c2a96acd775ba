"""Stop a run whose loss turns NaN or Inf before anything non-finite reaches a checkpoint.

Two guards, one message format (stage, step, the last good checkpoint, the fix):

- after every training step, the step's loss (``on_train_batch_end``; Lightning runs checkpoint
  callbacks after all others, so this fires before ``ModelCheckpoint`` could save the step);
- before every checkpoint is written, its weights (``on_save_checkpoint``): a huge learning rate can
  blow the weights up during the optimiser step while the loss of that step was still finite.

Both raise :class:`barlab.errors.TrainingDiverged`; ``python -m barlab.train`` prints it as one line
and writes ``results.json`` with ``status: failed``. Under DDP every rank takes the same decision
(one all-reduced flag per step), so no rank waits forever for one that stopped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch

from barlab.errors import TrainingDiverged


def step_loss(outputs: Any) -> torch.Tensor | None:
    """The loss of one training step from ``on_train_batch_end``'s ``outputs`` (tensor or ``{"loss": ...}``)."""
    if isinstance(outputs, Mapping):
        outputs = outputs.get("loss")
    return outputs if isinstance(outputs, torch.Tensor) else None


def describe(loss: torch.Tensor) -> str:
    """``nan``, ``inf`` or ``-inf`` for a non-finite loss; a finite one diverged on another DDP rank."""
    value = float(loss.float().mean()) if loss.numel() else math.nan
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return "nan or inf on another rank"


def first_non_finite(tree: Any, prefix: str = "") -> str | None:
    """Name of the first floating-point tensor in a nested dict/list that holds a NaN or Inf, else None."""
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point() and not bool(torch.isfinite(tree).all()):
            return prefix or "tensor"
        return None
    items = tree.items() if isinstance(tree, Mapping) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    for key, value in items:
        found = first_non_finite(value, f"{prefix}.{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


def last_good_checkpoint(trainer: L.Trainer) -> str | None:
    """The newest checkpoint on disk of this stage (``last.ckpt`` of the ModelCheckpoint), or None."""
    callback = trainer.checkpoint_callback
    candidates = []
    if callback is not None:
        candidates += [getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", "")]
        if getattr(callback, "dirpath", None):
            candidates.append(str(Path(callback.dirpath) / "last.ckpt"))
    return next((str(p) for p in candidates if p and Path(p).is_file()), None)


def configured_lr(trainer: L.Trainer) -> float | None:
    """The learning rate the first optimiser was configured with (before its schedule), or None."""
    optimizers = getattr(trainer, "optimizers", None) or []
    if not optimizers:
        return None
    group = optimizers[0].param_groups[0]
    return group.get("initial_lr", group.get("lr"))


class FiniteLossGuard(L.Callback):
    """Raises :class:`barlab.errors.TrainingDiverged` (stage, step) on a non-finite training loss."""

    def __init__(self, stage: str):
        self.stage = stage

    def _diverged(self, trainer: L.Trainer, pl_module: L.LightningModule, what: str,
                  note: str = "") -> TrainingDiverged:
        last = last_good_checkpoint(trainer)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written before it"
        kept = f"{note}; {kept}" if note else kept
        lr = configured_lr(trainer)
        now = f" (now {lr:g})" if isinstance(lr, (int, float)) else ""
        return TrainingDiverged(
            f"{self.stage}: {what} at step {trainer.global_step}; {kept} "
            f"(fix: lower {self.stage}.optim.lr{now} or raise {self.stage}.scheduler.warmup_steps, "
            f"and check {self.stage}.grad_clip and the loss weights)")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = step_loss(outputs)
        if loss is None:
            return
        loss = loss.detach()
        finite = bool(torch.isfinite(loss).all())
        if trainer.world_size > 1:  # the same decision on every rank
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            raise self._diverged(trainer, pl_module, f"loss is {describe(loss)}")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # The model's weights only: callback states hold legitimate infinities (ModelCheckpoint's
        # kth_value), and the EMA averages weights that each passed this check or stopped the run.
        bad = first_non_finite(checkpoint.get("state_dict", {}))
        if bad is not None:
            raise self._diverged(trainer, pl_module, f"weights turned NaN/Inf ({bad})",
                                 note="that checkpoint was not written")
