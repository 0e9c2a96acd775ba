"""LightningModule that trains a BAR generator: AR backbone + prediction head over bit tokens.

One training step, written out:

1. bits (B, L, k) raster from the token shards → token shuffling p → (B, L', k·p²)
2. labels dropped to the null class with probability ``label_drop`` (for CFG)
3. RAR order: each row a random permutation with probability random_ratio(step), else raster
4. cond = backbone(bits, labels, order) → (B, L', C); targets = bits in that order
5. loss = head.loss(cond, targets)   (the head owns its loss: softmax, per-bit CE or MBM)

AdamW (decay / no-decay groups), warm-up + cosine, gradient clipping. The tokenizer is held
frozen, only to decode sample grids.

Continuous tokens (a continuous backbone and head): batches hold ``"tokens"`` (B, L, C) instead of
``"bits"``; the same steps apply, token shuffling merging C·p² channels per AR step.
"""

from __future__ import annotations

from collections import deque

import lightning as L
import torch
from einops import rearrange
from torch import nn

from barlab.generator.backbone import ARBackbone
from barlab.generator.heads import Head
from barlab.generator.image_generator import generate_with_settings
from barlab.generator.order import random_ratio, sample_orders
from barlab.generator.sampler import ARSampler
from barlab.generator.token_shuffle import shuffle
from barlab.lightning.optim import OptimizerFactory, decay_groups
from barlab.runtime.checkpoint_checks import IDENTITY_KEY, head_identity, tokenizer_identity
from barlab.utils.lr_schedules import SchedulerFactory, planned_steps


