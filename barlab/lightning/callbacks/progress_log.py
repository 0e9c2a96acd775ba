"""Training progress as log lines, for runs whose output is a file: SLURM jobs, pipes, ``nohup``.

Lightning's tqdm bar is drawn only on a terminal (``barlab.utils.progress.bars_shown``); written
into a log file, it is thousands of carriage-return updates on a few lines. Where no bar is drawn,
this callback logs one line every ``every_n_steps`` optimiser steps instead::

    generator step 200/1200 (17%): loss 3.41, bit_acc 0.702 | 2.71 steps/s, 6 min 9 s left

Only rank 0 logs. The rate counts the steps of this attempt, so a resumed run's first line is right.
"""

from __future__ import annotations

import logging
import time

import lightning as L

from barlab.utils.integers import check_int

log = logging.getLogger("barlab")


def format_duration(seconds: float) -> str:
    """``3 h 2 min``, ``6 min 9 s``, ``41 s``."""
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def stage_name(module: L.LightningModule) -> str:
    """``generator`` for a ``GeneratorModule``: the module's class name, less ``Module``, lower case."""
    name = type(module).__name__
    return (name[:-len("Module")] if name.endswith("Module") and name != "Module" else name).lower()


class ProgressLog(L.Callback):
    """Log step, ``max_steps``, the progress-bar metrics, the rate and the time left, every
    ``every_n_steps`` steps, when the trainer draws no progress bar."""

    def __init__(self, every_n_steps: int = 100) -> None:
        self.every_n_steps = check_int(every_n_steps, "callbacks.progress_log.every_n_steps",
                                       fix="callbacks.progress_log.every_n_steps=100")
        self.active = False
        self.start_time = 0.0
        self.start_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.active = trainer.progress_bar_callback is None and trainer.is_global_zero
        self.start_time = time.monotonic()
        self.start_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if not self.active or step == self.start_step or step % self.every_n_steps:
            return
        log.info("%s", self.line(stage_name(pl_module), step, trainer.max_steps,
                                 trainer.progress_bar_metrics, time.monotonic() - self.start_time))

    def line(self, stage: str, step: int, max_steps: int, metrics: dict, elapsed: float) -> str:
        """The log line for ``step`` of ``max_steps`` (``-1``: no end), ``elapsed`` seconds into this attempt."""
        head = f"{stage} step {step}/{max_steps} ({100 * step / max_steps:.0f}%)" if max_steps > 0 \
            else f"{stage} step {step}"
        shown = ", ".join(f"{name} {float(value):.4g}" for name, value in metrics.items()
                          if name != "v_num" and _is_number(value))
        rate = (step - self.start_step) / elapsed if elapsed > 0 else 0.0
        tail = f"{rate:.0f} steps/s" if rate >= 100 else f"{rate:.3g} steps/s"  # never 1.08e+03
        if max_steps > 0 and rate > 0:
            tail += f", {format_duration((max_steps - step) / rate)} left"
        return f"{head}: {shown} | {tail}" if shown else f"{head} | {tail}"


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
