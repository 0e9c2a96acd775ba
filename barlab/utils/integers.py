"""Checks of single knob values shared by the whole code base (configs, modules, data, CLIs).

Kept apart from any subpackage, so that a tokenizer, a generator head or the config checks can
use them without importing each other.
"""

from __future__ import annotations

import numbers

from barlab.errors import ConfigError


def check_int(value: object, knob: str, *, minimum: int = 1, fix: str | None = None,
              allow_none: bool = False) -> int | None:
    """Return ``value`` as an ``int`` if it is an integer ``>= minimum``, else raise ConfigError.

    Booleans, floats (even 8.0) and strings are rejected: a config that says ``bits: 2.5``,
    ``bits: true`` or ``bits: "8"`` is a mistake we want to surface, not silently coerce.
    ``allow_none``: None is a valid value (the knob's "unset"), returned as is.

    The message names ``knob``: ``must be a positive integer, got 0`` (``minimum=1``),
    ``must be an integer >= 2, got 1`` otherwise, ``... or null, got ...`` with ``allow_none``.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(knob, f"must be {what}{' or null' if allow_none else ''}, got {value!r}", fix=fix)
    return int(value)
