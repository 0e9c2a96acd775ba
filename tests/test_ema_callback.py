"""The EMA callback under a real Trainer: the update formula with its warm-up, every ``every_n_steps`` steps,
floating-point buffers averaged and integer ones left alone; validation runs on the averaged weights and
training continues on the raw ones."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from barlab.lightning.callbacks.ema import EMA


class Net(L.LightningModule):
    """Linear + BatchNorm (a float buffer and an integer one); validation records the weights it ran on."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
        self.seen_in_validation: list[tuple[int, dict]] = []

    def ema_module(self):
        return self.net

    def training_step(self, batch, batch_idx):
        return (self.net(batch["x"]) - batch["y"]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.seen_in_validation.append((self.trainer.global_step, state(self.net)))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Trajectory(L.Callback):
    """The raw weights after every training step and at the start of the next one."""

    def __init__(self):
        self.after: list[dict] = []
        self.starts: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.starts.append(state(pl_module.net))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after.append(state(pl_module.net))


def expected_shadows(initial: dict, after: list[dict], decay: float, every: int, warmup: bool) -> list[dict]:
    """The average after each step: ``ema = d·ema + (1 − d)·w`` at global steps every, 2·every, ...,
    ``d = min(decay, (1 + n) / (10 + n))`` with n earlier updates (warm-up), floating-point entries only."""
    shadow = {k: v.double() for k, v in initial.items() if v.is_floating_point()}
    out, updates = [], 0
    for step, weights in enumerate(after, start=1):
        if step % every == 0:
            d = min(decay, (1 + updates) / (10 + updates)) if warmup else decay
            shadow = {k: d * s + (1 - d) * weights[k].double() for k, s in shadow.items()}
            updates += 1
        out.append(dict(shadow))
    return out


def run(decay: float, every: int, warmup: bool, steps: int = 7, val_every: int = 3):
    module = Net()
    gen = torch.Generator().manual_seed(1)
    batches = [{"x": torch.randn(4, 3, generator=gen), "y": torch.randn(4, 2, generator=gen)} for _ in range(steps)]
    ema, trajectory = EMA(decay=decay, warmup=warmup, every_n_steps=every), Trajectory()
    initial = state(module.net)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        val_check_interval=val_every, limit_val_batches=1, callbacks=[ema, trajectory])
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=torch.utils.data.DataLoader(batches[:1],
                                                                                              batch_size=None))
    return module, ema, trajectory, initial


def test_warmup_decay_values():
    ema = EMA(decay=0.5, warmup=True)
    values = []
    for n in (0, 1, 5, 8, 100):
        ema.num_updates = n
        values.append(ema.current_decay())
    assert values == pytest.approx([0.1, 2 / 11, 6 / 15, 0.5, 0.5])
    assert EMA(decay=0.3, warmup=False).current_decay() == 0.3


@pytest.mark.parametrize("decay,every,warmup", [(0.9, 1, False), (0.8, 2, True), (0.7, 3, False)])
def test_average_follows_the_formula_every_n_steps(decay, every, warmup):
    module, ema, trajectory, initial = run(decay, every, warmup)
    want = expected_shadows(initial, trajectory.after, decay, every, warmup)[-1]
    assert ema.num_updates == 7 // every
    assert set(ema.shadow) == {k for k, v in initial.items() if v.is_floating_point()}   # no integer buffer
    assert "1.num_batches_tracked" not in ema.shadow and "1.running_mean" in ema.shadow
    for name, value in want.items():
        torch.testing.assert_close(ema.shadow[name].double(), value, rtol=1e-5, atol=1e-6)
    # the training weights are the raw ones; the averaged state dict is the shadow
    for name, value in trajectory.after[-1].items():
        assert torch.equal(module.net.state_dict()[name], value)
    averaged = ema.averaged_state_dict(module)
    for name, value in want.items():
        torch.testing.assert_close(averaged[name].double(), value, rtol=1e-5, atol=1e-6)


def test_validation_runs_on_the_average_and_training_resumes_on_the_raw_weights():
    decay, every = 0.6, 1
    module, ema, trajectory, initial = run(decay, every, warmup=False, steps=7, val_every=3)
    shadows = expected_shadows(initial, trajectory.after, decay, every, warmup=False)
    assert [step for step, _ in module.seen_in_validation] == [3, 6]
    for step, seen in module.seen_in_validation:
        for name, value in shadows[step - 1].items():
            torch.testing.assert_close(seen[name].double(), value, rtol=1e-5, atol=1e-6)
        raw = trajectory.after[step - 1]
        assert any(not torch.allclose(seen[n].double(), raw[n].double()) for n in shadows[step - 1])
        # the step after the validation starts from the raw weights of the step before it
        for name, value in raw.items():
            assert torch.equal(trajectory.starts[step][name], value), (step, name)
