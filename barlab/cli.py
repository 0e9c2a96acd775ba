"""Shared plumbing of barlab's command-line entry points: early checks of the command line, one-line
error reporting, and ``main()`` for the one-shot Hydra tools."""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from barlab.config.overrides import check_group_overrides
from barlab.config.paths import CONFIG_DIR
from barlab.config.resolvers import register_resolvers
from barlab.errors import BarlabError, ConfigError

log = logging.getLogger("barlab")

def report_error(err: BaseException) -> None:
    """Print a user error as one line on stderr."""
    print(f"error: {err}", file=sys.stderr, flush=True)


def require(cfg: DictConfig, key: str, fix: str) -> None:
    """A mandatory top-level value (``???`` in the YAML) must be set on the command line."""
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
        register_resolvers()
        _hydra_main()

    return main


def precheck_command_line() -> None:
    """Exit 2 with one line if a ``group=option`` on the command line names no config file, or if
    ``hydra/launcher=slurm`` cannot submit from here (see :func:`barlab.runtime.slurm.preflight`)."""
    from barlab.runtime.slurm import preflight

    try:
        check_group_overrides(sys.argv[1:])
        preflight(sys.argv[1:])
    except BarlabError as err:
        report_error(err)
        sys.exit(2)
