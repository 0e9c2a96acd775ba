"""Gradient accumulation and gradient clipping are really applied to the generator's updates.

A real GeneratorModule (tiny backbone, the deterministic bitwise head) trains under a real Trainer with SGD at
a constant rate, so one optimiser step moves the weights by exactly ``-lr · clip(gradient)``. The gradient is
recomputed by hand (autograd on a copy of the module, one micro-batch at a time):

- ``generator.global_batch_size`` = 2 × the per-process batch gives ``accumulate_grad_batches = 2``
  (``apply_global_batch``), and the one update is the mean of the two micro-batch gradients;
- with ``grad_clip`` below the gradient's norm, the update's gradient has norm ``grad_clip`` and the
  direction of the unclipped one.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

import barlab.lightning.generator_module as generator_module
from barlab.generator import ARBackbone, BitwiseHead
from barlab.lightning.generator_module import GeneratorModule
from barlab.runtime.distributed import apply_global_batch

LR, K, GRID, CLASSES, PER_RANK = 0.5, 4, (2, 2), 3, 4


def make_module(grad_clip: float) -> GeneratorModule:
    torch.manual_seed(0)
    backbone = ARBackbone(K, GRID, CLASSES, width=16, depth=1, heads=2, cond_dim=8, class_repeat=1)
    head = BitwiseHead(8, K)
    with torch.no_grad():                      # every weight random, the zero-initialised adaLN gates too
        for p in list(backbone.parameters()) + list(head.parameters()):
            p.normal_(0.0, 0.3)
    return GeneratorModule(backbone, head, torch.nn.Identity(), grid=GRID, label_drop=0.0, grad_clip=grad_clip,
                           optimizer=lambda groups: torch.optim.SGD(groups, lr=LR),
                           scheduler=lambda opt, total_steps: LambdaLR(opt, lambda step: 1.0))


def micro_batches(n: int) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    return [{"bits": torch.randint(0, 2, (PER_RANK, GRID[0] * GRID[1], K), generator=gen).float(),
             "label": torch.randint(0, CLASSES, (PER_RANK,), generator=gen)} for _ in range(n)]


def weights(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def hand_gradient(module: GeneratorModule, batch: dict) -> dict[str, torch.Tensor]:
    """d loss / d weights of one micro-batch in raster order, on a copy of the module."""
    twin = copy.deepcopy(module)
    twin.zero_grad(set_to_none=True)
    twin._loss(batch, None, batch["label"]).loss.backward()
    return {n: (p.grad if p.grad is not None else torch.zeros_like(p)).clone()
            for n, p in twin.named_parameters() if p.requires_grad}


def fit(module: GeneratorModule, batches: list[dict], global_batch: int, max_steps: int, monkeypatch):
    """Train with the global batch applied as the generator stage does; raster orders only (the hand gradient
    needs to know each sample's order)."""
    monkeypatch.setattr(generator_module, "random_ratio", lambda *args: 0.0)
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False)
    data = SimpleNamespace(batch_size=PER_RANK)
    apply_global_batch(trainer, data, global_batch, "generator.global_batch_size")
    assert data.batch_size == PER_RANK
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return trainer


def norm(grads: dict) -> float:
    return float(torch.sqrt(sum(g.pow(2).sum() for g in grads.values())))


def test_two_accumulated_micro_batches_make_one_update_with_their_mean_gradient(monkeypatch):
    module = make_module(grad_clip=1e6)
    batches = micro_batches(2)
    before = weights(module)
    g1, g2 = hand_gradient(module, batches[0]), hand_gradient(module, batches[1])
    assert norm({n: g1[n] - g2[n] for n in g1}) > 1e-2                    # the two micro-batches differ
    trainer = fit(module, batches, global_batch=2 * PER_RANK, max_steps=1, monkeypatch=monkeypatch)
    assert trainer.accumulate_grad_batches == 2 and trainer.global_step == 1
    after = weights(module)
    for name in before:
        want = before[name] - LR * (g1[name] + g2[name]) / 2
        torch.testing.assert_close(after[name], want, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_without_accumulation_each_micro_batch_is_its_own_update(monkeypatch):
    module = make_module(grad_clip=1e6)
    batches = micro_batches(2)
    before = weights(module)
    g1 = hand_gradient(module, batches[0])
    trainer = fit(module, batches[:1], global_batch=PER_RANK, max_steps=1, monkeypatch=monkeypatch)
    assert trainer.accumulate_grad_batches == 1 and trainer.global_step == 1
    after = weights(module)
    for name in before:
        torch.testing.assert_close(after[name], before[name] - LR * g1[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_update_is_clipped_to_the_gradient_norm_limit(accumulate, monkeypatch):
    clip = 0.02
    module = make_module(grad_clip=clip)
    batches = micro_batches(accumulate)
    before = weights(module)
    grads = [hand_gradient(module, b) for b in batches]
    mean = {n: sum(g[n] for g in grads) / accumulate for n in grads[0]}
    assert norm(mean) > 10 * clip
    fit(module, batches, global_batch=accumulate * PER_RANK, max_steps=1, monkeypatch=monkeypatch)
    after = weights(module)
    step = {n: (before[n] - after[n]) / LR for n in before}
    assert norm(step) == pytest.approx(clip, rel=1e-4)
    scale = clip / norm(mean)
    for name in before:
        torch.testing.assert_close(step[name], mean[name] * scale, rtol=1e-3, atol=5e-7)  # float32 weights
