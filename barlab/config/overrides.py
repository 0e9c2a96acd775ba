"""Command-line ``group=option`` overrides checked against the config folders, in one line each."""

from __future__ import annotations

from pathlib import Path

from barlab.config.paths import CONFIG_DIR
from barlab.errors import ConfigError

# Knobs that moved: the MBM head's size to the head group, the preset's sampling settings to the one
# top-level `sampling` node (the allocation a preset gave the MBM head is head.allocation).
MOVED_KNOBS = {"generator.head_width": "head.width", "generator.head_depth": "head.depth",
               "generator.sampling.allocation": "head.allocation",
               **{f"generator.sampling.{k}": f"sampling.{k}" for k in ("guidance", "schedule", "temperature")}}


def check_group_overrides(argv: list[str], config_dir: Path = CONFIG_DIR) -> None:
    """Reject ``group=option`` overrides whose option file does not exist, in one line.

    Hydra would otherwise print a multi-line search-path report. Handles sweeps (``a,b``),
    ``+``/``++`` prefixes and the dotted spelling of a group (``tokenizer.quantizer=fsq``,
    which must be written ``tokenizer/quantizer=fsq``). A knob that moved (:data:`MOVED_KNOBS`) is
    refused with its new name.
    """
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~").split("@", 1)[0]
        if key in MOVED_KNOBS:
            raise ConfigError(key, f"has moved to {MOVED_KNOBS[key]}", fix=f"{MOVED_KNOBS[key]}={value}")
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
