"""barlab: masked Bit AutoRegressive modeling (BAR) - tokenizers, generators and the bit-budget study."""

import os

# OpenMP waiting policy, set before torch is imported (an explicit OMP_WAIT_POLICY or GOMP_SPINCOUNT
# in the environment wins). Measured on 2 cores, one training step of the tiny generator:
#   libgomp default (spin ~300k): 0.33 s alone, 9.9 s next to a second torch process
#   OMP_WAIT_POLICY=PASSIVE:      0.43 s alone, 0.66 s next to a second process
#   GOMP_SPINCOUNT=10000:         0.33 s alone, 1.03 s next to a second process
# A short spin keeps single runs at full speed without the 15x collapse under contention. Set
# OMP_WAIT_POLICY=PASSIVE when several barlab processes share the same cores (the tests do).
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "10000"

__version__ = "0.1.0"
