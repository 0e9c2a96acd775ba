"""Save and restore every random number generator with the checkpoint.

Lightning checkpoints hold the model, optimisers, schedulers, loops and callback states, but not
the RNG streams. Without them a resumed run draws different masks, label drops and RAR orders
than the run it continues. This callback stores Python's, NumPy's, torch's CPU and (if present)
every CUDA generator's state under ``checkpoint["rng_states"]`` and puts them back on load.
The states are per rank and each rank restores its own; a rank the checkpoint does not know (a
resume on more processes) keeps its fresh seeding.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


def collect_rng_states() -> dict[str, Any]:
    """The current state of every generator a training step draws from."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # tensors and plain Python values only: resuming loads checkpoints with weights_only=True
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    states = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`collect_rng_states` (missing entries are left as they are)."""
    if "python" in states:
        random.setstate(states["python"])
    if "numpy" in states:
        kind, keys, pos, has_gauss, gauss = states["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "torch" in states:
        torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        cuda = states["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


class RNGState(L.Callback):
    """Stores the RNG states of this rank in each checkpoint and restores them when fit resumes."""

    def __init__(self):
        self._pending: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        per_rank = checkpoint.setdefault("rng_states", {})
        per_rank[trainer.global_rank] = collect_rng_states()
        if trainer.world_size > 1:  # every rank's stream, so that each rank resumes its own
            gathered = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, per_rank[trainer.global_rank])
            checkpoint["rng_states"] = dict(enumerate(gathered))

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("rng_states") or {}
        self._pending = saved.get(trainer.global_rank)

    def on_train_start(self, trainer, pl_module) -> None:
        # after Lightning's own seeding and the loaders' start: the resumed stream wins
        if self._pending is not None:
            restore_rng_states(self._pending)
            self._pending = None
