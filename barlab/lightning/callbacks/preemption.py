"""Checkpoint on SLURM's pre-emption / time-limit signal, then let submitit requeue the job.

Under ``hydra/launcher=slurm`` each job runs inside submitit, which installs a handler for SIGUSR2
(``SUBMITIT_PREEMPT_SIGNAL``). SLURM sends it on pre-emption and ``signal_delay_s`` before the
time limit; submitit's handler then calls the launcher's ``checkpoint()``, runs ``scontrol requeue``
and exits the job (``sys.exit``) from wherever the signal landed, or raises ``UncompletedJobError``
when the job may not be requeued (``max_num_timeout`` spent).

Stopping in the middle of an optimizer step would lose that step and could leave a half-updated
state, so while a fit is in its training loop this callback defers the signal: its own handler only
sets a flag, and at the next batch boundary (``on_train_batch_end``) every rank writes
``checkpoint_path`` (atomically, through barlab's AtomicCheckpointIO), one line is logged, and
submitit's handler runs as it would have. The requeued job resumes from that checkpoint
(``resume=true``). A signal outside the training loop (setup, pretokenization, final evaluation)
goes straight to submitit's handler. Outside submitit (no handler installed) the callback does nothing.
Under DDP the flag is all-reduced at every batch end, so all ranks checkpoint at the same step
(rank 0 then requeues; on the other ranks submitit's handler only logs, and the requeue ends them).
"""

from __future__ import annotations

import logging
import os
import signal
from types import FrameType
from typing import Any, Callable

import lightning as L

log = logging.getLogger("barlab")

Handler = Callable[[int, FrameType | None], Any]


def preempt_signal() -> signal.Signals:
    """The signal submitit treats as pre-emption / time limit (SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL says)."""
    return signal.Signals["SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")]


class PreemptionCheckpoint(L.Callback):
    """On submitit's signal, write ``checkpoint_path`` at the next batch boundary, then requeue.

    The handler is chained for the training loop only (``on_train_start`` to ``on_train_end``):
    Lightning snapshots every signal handler just before the loop and puts the snapshot back at its
    teardown, also after an exception, so submitit's handler is what remains installed.
    """

    def __init__(self, checkpoint_path: str):
        self.checkpoint_path = checkpoint_path
        self._signum = preempt_signal()
        self._submitit: Handler | None = None  # the handler found at the start of the loop
        self._chained = False
        self._requested = False

    @property
    def active(self) -> bool:
        """Whether the signal is chained (a training loop running under submitit, in the main thread)."""
        return self._chained

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        current = signal.getsignal(self._signum)
        if not callable(current) or current == self._on_signal:  # SIG_DFL / SIG_IGN: not under submitit
            return
        try:
            signal.signal(self._signum, self._on_signal)
        except ValueError:  # not the main thread: leave signals alone
            return
        self._submitit, self._chained, self._requested = current, True, False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._chained:
            log.warning("received %s: checkpointing after the current training step", signal.Signals(signum).name)
            self._requested = True
        elif self._submitit is not None:
            self._submitit(signum, frame)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._chained:
            return
        # every rank must take the same decision: the checkpoint write is collective
        if not trainer.strategy.reduce_boolean_decision(self._requested, all=False):
            return
        trainer.save_checkpoint(self.checkpoint_path)
        if trainer.is_global_zero:
            log.warning("pre-empted at step %d: checkpoint written to %s", trainer.global_step, self.checkpoint_path)
        self._requested = False
        self._unchain()
        self._submitit(self._signum, None)  # submitit: requeue and exit (rank 0), or raise if out of requeues

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._unchain()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._unchain()

    def _unchain(self) -> None:
        """Put submitit's handler back; a signal still pending (the loop ended before a batch
        boundary) is passed on now."""
        if not self._chained:
            return
        self._chained = False
        try:
            signal.signal(self._signum, self._submitit)
        except ValueError:
            pass
        if self._requested:
            self._requested = False
            self._submitit(self._signum, None)
