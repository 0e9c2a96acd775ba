"""Errors that carry a one-line, actionable message.

Every error a user can cause by a bad config, bad data or a bad checkpoint is one of these.
The entry points (``python -m barlab.train`` and friends) print ``str(err)`` on one line and
exit non-zero instead of showing a traceback.
"""

from __future__ import annotations

import re


class BarlabError(Exception):
    """Base class: a user-fixable problem with a one-line message."""


class ConfigError(BarlabError, ValueError):
    """A config knob holds a bad value.

    ``ConfigError("tokenizer.bits", "must be a positive integer, got 0", fix="tokenizer.bits=16")``
    renders as ``tokenizer.bits: must be a positive integer, got 0 (fix: tokenizer.bits=16)``.
    """

    def __init__(self, knob: str, message: str, fix: str | None = None):
        self.knob = knob
        self.message = message
        self.fix = fix
        text = f"{knob}: {message}"
        if fix:
            text += f" (fix: {fix})"
        super().__init__(text)

    def renamed(self, knob: str) -> ConfigError:
        """This error naming ``knob`` instead of its own: how the config layer turns a module's argument
        (``bits``) into the knob a user sets (``tokenizer.bits``). Every ``<own knob>=`` in the fix is
        renamed too. An error about a module as a whole has the knob ``""``."""
        fix = self.fix
        if fix and self.knob:
            fix = re.sub(rf"(?<![\w.]){re.escape(self.knob)}(?=[=.\[])", knob, fix)
        return ConfigError(knob, self.message, fix=fix)


class DataError(BarlabError):
    """The data cannot be found or read; the message says how to get it."""


class CheckpointError(BarlabError):
    """A checkpoint is missing, unreadable or does not match the config."""


class TrainingDiverged(BarlabError):
    """The training loss (or the weights about to be checkpointed) became NaN or Inf."""


class DiskFull(BarlabError):
    """A write ran out of disk space (or quota, or the file-size limit); nothing half-written is kept."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        super().__init__(f"disk full while writing {path} ({reason}) (fix: free space on that disk, "
                         "or write to another one: paths.output_dir=..., data.shards_dir=... or --out ...)")
