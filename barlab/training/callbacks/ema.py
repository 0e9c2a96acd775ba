"""Exponential moving average of the weights, as a Lightning callback.

The LightningModule says which weights are averaged through ``ema_module()`` (for the tokenizer:
the encoder, quantizer and decoder, never the discriminator). Validation, testing and
``trainer.validate`` run on the averaged weights; training continues on the raw ones. The
average lives in the checkpoint's callback state, so a resumed run continues it.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn


class EMA(L.Callback):
    """Keep ``ema = decay * ema + (1 - decay) * w`` after every optimizer step.

    decay: the target decay (the paper: 0.999).
    warmup: if true the decay used at step ``t`` is ``min(decay, (1 + t) / (10 + t))``, so that a
        short run is not dominated by its random initialisation.
    every_n_steps: update period, in training steps (``trainer.global_step``; for the GAN tokenizer
        generator steps, its discriminator's steps are not counted).
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True, every_n_steps: int = 1):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.every_n_steps = every_n_steps
        self.num_updates = 0
        self.shadow: list[torch.Tensor] | None = None
        self._backup: list[torch.Tensor] | None = None
        self._pending_state: dict[str, Any] | None = None

    @staticmethod
    def _tensors(module: nn.Module) -> list[torch.Tensor]:
        """Parameters then floating-point buffers, in a fixed order."""
        tensors = [p for p in module.parameters()]
        tensors += [b for b in module.buffers() if b.is_floating_point()]
        return tensors

    def _target(self, pl_module: L.LightningModule) -> nn.Module:
        return pl_module.ema_module() if hasattr(pl_module, "ema_module") else pl_module

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    # ----------------------------------------------------------------- lifecycle
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tensors = self._tensors(self._target(pl_module))
        if self._pending_state is not None:
            saved = self._pending_state["shadow"]
            if len(saved) != len(tensors) or any(s.shape != t.shape for s, t in zip(saved, tensors)):
                raise RuntimeError("EMA state in the checkpoint does not match the model's weights")
            self.shadow = [s.to(device=t.device, dtype=t.dtype) for s, t in zip(saved, tensors)]
            self.num_updates = self._pending_state["num_updates"]
            self._pending_state = None
        elif self.shadow is None:
            self.shadow = [t.detach().clone() for t in tensors]

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.shadow is None or trainer.global_step % self.every_n_steps != 0:
            return
        decay = self.current_decay()
        tensors = self._tensors(self._target(pl_module))
        for shadow, weight in zip(self.shadow, tensors):
            shadow.lerp_(weight.detach().to(shadow.dtype), 1.0 - decay)
        self.num_updates += 1

    # ------------------------------------------------------- swap for evaluation
    @torch.no_grad()
    def swap_in(self, pl_module: L.LightningModule) -> None:
        """Put the averaged weights into the model, keeping the raw ones aside."""
        if self.shadow is None or self._backup is not None:
            return
        tensors = self._tensors(self._target(pl_module))
        self._backup = [t.detach().clone() for t in tensors]
        for tensor, shadow in zip(tensors, self.shadow):
            tensor.copy_(shadow)

    @torch.no_grad()
    def swap_out(self, pl_module: L.LightningModule) -> None:
        """Restore the raw training weights."""
        if self._backup is None:
            return
        for tensor, raw in zip(self._tensors(self._target(pl_module)), self._backup):
            tensor.copy_(raw)
        self._backup = None

    def on_validation_start(self, trainer, pl_module) -> None:
        self.swap_in(pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        self.swap_out(pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self.swap_in(pl_module)

    def on_test_end(self, trainer, pl_module) -> None:
        self.swap_out(pl_module)

    def averaged_state_dict(self, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        """The target module's state dict with the averaged weights in place of the raw ones."""
        self.swap_in(pl_module)
        try:
            return {k: v.detach().clone() for k, v in self._target(pl_module).state_dict().items()}
        finally:
            self.swap_out(pl_module)

    # ------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        shadow = [s.detach().cpu() for s in self.shadow] if self.shadow is not None else None
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": shadow}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("shadow") is not None:
            self._pending_state = state_dict
