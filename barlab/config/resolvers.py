"""barlab's OmegaConf resolvers, registered by :func:`register_resolvers` (idempotent).

- ``${barlab.floordiv:a,b}`` and ``${barlab.mul:a,b}``: integer arithmetic for derived sizes.
- ``${barlab.cwd:}``: the launch folder, for ``paths.root_dir``. Hydra's own
  ``${hydra:runtime.cwd}`` is not set yet when a sweeper resolves ``hydra.sweep.dir``, and
  ``oc.env`` resolves its default even when the variable is set.
- ``${barlab.generator_folder:<ckpt>}``: the folder of a generator checkpoint argument
  (``python -m barlab.sample -m ...`` puts the sampling grid beside the generator).
- ``${barlab.gpus_per_node:<accelerator>,<devices>}`` and ``${barlab.cpus_per_task:<workers>...}``:
  the SLURM launcher's request, tied to the trainer (``configs/hydra/launcher/slurm.yaml``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def generator_folder(ckpt: str) -> str:
    """The folder of a generator checkpoint argument: ``ckpt`` itself if it is a folder, else its parent."""
    path = Path(str(ckpt)).expanduser()
    return str(path if path.is_dir() else path.parent)


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


def floordiv(a: Any, b: Any) -> int:
    """``a // b`` of two integers (a token grid: image size // patch size)."""
    return int(a) // int(b)


def multiply(a: Any, b: Any) -> int:
    """``a * b`` of two integers (bits per token of c channels at 16 bits: ``${barlab.mul:16,${c}}``)."""
    return int(a) * int(b)


RESOLVERS = {
    "barlab.floordiv": floordiv,
    "barlab.mul": multiply,
    "barlab.cwd": os.getcwd,
    "barlab.generator_folder": generator_folder,
    "barlab.gpus_per_node": gpus_per_node,
    "barlab.cpus_per_task": cpus_per_task,
}


def register_resolvers() -> None:
    """Register every resolver above that is not registered yet."""
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
