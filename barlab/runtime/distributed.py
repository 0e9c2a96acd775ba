"""More than one process: how the ranks of a job are started, sized and cleaned up.

- **Starting the ranks.** On SLURM (one task per device) and under ``torchrun`` every rank runs the
  whole job, and Lightning only joins them. On one machine without a launcher (``trainer=ddp_cpu``,
  ``trainer=ddp`` on a workstation) Lightning starts ranks 1..N-1 by re-running the command line.
  Its Hydra variant re-runs ``sys.argv``, which in a multirun (``-m a=1,2``) would start a whole
  sweep in every rank. :func:`child_command` replaces it: the child runs *this job's* overrides in
  this job's folder, without ``-m``.
- **Cleaning up.** :class:`JobProcesses` is entered around every job: on exit it waits for the child
  ranks (killing them after a grace period), destroys the process group and restores the
  ``MASTER_*`` / ``*RANK`` / ``WORLD_SIZE`` variables, so that the next job of an in-process sweep
  starts its own ranks and no process outlives the job.
- **Work before training.** :func:`launched_ranks` says which processes an external launcher
  (SLURM, torchrun) started, so that they can share work before Lightning joins them (pretokenization);
  :func:`rank_device` is the GPU of this process for that work.
- **Sizing the batch.** :func:`split_global_batch` turns a global batch into the per-rank batch and
  the gradient accumulation for the world size at hand, so 1 GPU and 8 GPUs train the same recipe.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Sequence

import torch

from barlab.errors import ConfigError
from barlab.utils.integers import check_int

log = logging.getLogger("barlab")

# ... and BARLAB_ATTEMPT, the attempt id the ranks share (barlab.runtime.tokenizer_cache.attempt_token)
LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK", "BARLAB_ATTEMPT")


def child_command(local_rank: int) -> tuple[Sequence[str], str]:
    """Command and working folder of the rank-``local_rank`` copy of the current Hydra job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    hydra_cfg = HydraConfig.get()
    command = [sys.executable, "-m", "barlab.train"]
    for source in hydra_cfg.runtime.config_sources:  # -cd folders; the primary one is barlab.train's own
        if source.provider == "command-line" and source.schema == "file":
            command += ["--config-dir", source.path]
    command += ["--config-name", str(hydra_cfg.job.config_name)]
    command += [o for o in hydra_cfg.overrides.task]
    command += [f'hydra.run.dir="{hydra_cfg.runtime.output_dir}"', f"hydra.job.name=train_ddp_process_{local_rank}",
                "hydra.output_subdir=null"]
    return command, get_original_cwd()


def install_child_command() -> None:
    """Make Lightning's single-node launcher start the ranks with :func:`child_command`."""
    from lightning.fabric.strategies.launchers import subprocess_script as fabric_launcher
    from lightning.pytorch.strategies.launchers import subprocess_script as trainer_launcher

    for module in (fabric_launcher, trainer_launcher):  # the Trainer's launcher imported the function by name
        module._hydra_subprocess_cmd = child_command


class JobProcesses:
    """Context around one job: afterwards no child rank, process group or launch variable is left."""

    def __init__(self, grace_s: float = 60.0):
        self.grace_s = grace_s
        self._saved: dict[str, str | None] = {}

    def __enter__(self) -> "JobProcesses":
        self._saved = {name: os.environ.get(name) for name in LAUNCH_VARIABLES}
        _LAUNCHERS.clear()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        # after a failure on this rank the others may wait forever in a collective: no grace then
        grace = self.grace_s if exc_type is None else 0.0
        for proc in [p for launcher in _LAUNCHERS for p in getattr(launcher, "procs", [])]:
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                if grace:
                    log.warning("rank process %d did not exit within %.0f s; killing it", proc.pid, grace)
                proc.kill()
                proc.wait()
        _LAUNCHERS.clear()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_LAUNCHERS: list = []


def track_launcher(trainer) -> None:
    """Remember the launcher of ``trainer``: the child ranks it starts are reaped by :class:`JobProcesses`."""
    launcher = getattr(trainer.strategy, "launcher", None)
    if launcher is not None and launcher not in _LAUNCHERS:
        _LAUNCHERS.append(launcher)


