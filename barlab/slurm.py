"""SLURM support for ``hydra/launcher=slurm`` (``configs/hydra/launcher/slurm.yaml``).

- The OmegaConf resolvers that tie the launcher's request to the trainer (imported by
  ``barlab.train``, so they exist wherever the config is resolved: at submission and inside the job).
- :func:`preflight`: before anything is submitted, check that this machine can submit to SLURM and
  that the partition exists; each failure is one line naming what is missing and how to fix it.
- :class:`FailedJobsCallback`: once a SLURM sweep is over, name each failed job in one line and
  exit 1 (a job runs in its own process, so the sweep cannot learn of a failure the way a local
  sweep does).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from barlab.errors import ConfigError

KNOB = "hydra/launcher=slurm"
LAUNCHER_YAML = Path(__file__).resolve().parent.parent / "configs" / "hydra" / "launcher" / "slurm.yaml"
# Commands that only print the config or help: they submit nothing, so they need no cluster.
_INSPECT_FLAGS = ("--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help", "--resolve")
SINFO_TIMEOUT_S = 30


def gpus_per_node(accelerator: Any, devices: Any) -> int | None:
    """GPUs to request per node: ``trainer.devices`` when the trainer runs on GPUs, else none.

    ``trainer.accelerator=auto`` requests none: whether the job sees a GPU depends on the node, so
    ask for GPUs with ``trainer=gpu`` or ``trainer=ddp``. A GPU request on a cluster without GPU
    gres is rejected by sbatch, so CPU runs must not make one.
    """
    if str(accelerator) not in ("gpu", "cuda"):
        return None
    return int(devices)


def cpus_per_task(*num_workers: Any) -> int:
    """CPUs per task: one for the training loop plus the largest data loader's workers."""
    return 1 + max([int(n or 0) for n in num_workers] + [0])


def register_resolvers() -> None:
    """Register ``${barlab.gpus_per_node:...}`` and ``${barlab.cpus_per_task:...}`` (idempotent)."""
    for name, fn in (("barlab.gpus_per_node", gpus_per_node), ("barlab.cpus_per_task", cpus_per_task)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()


def selects_slurm(argv: list[str]) -> bool:
    """Whether the command line picks ``hydra/launcher=slurm``."""
    return any(arg.lstrip("+") == KNOB for arg in argv)


def partition_of(argv: list[str]) -> str | None:
    """The partition the jobs go to: the last ``hydra.launcher.partition=`` on the command line, else
    the default in ``slurm.yaml`` (null: the cluster's default partition)."""
    chosen = [arg.split("=", 1)[1] for arg in argv if arg.lstrip("+").startswith("hydra.launcher.partition=")]
    if chosen:
        value = chosen[-1].strip()
        return None if value in ("", "null", "None") else value
    default = (yaml.safe_load(LAUNCHER_YAML.read_text()).get("launcher") or {}).get("partition")
    return None if default is None or "${" in str(default) else str(default)


def cluster_partitions() -> list[str]:
    """Partition names that ``sinfo`` reports (the default one without its ``*``); raises a
    one-line ConfigError when sbatch is missing or the controller does not answer."""
    if shutil.which("sbatch") is None:
        raise ConfigError(KNOB, "sbatch is not on PATH, so no job can be submitted from this machine",
                          fix="run on a SLURM login node, or drop hydra/launcher=slurm to run the sweep here")
    if shutil.which("sinfo") is None:
        raise ConfigError(KNOB, "sinfo is not on PATH (a partial SLURM client install)",
                          fix="install the SLURM client tools (Debian: apt-get install slurm-client)")
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True,
                              timeout=SINFO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc = None
    if proc is None or proc.returncode != 0:
        said = "no answer in %d s" % SINFO_TIMEOUT_S if proc is None else \
            (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise ConfigError(KNOB, f"the SLURM controller does not respond (sinfo: {said})",
                          fix="check that `sinfo` works on this machine; for the local CI cluster run "
                              "scripts/slurm_cluster.sh start")
    return sorted({line.strip().rstrip("*") for line in proc.stdout.splitlines() if line.strip()})


def preflight(argv: list[str]) -> None:
    """Refuse, in one line and before anything is submitted, a ``hydra/launcher=slurm`` command
    line that cannot work here: no ``-m``, no SLURM client, no controller, unknown partition."""
    if not selects_slurm(argv) or any(arg.split("=", 1)[0] in _INSPECT_FLAGS for arg in argv):
        return
    if not any(arg in ("-m", "--multirun") for arg in argv):
        raise ConfigError(KNOB, "only a multirun is submitted to SLURM; without -m the job would run on this "
                                "machine", fix="add -m")
    partitions = cluster_partitions()
    partition = partition_of(argv)
    if partition is not None and partition not in partitions:
        raise ConfigError(KNOB, f"partition {partition!r} is unknown to SLURM (sinfo lists: "
                                f"{', '.join(partitions) or 'none'})",
                          fix=f"hydra.launcher.partition={partitions[0] if partitions else '<partition>'}")


class FailedJobsCallback(Callback):
    """Hydra callback of ``hydra/launcher=slurm``: a sweep with a failed job exits 1, naming it.

    Each SLURM job runs in its own process, and a failed job returns NaN so that the others and
    sweepers such as Optuna carry on; the submitting process would then exit 0. Once the sweep is
    over, this reads every job's results.json (as ``barlab.analysis`` does) and, if any job is not
    ok, prints one ``error:`` line naming each failed job and its reason, and exits 1.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from barlab.analysis.collect import _job_dirs, job_row

        sweep = Path(str(config.hydra.sweep.dir))
        rows = [job_row(job) for job in _job_dirs(sweep)] if sweep.is_dir() else []
        failed = [row for row in rows if row["outcome"] != "ok"]
        if not failed:
            return
        names = "; ".join(
            f"#{row['job']} ({' '.join(f'{k}={row.get(k)}' for k in row['_overrides'])}): {row['outcome']}: "
            + " ".join(str(row["reason"]).split())
            for row in failed)
        print(f"error: {len(failed)} of {len(rows)} SLURM sweep job(s) failed: {names} "
              f"(see python -m barlab.analysis {sweep})", file=sys.stderr, flush=True)
        sys.exit(1)
