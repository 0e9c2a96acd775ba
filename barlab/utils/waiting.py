"""Waiting for other processes that write files: give up when they stop making progress, not after a
fixed time (a long job keeps going as long as its files keep coming)."""

from __future__ import annotations

import os
import time
from typing import Callable

from barlab.errors import DataError


def wait_until(done: Callable[[], bool], progress: Callable[[], object], what: str, stall_timeout_s: float,
               poll_s: float = 0.5) -> None:
    """Return once ``done()``; raise DataError naming ``what`` if ``progress()`` (anything that changes
    while the others work, e.g. :func:`folder_state`) stays the same for ``stall_timeout_s`` seconds."""
    last, since = progress(), time.monotonic()
    while not done():
        time.sleep(poll_s)
        now = progress()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > stall_timeout_s:
            raise DataError(f"{what}: nothing new for {stall_timeout_s:.0f} s (did a rank fail?)")


def folder_state(folder: str | os.PathLike) -> frozenset[str]:
    """The names in ``folder`` (empty if it does not exist): changes whenever a file appears or goes."""
    try:
        return frozenset(os.listdir(folder))
    except FileNotFoundError:
        return frozenset()
