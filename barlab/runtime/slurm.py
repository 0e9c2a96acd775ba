"""SLURM support for ``hydra/launcher=slurm`` (``configs/hydra/launcher/slurm.yaml``).

- :func:`preflight`: before anything is submitted, check that this machine can submit to SLURM and
  that the partition exists; each failure is one line naming what is missing and how to fix it.

The resolvers that tie the launcher's request to the trainer are in :mod:`barlab.config.resolvers`;
the report of failed sweep jobs (SLURM and local alike) is :mod:`barlab.analysis.failed_jobs`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from barlab.config.paths import CONFIG_DIR
from barlab.errors import ConfigError

KNOB = "hydra/launcher=slurm"
LAUNCHER_YAML = CONFIG_DIR / "hydra" / "launcher" / "slurm.yaml"
# Commands that only print the config or help: they submit nothing, so they need no cluster.
_INSPECT_FLAGS = ("--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help", "--resolve")
SINFO_TIMEOUT_S = 30


def selects_slurm(argv: list[str]) -> bool:
    """Whether the command line picks ``hydra/launcher=slurm``."""
    return any(arg.lstrip("+") == KNOB for arg in argv)


def _flag_value(argv: list[str], names: tuple[str, ...]) -> str | None:
    """The value of the last ``-x value`` / ``--long value`` / ``--long=value`` flag of ``names``."""
    found = None
    for i, arg in enumerate(argv):
        if arg in names and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith("--") and arg.split("=", 1)[0] in names and "=" in arg:
            found = arg.split("=", 1)[1]
    return found


def config_selects_slurm(argv: list[str]) -> bool:
    """Whether the primary config named on the command line (``-cd <folder> -cn <name>``, e.g. a file of
    ``sweeps/``) picks the SLURM launcher in its defaults list (``override hydra/launcher: slurm``), and
    the command line picks no other launcher."""
    if any(arg.lstrip("+").startswith("hydra/launcher=") for arg in argv):
        return False
    name, folder = _flag_value(argv, ("-cn", "--config-name")), _flag_value(argv, ("-cd", "--config-dir"))
    if name is None or folder is None:
        return False
    path = Path(folder) / (name if name.endswith(".yaml") else f"{name}.yaml")
    try:
        defaults = (yaml.safe_load(path.read_text()) or {}).get("defaults") or []
    except (OSError, yaml.YAMLError):
        return False  # Hydra reports a missing or broken config itself
    return any(isinstance(entry, dict) and entry.get("override hydra/launcher") == "slurm" for entry in defaults)


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
    line that cannot work here: no ``-m``, no SLURM client, no controller, unknown partition.

    A multirun of a config that picks the launcher itself (:func:`config_selects_slurm`, the paper-scale
    sweep files) is checked the same way; without ``-m`` such a config runs its one job here."""
    if any(arg.split("=", 1)[0] in _INSPECT_FLAGS for arg in argv):
        return
    multirun = any(arg in ("-m", "--multirun") for arg in argv)
    if not selects_slurm(argv) and not (multirun and config_selects_slurm(argv)):
        return
    if not multirun:
        raise ConfigError(KNOB, "only a multirun is submitted to SLURM; without -m the job would run on this "
                                "machine", fix="add -m")
    partitions = cluster_partitions()
    partition = partition_of(argv)
    if partition is not None and partition not in partitions:
        raise ConfigError(KNOB, f"partition {partition!r} is unknown to SLURM (sinfo lists: "
                                f"{', '.join(partitions) or 'none'})",
                          fix=f"hydra.launcher.partition={partitions[0] if partitions else '<partition>'}")
