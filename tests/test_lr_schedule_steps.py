"""The warm-up + cosine schedule at chosen steps, and the learning rate each optimiser really uses at each
training step of the generator and (GAN on) tokenizer modules under a real Trainer."""

from __future__ import annotations

import math
from functools import partial
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn

from barlab.generator import ARBackbone, BitwiseHead
from barlab.lightning.generator_module import GeneratorModule
from barlab.lightning.tokenizer_module import TokenizerModule
from barlab.tokenizer.quantizers.base import QuantizerOutput
from barlab.utils.lr_schedules import DEFAULT_TOTAL_STEPS, planned_steps, warmup_cosine, warmup_cosine_scheduler


def by_hand(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """(step + 1) / (warmup + 1) during the warm-up; then min + (1 − min)·½(1 + cos(π·progress)), progress
    clamped to 1 at ``total``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / (total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def test_schedule_values_at_chosen_steps():
    warmup, total, low = 4, 20, 0.1
    assert warmup_cosine(0, warmup, total, low) == pytest.approx(0.2)
    assert warmup_cosine(3, warmup, total, low) == pytest.approx(0.8)
    assert warmup_cosine(4, warmup, total, low) == pytest.approx(1.0)               # the peak, after warm-up
    assert warmup_cosine(12, warmup, total, low) == pytest.approx(0.55)             # half way: cos = 0
    assert warmup_cosine(16, warmup, total, low) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(0.75 * math.pi)))
    assert warmup_cosine(20, warmup, total, low) == pytest.approx(0.1)
    assert warmup_cosine(35, warmup, total, low) == pytest.approx(0.1)              # stays at the floor
    assert warmup_cosine(0, 0, 10, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(5, 0, 10, 0.0) == pytest.approx(0.5)
    for step in range(30):
        assert warmup_cosine(step, warmup, total, low) == pytest.approx(by_hand(step, warmup, total, low))


def test_scheduler_scales_every_parameter_group_from_its_own_base_rate():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.1}], lr=1.0)
    sched = warmup_cosine_scheduler(opt, total_steps=10, warmup_steps=2, min_lr_ratio=0.25)
    seen = []
    for _ in range(12):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    for step, (lr_a, lr_b) in enumerate(seen):
        assert lr_a == pytest.approx(by_hand(step, 2, 10, 0.25)) and lr_b == pytest.approx(0.1 * lr_a)


def test_planned_steps_is_max_steps_or_the_default():
    assert planned_steps(SimpleNamespace(max_steps=77)) == 77
    assert planned_steps(SimpleNamespace(max_steps=-1)) == DEFAULT_TOTAL_STEPS
    assert planned_steps(SimpleNamespace(max_steps=None)) == DEFAULT_TOTAL_STEPS


class LRProbe(L.Callback):
    """The learning rate of every group of every optimiser at the start of each training batch."""

    def __init__(self):
        self.rows: list[tuple[int, list[list[float]]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rows.append((trainer.global_step, [[g["lr"] for g in opt.param_groups] for opt in trainer.optimizers]))


def fit(module, batches, steps):
    probe = LRProbe()
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False, callbacks=[probe])
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return probe.rows


def test_generator_uses_the_scheduled_rate_at_every_step():
    base, warmup, steps, low = 0.05, 3, 9, 0.2
    torch.manual_seed(0)
    backbone = ARBackbone(2, (2, 2), 3, width=16, depth=1, heads=2, cond_dim=8, class_repeat=1)
    module = GeneratorModule(backbone, BitwiseHead(8, 2), nn.Identity(), grid=(2, 2),
                             optimizer=partial(torch.optim.AdamW, lr=base, weight_decay=0.01),
                             scheduler=partial(warmup_cosine_scheduler, warmup_steps=warmup, min_lr_ratio=low))
    gen = torch.Generator().manual_seed(0)
    batches = [{"bits": torch.randint(0, 2, (2, 4, 2), generator=gen).float(), "label": torch.tensor([0, 1])}
               for _ in range(steps)]
    rows = fit(module, batches, steps)
    assert [step for step, _ in rows] == list(range(steps))
    for step, ((decayed, plain),) in rows:
        want = base * by_hand(step, warmup, steps, low)
        assert decayed == pytest.approx(want) and plain == pytest.approx(want), step


class Affine(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.9))
        self.quantizer = SimpleNamespace(bits_per_token=1, is_discrete=False)

    def bits_per_image(self, size):
        return 1

    def forward(self, x):
        return self.a * x, QuantizerOutput(latent=x, bits=None, codes=None, loss=torch.zeros(()), metrics={})


class MeanDiscriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.u = nn.Parameter(torch.tensor(0.1))

    def forward(self, x):
        return self.u * x.mean(dim=(1, 2, 3))[:, None]


def test_tokenizer_and_discriminator_each_follow_their_own_schedule():
    """The autoencoder's schedule steps every training step; the discriminator's only when it steps, from
    ``gan_start_step`` on: at training step s its rate is the schedule at s − gan_start_step."""
    base, disc_base, warmup, steps, start, low = 0.1, 0.02, 2, 8, 3, 0.1
    module = TokenizerModule(Affine(), image_size=4, discriminator=MeanDiscriminator(), gan_weight=0.5,
                             gan_start_step=start, disc_lr=disc_base, optimizer=partial(torch.optim.SGD, lr=base),
                             scheduler=partial(warmup_cosine_scheduler, warmup_steps=warmup, min_lr_ratio=low))
    gen = torch.Generator().manual_seed(0)
    rows = fit(module, [{"image": torch.rand(2, 1, 4, 4, generator=gen)} for _ in range(steps)], steps)
    assert [step for step, _ in rows] == list(range(steps))
    for step, ((g_lr,), (d_lr,)) in rows:
        assert g_lr == pytest.approx(base * by_hand(step, warmup, steps, low)), step
        assert d_lr == pytest.approx(disc_base * by_hand(max(0, step - start), warmup, steps, low)), step
