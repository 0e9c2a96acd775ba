"""Lightning checkpoint I/O that never leaves a half-written checkpoint behind."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from barlab.utils.io import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file in the same folder, then rename it.

    A job killed mid-save (SLURM pre-emption, out of memory) keeps the previous checkpoint intact.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        atomic_torch_save(checkpoint, path)
