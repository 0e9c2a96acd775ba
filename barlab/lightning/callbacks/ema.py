"""Exponential moving average of the weights, as a Lightning callback, matched by name.

The LightningModule says which weights are averaged through ``ema_module()`` (for the tokenizer:
the encoder, quantizer and decoder, never the discriminator or the perceptual network, which sit
beside it in the LightningModule). The average is kept per parameter / floating-point buffer
*name* of that module, as SiT's ``update_ema`` does, so a change in module order cannot pair a
weight with another weight's average. Validation, testing and ``trainer.validate`` run on the
averaged weights; training continues on the raw ones. The average lives in the checkpoint's
callback state, so a resumed run continues it.

Why not ``lightning.pytorch.callbacks.EMAWeightAveraging``: it averages the whole LightningModule
(discriminator included) and has no warm-up of the decay, so the exported tokenizer would change.
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
        self.shadow: dict[str, torch.Tensor] | None = None
        self._backup: dict[str, torch.Tensor] | None = None
        self._pending_state: dict[str, Any] | None = None

    @staticmethod
    def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
        """Parameters, then floating-point buffers, by name."""
        tensors = dict(module.named_parameters())
        tensors.update((name, b) for name, b in module.named_buffers() if b.is_floating_point())
        return tensors

    @staticmethod
    def _target(pl_module: L.LightningModule) -> nn.Module:
        if not hasattr(pl_module, "ema_module"):
            raise TypeError(f"{type(pl_module).__name__} has no ema_module(): say which weights the EMA averages")
        return pl_module.ema_module()

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    # ----------------------------------------------------------------- lifecycle
    def _restore(self, saved: dict[str, torch.Tensor] | list[torch.Tensor],
                 tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The checkpoint's average, by name (a list, from checkpoints before names, is in ``_tensors`` order)."""
        if isinstance(saved, list):
            saved = dict(zip(tensors, saved)) if len(saved) == len(tensors) else {}
        if saved.keys() != tensors.keys() or any(saved[n].shape != t.shape for n, t in tensors.items()):
            raise RuntimeError("EMA state in the checkpoint does not match the model's weights")
        return {n: saved[n].to(device=t.device, dtype=t.dtype) for n, t in tensors.items()}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tensors = self._tensors(self._target(pl_module))
        if self._pending_state is not None:
            self.shadow = self._restore(self._pending_state["shadow"], tensors)
            self.num_updates = self._pending_state["num_updates"]
            self._pending_state = None
        elif self.shadow is None:
            self.shadow = {n: t.detach().clone() for n, t in tensors.items()}

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.shadow is None or trainer.global_step % self.every_n_steps != 0:
            return
        decay = self.current_decay()
        for name, weight in self._tensors(self._target(pl_module)).items():
            shadow = self.shadow[name]
            shadow.lerp_(weight.detach().to(shadow.dtype), 1.0 - decay)
        self.num_updates += 1

    # ------------------------------------------------------- swap for evaluation
    @torch.no_grad()
    def swap_in(self, pl_module: L.LightningModule) -> None:
        """Put the averaged weights into the model, keeping the raw ones aside."""
        if self.shadow is None or self._backup is not None:
            return
        tensors = self._tensors(self._target(pl_module))
        self._backup = {n: t.detach().clone() for n, t in tensors.items()}
        for name, tensor in tensors.items():
            tensor.copy_(self.shadow[name])

    @torch.no_grad()
    def swap_out(self, pl_module: L.LightningModule) -> None:
        """Restore the raw training weights."""
        if self._backup is None:
            return
        for name, tensor in self._tensors(self._target(pl_module)).items():
            tensor.copy_(self._backup[name])
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
        shadow = {n: s.detach().cpu() for n, s in self.shadow.items()} if self.shadow is not None else None
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": shadow}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("shadow") is not None:
            self._pending_state = state_dict
