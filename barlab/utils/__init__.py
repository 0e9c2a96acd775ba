"""Foundations every layer may use: atomic file I/O, file locks, progress, log routing, image grids and
image sets (PNG folders, ADM npz), integer knob checks, LR schedules, the ``device=`` knob."""
