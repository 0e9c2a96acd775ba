"""The sweep files of ``sweeps/`` composed in this process, point by point, as a multirun expands them.

    python -m barlab.train -m -cd sweeps -cn <name>        # what runs them

- :func:`compose_sweep`: ``sweeps/<name>.yaml`` with overrides, its ``hydra`` node kept (the launcher's
  settings resolve against the job's config), as Hydra composes each job of the sweep.
- :func:`sweep_points`: the jobs of the sweep, one override list each: the cartesian product of
  ``hydra.sweeper.params`` (Hydra's basic sweeper), values parsed with Hydra's override grammar.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from omegaconf import DictConfig

from barlab.config.paths import CONFIG_DIR, SWEEPS_DIR


def compose_sweep(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """``sweeps/<name>.yaml`` composed with ``overrides``, with its ``hydra`` node (unresolved), inside
    or outside a running Hydra app. ``configs/`` is on the search path, as ``-cd sweeps`` puts it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from barlab.config.resolvers import register_resolvers

    register_resolvers()
    args = [f"hydra.searchpath=[file://{CONFIG_DIR}]", *overrides]
    running = GlobalHydra.instance().is_initialized()
    saved = GlobalHydra.instance().hydra if running else None
    if running:
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(SWEEPS_DIR), version_base="1.3"):
            return compose(config_name=name, overrides=args, return_hydra_config=True)
    finally:
        if saved is not None:
            GlobalHydra.instance().initialize(saved)


def sweep_points(cfg: DictConfig, overrides: Sequence[str] = ()) -> list[list[str]]:
    """The jobs a multirun of ``cfg`` (from :func:`compose_sweep`) starts: one list of ``key=value``
    overrides per job, in Hydra's order (the last parameter varies fastest). ``overrides`` replace a
    swept parameter's values as they do on the command line (``head=mbm`` sweeps one head)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = {str(k): str(v) for k, v in (cfg.hydra.sweeper.get("params") or {}).items()}
    params.update(o.split("=", 1) for o in overrides)
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    axes = [[f"{o.key_or_group}={value}" for value in
             (o.sweep_string_iterator() if o.is_sweep_override() else [o.get_value_element_as_str()])]
            for o in parsed]
    return [list(point) for point in itertools.product(*axes)]
