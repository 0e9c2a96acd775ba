"""One generator training step without Lightning, and random batches for it; one tokenizer step too.

The bare step runs the module's own ``training_step`` (token shuffling, label drop, RAR orders,
backbone, head loss), then backward, the gradient-norm clip, AdamW and the LR schedule, as
Lightning's automatic optimisation does, so both loops do the same arithmetic.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator

import torch
from torch.utils.data import IterableDataset

from barlab.bench.timing import device_sync


def random_batch(module, batch_size: int, seed: int = 0) -> dict:
    """``{"bits": float (B, h·w, k) {0,1} raster token bits, "label": long (B,)}`` for ``module``
    (a GeneratorModule: grid (h, w), k = bits per token before shuffling), on the CPU; for continuous
    tokens ``{"tokens": float (B, h·w, C) standard normal, "label": ...}``, as the loader gives them."""
    gen = torch.Generator().manual_seed(seed)
    h, w = module.grid
    k = module.backbone.bits_per_step // (module.p * module.p)
    if module.backbone.token_type == "continuous":
        tokens = torch.randn(batch_size, h * w, k, generator=gen)
        return {"tokens": tokens, "label": torch.randint(0, module.num_classes, (batch_size,), generator=gen)}
    bits = torch.randint(0, 2, (batch_size, h * w, k), generator=gen).float()
    labels = torch.randint(0, module.num_classes, (batch_size,), generator=gen)
    return {"bits": bits, "label": labels}


class RepeatBatch(IterableDataset):
    """The same batch ``count`` times (a DataLoader with ``batch_size=None`` yields it as is)."""

    def __init__(self, batch: dict, count: int):
        self.batch, self.count = batch, count

    def __iter__(self) -> Iterator[dict]:
        for _ in range(self.count):
            yield self.batch


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Lightning's ``bf16-mixed`` as a plain autocast; ``32-true`` as nothing."""
    if precision == "bf16-mixed":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class BareTrainer:
    """The module's optimiser and schedule (``configure_optimizers`` for ``total_steps`` steps) and a
    ``step(batch)``: training_step -> backward -> clip -> optimizer -> scheduler -> zero_grad."""

    def __init__(self, module, device: torch.device, precision: str, total_steps: int = 1000):
        module.total_steps = lambda: total_steps  # no trainer to read max_steps from
        conf = module.configure_optimizers()
        self.module, self.device, self.precision = module.train(), device, precision
        self.optimizer, self.scheduler = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.index = 0

    def forward_backward(self, batch: dict) -> torch.Tensor:
        """training_step (under the precision's autocast) and backward; returns the loss."""
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # self.log without a trainer: warns, logs nothing
            with autocast(self.device, self.precision):
                loss = self.module.training_step(batch, self.index)
        loss.backward()
        return loss

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, batch: dict) -> float:
        loss = self.forward_backward(batch)
        torch.nn.utils.clip_grad_norm_(self.params, self.module.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.index += 1
        return float(loss.detach())


def step_times(step, batches, device: torch.device) -> list[float]:
    """Seconds between consecutive step ends, over an iterable of batches: (n - 1,) durations."""
    ends = []
    for batch in batches:
        step(batch)
        device_sync(device)
        ends.append(time.perf_counter())
    return [b - a for a, b in zip(ends[:-1], ends[1:])]


class BareTokenizerStep:
    """The tokenizer stage's training step without Lightning: the module's own ``autoencoder_loss``
    (every loss term it has, under the precision's autocast), backward, the gradient-norm clip, its
    optimiser; with ``gan_on`` also the discriminator's hinge step. ``step(images)``: images
    (B, C, H, W) in [-1, 1]."""

    def __init__(self, module, device: torch.device, precision: str, gan_on: bool = False):
        self.module, self.device, self.precision = module.to(device).train(), device, precision
        self.gan_on = gan_on and module.discriminator is not None
        self.optimizers = module.build_optimizers()
        self.params = [[p for g in opt.param_groups for p in g["params"]] for opt in self.optimizers]

    def forward_backward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        with autocast(self.device, self.precision):
            loss, _, recon = self.module.autoencoder_loss(images, self.gan_on)
        loss.backward()
        if self.gan_on:
            self.optimizers[1].zero_grad(set_to_none=True)  # as training: the generator's term reached it
            with autocast(self.device, self.precision):
                d_loss = self.module.discriminator_loss(images, recon)
            d_loss.backward()
        return loss

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def step(self, images: torch.Tensor) -> float:
        loss = self.forward_backward(images)
        for optimizer, params in zip(self.optimizers, self.params):
            torch.nn.utils.clip_grad_norm_(params, self.module.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())
