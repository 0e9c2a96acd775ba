"""Tiny random stand-ins for the paper tokenizer's pretrained files (written by
:func:`barlab.bench.stand_in_weights.write_stand_ins`, in the real formats), and the overrides that
size ``tokenizer=bar_fsq_paper`` to match."""

from __future__ import annotations

from pathlib import Path

from barlab.bench.stand_in_weights import TINY_OVERRIDES, TINY_SIZES, pretrained_overrides, write_stand_ins


def write_tiny_pretrained(folder: Path, seed: int = 0) -> dict[str, Path]:
    """The five tiny files under ``folder``; returns ``{name: path}`` keyed as ``tokenizer.pretrained``."""
    return write_stand_ins(folder, TINY_SIZES, seed)


__all__ = ["TINY_OVERRIDES", "pretrained_overrides", "write_tiny_pretrained"]