def launched_ranks() -> tuple[int, int]:
    """``(rank, world size)`` of the processes an external launcher started for this job: SLURM's tasks
    (``srun``, as Lightning's SLURM environment detects them) or torchrun's ranks. ``(0, 1)`` otherwise:
    Lightning's own launcher (``trainer=ddp`` on one machine) starts the other ranks only when training
    begins, so before that this process is alone."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect():
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if SLURMEnvironment.detect():
        return int(os.environ.get("SLURM_PROCID", 0)), int(os.environ.get("SLURM_NTASKS", 1))
    return 0, 1


def rank_device(accelerator: str = "auto") -> torch.device:
    """This process's device for work outside the trainer: its node-local GPU (``LOCAL_RANK`` or
    ``SLURM_LOCALID``) when ``accelerator`` allows a GPU and CUDA is there, else the CPU."""
    if str(accelerator) not in ("gpu", "cuda", "auto") or not torch.cuda.is_available():
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))
    return torch.device("cuda", local % torch.cuda.device_count())


def split_global_batch(global_batch: int, world: int, max_per_rank: int, knob: str,
                       can_accumulate: bool = True) -> tuple[int, int]:
    """``(per-rank batch, gradient accumulation)`` with ``per-rank batch × accumulation × world = global``.

    ``max_per_rank`` is the largest per-rank batch that fits; accumulation is the smallest that
    keeps the per-rank batch within it. Refused: a global batch the world size does not divide, and
    (``can_accumulate=False``: manual optimisation, as in the tokenizer's GAN) one that needs accumulation.
    """
    if global_batch % world:
        raise ConfigError(knob, f"a global batch of {global_batch} cannot be split over {world} processes",
                          fix=f"{knob}={max(world, global_batch // world * world)} (a multiple of the world size)")
    share = global_batch // world
    accumulation = -(-share // max_per_rank)
    while share % accumulation:
        accumulation += 1
    if accumulation > 1 and not can_accumulate:
        raise ConfigError(knob, f"{global_batch} over {world} processes of at most {max_per_rank} samples needs "
                          "gradient accumulation, which this stage does not do",
                          fix=f"a per-process batch of {share}, or more processes")
    return share // accumulation, accumulation


def world_size(trainer_cfg) -> int | None:
    """Processes the trainer config asks for (devices × nodes), None when it is left to the machine."""
    devices, nodes = trainer_cfg.get("devices", 1), trainer_cfg.get("num_nodes", 1)
    if isinstance(devices, (list, tuple)) or hasattr(devices, "__len__") and not isinstance(devices, str):
        devices = len(devices)
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1 or not isinstance(nodes, int):
        return None
    return devices * nodes


def apply_global_batch(trainer, datamodule, global_batch: int | None, knob: str, can_accumulate: bool = True) -> None:
    """Set ``datamodule.batch_size`` and the trainer's gradient accumulation from a global batch.

    ``datamodule.batch_size`` on entry is the largest per-rank batch (the ``batch_size`` knob).
    Validation periods stay in optimizer steps.
    """
    if global_batch is None:
        return
    per_rank, accumulation = split_global_batch(int(global_batch), trainer.world_size, datamodule.batch_size, knob,
                                                can_accumulate)
    if isinstance(trainer.val_check_interval, int):  # counted in batches: keep it in optimizer steps
        trainer.val_check_interval *= accumulation
    datamodule.batch_size, trainer.accumulate_grad_batches = per_rank, accumulation
    log.info("%s=%d: %d processes x batch %d x %d accumulation steps", knob, global_batch, trainer.world_size,
             per_rank, accumulation)


def check_global_batches(cfg) -> None:
    """Refuse, before anything runs, a global batch that the configured world size cannot divide."""
    world = world_size(cfg.trainer)
    if world is None:
        return
    knobs = [("tokenizer.global_batch_size", cfg.tokenizer.get("global_batch_size"), cfg.data.batch_size, False)]
    if cfg.stage in ("generator", "all"):
        knobs.append(("generator.global_batch_size", cfg.generator.get("global_batch_size"),
                      cfg.generator.data.batch_size, True))
    for knob, global_batch, max_per_rank, can_accumulate in knobs:
        if global_batch is None:
            continue
        check_int(global_batch, knob, fix=f"{knob}=null", allow_none=True)
        split_global_batch(global_batch, world, max_per_rank, knob, can_accumulate)
