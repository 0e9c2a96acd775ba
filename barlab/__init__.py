"""barlab: masked Bit AutoRegressive modeling (BAR) - tokenizers, generators and the bit-budget study."""

import os

# libgomp's default busy-waiting makes every op ~10x slower as soon as another process competes
# for the cores (measured: a 4-layer transformer step took 10 s instead of 0.65 s next to a second
# training job). Sleeping waiters cost nothing measurable when the machine is idle. This must be
# set before torch is imported; an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
