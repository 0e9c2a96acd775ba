"""Shared plumbing for barlab's Hydra entry points: config paths, early checks of the
command line, and one-line error reporting."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from barlab.errors import BarlabError, ConfigError

log = logging.getLogger("barlab")

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

# The launch folder, for `paths.root_dir`. Hydra's own `${hydra:runtime.cwd}` is not set yet when a
# sweeper resolves `hydra.sweep.dir`, and `oc.env` resolves its default even when the variable is set.
if not OmegaConf.has_resolver("barlab.cwd"):
    OmegaConf.register_new_resolver("barlab.cwd", os.getcwd)


def generator_folder(ckpt: str) -> str:
    """The folder of a generator checkpoint argument: ``ckpt`` itself if it is a folder, else its parent."""
    path = Path(str(ckpt)).expanduser()
    return str(path if path.is_dir() else path.parent)


# `python -m barlab.sample -m ...`: the sampling grid goes beside the generator (configs/sample.yaml)
if not OmegaConf.has_resolver("barlab.generator_folder"):
    OmegaConf.register_new_resolver("barlab.generator_folder", generator_folder)


def check_group_overrides(argv: list[str], config_dir: Path = CONFIG_DIR) -> None:
    """Reject ``group=option`` overrides whose option file does not exist, in one line.

    Hydra would otherwise print a multi-line search-path report. Handles sweeps (``a,b``),
    ``+``/``++`` prefixes and the dotted spelling of a group (``tokenizer.quantizer=fsq``,
    which must be written ``tokenizer/quantizer=fsq``).
    """
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~").split("@", 1)[0]
        if key.startswith("hydra") or any(ch in value for ch in "()[]{}$*"):
            continue
        as_group = config_dir / key
        dotted = config_dir / key.replace(".", "/")
        if "." in key and dotted.is_dir() and not as_group.is_dir():
            group = key.replace(".", "/")
            raise ConfigError(key, f"is a config group; select an option with {group}={value}",
                              fix=f"{group}={value}")
        if not as_group.is_dir():
            continue
        options = sorted(p.stem for p in as_group.glob("*.yaml"))
        for choice in value.split(","):
            choice = choice.strip()
            if choice in ("null", "") or (as_group / f"{choice}.yaml").is_file():
                continue
            raise ConfigError(key, f"unknown option {choice!r}; choose one of {', '.join(options)}",
                              fix=f"{key}={options[0] if options else '...'}")


def instantiate_checked(node: DictConfig, knob: str, **kwargs):
    """``hydra.utils.instantiate`` that lets barlab's own errors through unchanged.

    Hydra wraps constructor errors in ``InstantiationException``; a wrapped :class:`BarlabError`
    is re-raised as is, anything else becomes a ConfigError naming ``knob``.
    """
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, BarlabError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, BarlabError):
            raise cause from None
        raise ConfigError(knob, str(err).splitlines()[0]) from err


def report_error(err: BaseException) -> None:
    """Print a user error as one line on stderr."""
    print(f"error: {err}", file=sys.stderr, flush=True)


def require(cfg: DictConfig, key: str, fix: str) -> None:
    """A mandatory top-level value (``???`` in the YAML) must be set on the command line."""
    from omegaconf import OmegaConf

    if OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, ""):
        raise ConfigError(key, "is required", fix=fix)


def hydra_tool(config_name: str, run: Callable[[DictConfig], Any]) -> Callable[[], None]:
    """``main()`` of a one-shot Hydra tool (sample, evaluate, export): check group overrides, compose
    ``configs/<config_name>.yaml``, call ``run(cfg)``; a :class:`BarlabError` exits 2 with one line."""
    import hydra

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)
    def _hydra_main(cfg: DictConfig) -> None:
        from barlab.utils.log_routing import route_lightning_logs

        route_lightning_logs()  # Hydra has configured logging by now
        try:
            run(cfg)
        except BarlabError as err:
            report_error(err)
            sys.exit(2)

    def main() -> None:
        precheck_command_line()
        _hydra_main()

    return main


def precheck_command_line() -> None:
    """Exit 2 with one line if a ``group=option`` on the command line names no config file, or if
    ``hydra/launcher=slurm`` cannot submit from here (see :func:`barlab.slurm.preflight`)."""
    from barlab.slurm import preflight

    try:
        check_group_overrides(sys.argv[1:])
        preflight(sys.argv[1:])
    except BarlabError as err:
        report_error(err)
        sys.exit(2)


def pick_device(name: str):
    """``device=`` of the one-shot tools: ``auto`` (CUDA if present), ``cpu`` or ``cuda``."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "CUDA is not available on this machine", fix="device=cpu (or auto)")
    if name not in ("cpu", "cuda"):
        raise ConfigError("device", f"unknown device {name!r}", fix="device=auto")
    return torch.device(name)
