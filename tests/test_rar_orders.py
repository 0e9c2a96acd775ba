"""RAR (randomness annealing): the ratio schedule at chosen steps, the orders drawn for it, and the generator's
training step using the ratio of *its* step of *its* run length with its own start / end knobs; and the label
drop (for classifier-free guidance) of the same step at its rate p."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from barlab.generator import ARBackbone, BitwiseHead
from barlab.generator.order import random_ratio, sample_orders
from barlab.lightning.generator_module import GeneratorModule


@pytest.mark.parametrize("start,end,total,points", [
    (0.2, 0.6, 50, {0: 1.0, 10: 1.0, 15: 0.75, 20: 0.5, 25: 0.25, 30: 0.0, 50: 0.0, 80: 0.0}),
    (0.5, 0.75, 1000, {499: 1.0, 500: 1.0, 550: 0.8, 700: 0.2, 750: 0.0}),
    (0.0, 1.0, 10, {0: 1.0, 1: 0.9, 5: 0.5, 9: 0.1, 10: 0.0}),
])
def test_random_ratio_is_one_then_linear_then_zero(start, end, total, points):
    for step, want in points.items():
        assert random_ratio(step, total, start, end) == pytest.approx(want), step


def test_orders_are_permutations_exactly_where_the_uniform_draw_is_below_the_ratio():
    batch, length, ratio = 64, 7, 0.3
    orders = sample_orders(batch, length, ratio, torch.Generator().manual_seed(5))
    replay = torch.Generator().manual_seed(5)
    pick = torch.rand(batch, generator=replay) < ratio
    perms = torch.rand(batch, length, generator=replay).argsort(dim=1)
    assert 5 < int(pick.sum()) < 40
    assert torch.equal(orders[pick], perms[pick])
    assert torch.equal(orders[~pick], torch.arange(length).expand(int((~pick).sum()), length))
    assert torch.equal(orders.sort(dim=1).values, torch.arange(length).expand(batch, length))


class _Trainer:
    def __init__(self, max_steps, global_step):
        self.max_steps, self.global_step = max_steps, global_step


@pytest.mark.parametrize("step,want", [(0, 1.0), (20, 1.0), (40, 0.5), (50, 0.25), (60, 0.0), (79, 0.0)])
def test_training_step_draws_orders_with_the_ratio_of_its_step(step, want, monkeypatch):
    total, start, end, batch, grid = 80, 0.25, 0.75, 400, (2, 3)
    torch.manual_seed(0)
    backbone = ARBackbone(2, grid, 3, width=8, depth=1, heads=2, cond_dim=8, class_repeat=1)
    module = GeneratorModule(backbone, BitwiseHead(8, 2), nn.Identity(), grid=grid, rar_start=start, rar_end=end,
                             label_drop=0.0, optimizer=None, scheduler=None)
    logged, orders = {}, []
    real_forward = module.backbone.forward
    monkeypatch.setattr(module.backbone, "forward",
                        lambda bits, labels, order=None: orders.append(order) or real_forward(bits, labels, order))
    monkeypatch.setattr(module, "log_dict", lambda values, **kw: logged.update(values))
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    module._trainer = _Trainer(total, step)
    bits = torch.randint(0, 2, (batch, 6, 2), generator=torch.Generator().manual_seed(1)).float()
    module.training_step({"bits": bits, "label": torch.zeros(batch, dtype=torch.long)}, 0)
    assert float(logged["train/random_ratio"]) == pytest.approx(want)
    (order,) = orders
    shuffled = (order != torch.arange(6)).any(dim=1).float().mean().item()
    # a uniform permutation of 6 is the identity with probability 1/720; 400 rows: std <= 0.025
    assert abs(shuffled - want * (1 - 1 / 720)) < 0.1, (step, shuffled)
    if want == 0.0:
        assert torch.equal(order, torch.arange(6).expand(batch, 6))


@pytest.mark.parametrize("p", [0.0, 0.15, 1.0])
def test_training_step_drops_labels_to_the_null_class_at_rate_p(p, monkeypatch):
    batch, grid, classes = 4000, (2, 2), 3
    torch.manual_seed(0)
    backbone = ARBackbone(2, grid, classes, width=8, depth=1, heads=2, cond_dim=8, class_repeat=1)
    module = GeneratorModule(backbone, BitwiseHead(8, 2), nn.Identity(), grid=grid, label_drop=p, optimizer=None,
                             scheduler=None)
    fed = []
    real_forward = module.backbone.forward
    monkeypatch.setattr(module.backbone, "forward",
                        lambda bits, labels, order=None: fed.append(labels) or real_forward(bits, labels, order))
    monkeypatch.setattr(module, "log_dict", lambda *a, **k: None)
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    module._trainer = _Trainer(100, 90)
    labels = torch.arange(batch) % classes
    bits = torch.randint(0, 2, (batch, 4, 2), generator=torch.Generator().manual_seed(2)).float()
    module.training_step({"bits": bits, "label": labels}, 0)
    (seen,) = fed
    dropped = seen == classes                                   # the null class is num_classes
    assert torch.equal(seen[~dropped], labels[~dropped])        # the others pass unchanged
    # 4000 Bernoulli(p) draws: std <= 0.008, so +-0.035 is > 4 sigma
    assert abs(dropped.float().mean().item() - p) < 0.035
