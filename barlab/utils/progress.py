"""Progress bars for barlab's long loops: shown on a terminal, silent in logs, pipes and tests."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def show_progress(cfg) -> bool:
    """The run's ``trainer.enable_progress_bar`` (True when the config has no trainer node)."""
    trainer = cfg.get("trainer") or {}
    return bool(trainer.get("enable_progress_bar", True))


def bars_shown(enabled: bool = True) -> bool:
    """Whether a progress bar may be drawn: ``enabled`` and stderr is a terminal. Lightning's own
    bar follows this rule too (``build_trainer``); where it is off, ``callbacks.progress_log``
    writes progress as log lines."""
    return bool(enabled) and sys.stderr.isatty()


def progress(iterable: Iterable[T], desc: str, total: int | None = None, enabled: bool = True,
             unit: str = "it") -> Iterable[T]:
    """``iterable`` with a tqdm bar on stderr, shown only where :func:`bars_shown` allows it (stderr a
    terminal; ``enabled`` False, e.g. ``trainer.enable_progress_bar=false``, turns it off everywhere).
    The bar vanishes when the loop ends (``leave=False``): the log lines stay the record of what ran.
    """
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True,
                disable=not bars_shown(enabled))


def progress_bar(desc: str, total: int | None = None, enabled: bool = True, unit: str = "it") -> tqdm:
    """A bar moved by hand (``bar.update(n)``; use it as a context manager), with the rules of
    :func:`progress`. For loops whose iterable must not be touched: tqdm asks an iterable for its
    ``len()``, and a DataLoader over a WebDataset pipeline then draws from the torch RNG differently."""
    return progress(None, desc, total=total, enabled=enabled, unit=unit)