class GeneratorModule(L.LightningModule):
    """Wires backbone, head, frozen tokenizer and the training recipe.

    backbone, head: the generator (plain nn.Modules); head.bits_per_step == k·p².
    tokenizer: the trained tokenizer (frozen; decodes samples to images).
    grid: (h, w) token grid of the tokenizer; token_shuffle: p.
    optimizer: ``param groups -> optimiser`` (the ``generator.optim`` node, a ``_partial_`` AdamW),
        called on :func:`decay_groups` (weight decay on the weight matrices only).
    scheduler: ``(optimiser, total_steps) -> LR scheduler`` (the ``generator.scheduler`` node).
    grad_clip: gradient-norm clip.
    sampling: dict with guidance, schedule, power, temperature and allocation (MBM head; None = the
        head's own), used for sample grids and the final samples.
    """

    def __init__(self, backbone: ARBackbone, head: Head, tokenizer: nn.Module, grid: tuple[int, int],
                 optimizer: OptimizerFactory, scheduler: SchedulerFactory, token_shuffle: int = 1,
                 label_drop: float = 0.1, rar_start: float = 0.5, rar_end: float = 0.75, grad_clip: float = 1.0,
                 sampling: dict | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.grid = tuple(grid)
        self.p = int(token_shuffle)
        self.label_drop = label_drop
        self.rar_start, self.rar_end = rar_start, rar_end
        self.optimizer, self.scheduler, self.grad_clip = optimizer, scheduler, grad_clip
        self.sampling = dict(sampling or {})
        self.sampler = ARSampler(backbone, head)
        self.num_classes = backbone.null_class
        self._recent: deque[tuple[float, float]] = deque(maxlen=50)

    def train(self, mode: bool = True):
        super().train(mode)
        self.tokenizer.eval()  # frozen: never in training mode
        return self

    # ----------------------------------------------------------------- helpers
    def recent_train_metrics(self) -> dict[str, float]:
        """Mean training loss and bit accuracy over the last (up to) 50 steps."""
        if not self._recent:
            return {}
        losses, accs = zip(*self._recent)
        return {"loss": sum(losses) / len(losses), "bit_accuracy": sum(accs) / len(accs)}

    def checkpoint_identity(self) -> dict:
        """What this generator is, keyed by knob; stored in every checkpoint, checked before resuming."""
        b = self.backbone
        return {"stage": "generator", **head_identity(self.head), **tokenizer_identity(self.tokenizer),
                "generator.token_shuffle": self.p, "token grid": list(self.grid), "num_classes": int(self.num_classes),
                "generator.backbone.width": int(b.width), "generator.backbone.depth": int(b.depth),
                "generator.backbone.heads": int(b.heads), "generator.backbone.cond_dim": int(b.cond_dim),
                "generator.backbone.class_repeat": int(b.prefix_len - 1)}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[IDENTITY_KEY] = self.checkpoint_identity()

    @staticmethod
    def batch_tokens(batch: dict) -> torch.Tensor:
        """The batch's raster tokens (B, h·w, k): ``"bits"``, or ``"tokens"`` for continuous token shards."""
        return batch["tokens"] if "tokens" in batch else batch["bits"]

    def to_steps(self, bits: torch.Tensor) -> torch.Tensor:
        """(B, h·w, k) raster token bits → (B, L', k·p²) AR steps."""
        return shuffle(bits, self.grid, self.p)

    def total_steps(self) -> int:
        """The run's planned length in steps (the RAR annealing and the LR schedule span it)."""
        return planned_steps(self.trainer)

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, generator: torch.Generator | None = None, **overrides) -> torch.Tensor:
        """labels (B,) → images (B, C, H, W) in [-1, 1], with the ``sampling`` settings (overridable)."""
        opts = {**self.sampling, **overrides}
        return generate_with_settings(self.sampler, self.tokenizer, self.grid, self.p, labels.to(self.device), opts,
                                      generator)

    def _loss(self, batch: dict, order: torch.Tensor | None, labels: torch.Tensor):
        bits = self.to_steps(self.batch_tokens(batch))
        cond = self.backbone(bits, labels, order)                                      # (B, L', C)
        targets = bits if order is None else bits.gather(1, order[..., None].expand_as(bits))
        return self.head.loss(rearrange(cond, "b l c -> (b l) c"), rearrange(targets, "b l k -> (b l) k"))

    # ----------------------------------------------------------------- training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        bits = self.batch_tokens(batch)
        batch_size, steps = bits.shape[0], self.backbone.seq_len
        ratio = random_ratio(self.global_step, self.total_steps(), self.rar_start, self.rar_end)
        order = sample_orders(batch_size, steps, ratio, device=bits.device)
        labels = self.backbone.drop_labels(batch["label"], self.label_drop)
        out = self._loss(batch, order, labels)
        logs = {"train/loss": out.loss, "train/bit_accuracy": out.bit_accuracy,
                "train/random_ratio": torch.tensor(float(ratio))}
        logs.update({f"train/{k}": v for k, v in out.metrics.items()})
        # the logged training numbers are means over ranks (each rank trains on its own batch)
        self.log_dict({k: v.detach().float() for k, v in logs.items()}, batch_size=batch_size, sync_dist=True)
        self._recent.append((float(out.loss.detach()), float(out.bit_accuracy.detach())))
        self.log("loss", out.loss.detach(), prog_bar=True, logger=False, batch_size=batch_size)
        self.log("bit_acc", out.bit_accuracy.detach(), prog_bar=True, logger=False, batch_size=batch_size)
        return out.loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self._loss(batch, None, batch["label"])
        n = self.batch_tokens(batch).shape[0]
        self.log("val/loss", out.loss, on_epoch=True, sync_dist=True, prog_bar=True, batch_size=n)
        self.log("val/bit_accuracy", out.bit_accuracy, on_epoch=True, sync_dist=True, batch_size=n)

    # -------------------------------------------------------------- optimisers
    def configure_optimizers(self):
        """The ``optim`` node on the decay / no-decay groups of backbone + head, the ``scheduler``
        node over the run's length, stepped every step."""
        optimizer = self.optimizer(decay_groups(nn.ModuleList([self.backbone, self.head])))
        scheduler = self.scheduler(optimizer, total_steps=self.total_steps())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
