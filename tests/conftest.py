"""Test session setup."""

import os

# As in barlab/__init__.py, and before anything imports torch: OpenMP threads that sleep instead of
# spinning, so parallel test processes do not slow each other down tenfold.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("WANDB_MODE", "offline")
# The `random` feature network is refused outside tests (its numbers mean nothing).
os.environ.setdefault("BARLAB_ALLOW_RANDOM_FEATURES", "1")
