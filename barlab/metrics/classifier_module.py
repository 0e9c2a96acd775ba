"""LightningModule that trains barlab's evaluation classifier (:class:`SmallCNN`) with cross-entropy."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from barlab.metrics.classifier import SmallCNN
from barlab.utils.lr_schedules import warmup_cosine_scheduler


class ClassifierModule(L.LightningModule):
    """Batches ``{"image": (B, C, H, W) in [-1, 1], "label": (B,)}``; AdamW, warm-up + cosine."""

    def __init__(self, net: SmallCNN, lr: float = 2e-3, weight_decay: float = 0.05, warmup_steps: int = 50):
        super().__init__()
        self.net = net
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.correct = 0
        self.seen = 0

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        _, logits = self.net(batch["image"])
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=0.05)
        acc = (logits.argmax(1) == batch["label"]).float().mean()
        self.log("loss", loss, prog_bar=True, batch_size=batch["label"].shape[0])
        self.log("acc", acc, prog_bar=True, batch_size=batch["label"].shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self.correct, self.seen = 0, 0

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        _, logits = self.net(batch["image"])
        self.correct += int((logits.argmax(1) == batch["label"]).sum())
        self.seen += int(batch["label"].shape[0])
        self.log("val/accuracy", (logits.argmax(1) == batch["label"]).float().mean(), on_epoch=True,
                 batch_size=batch["label"].shape[0], sync_dist=True)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else 1000
        scheduler = warmup_cosine_scheduler(optimizer, total, self.warmup_steps, min_lr_ratio=0.01)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
