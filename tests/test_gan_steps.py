"""With the GAN on, the tokenizer's step counter counts generator steps only.

Two optimisers step per batch (autoencoder, then discriminator); ``trainer.global_step`` and
everything keyed on it (``max_steps``, the LR schedule, ``gan_start_step``, the checkpoint and EMA
periods, resume) must advance by one per batch, not by two once the discriminator trains.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from barlab.lightning.callbacks.ema import EMA
from barlab.lightning.tokenizer_module import TokenizerModule
from barlab.tokenizer import BinaryFSQ, ConvDecoder, ConvEncoder, PatchDiscriminator, Tokenizer
from barlab.utils.lr_schedules import warmup_cosine_scheduler

MAX_STEPS = 20
GAN_START = 7        # odd: a step counter that jumps by two from here on misses every 5th step
CKPT_EVERY = 5
LR, WARMUP, MIN_RATIO = 1e-3, 3, 0.1


class StepProbe(L.Callback):
    """Per batch: ``global_step`` when it starts, and whether the discriminator's weights moved."""

    def __init__(self):
        self.rows: list[tuple[int, bool]] = []
        self._start = 0
        self._before: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = trainer.global_step
        self._before = [p.detach().clone() for p in pl_module.discriminator.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        after = list(pl_module.discriminator.parameters())
        moved = any(not torch.equal(old, new.detach()) for old, new in zip(self._before, after))
        self.rows.append((self._start, moved))


def gan_module(alternate: bool = False) -> TokenizerModule:
    """A tiny BAR-FSQ tokenizer with a PatchGAN discriminator that joins at ``GAN_START`` (``alternate``:
    the official BAR-FSQ schedule, the two alternating batches)."""
    torch.manual_seed(0)
    tokenizer = Tokenizer(ConvEncoder(3, width=8, depth=1, downsample=4, out_channels=8), BinaryFSQ(8, bits=4),
                          ConvDecoder(3, width=8, depth=1, upsample=4, in_channels=8))
    return TokenizerModule(tokenizer, image_size=16, discriminator=PatchDiscriminator(3, width=8, n_layers=2),
                           gan_weight=0.1, gan_start_step=GAN_START, gan_alternate=alternate,
                           optimizer=partial(torch.optim.AdamW, lr=LR, betas=(0.9, 0.999), weight_decay=0.0),
                           scheduler=partial(warmup_cosine_scheduler, warmup_steps=WARMUP, min_lr_ratio=MIN_RATIO))


def fit(module: TokenizerModule, folder: Path, ckpt_path: str | None = None) -> tuple[L.Trainer, StepProbe, EMA]:
    """Train ``module`` to ``MAX_STEPS`` (from ``ckpt_path`` if given), checkpointing every ``CKPT_EVERY``."""
    gen = torch.Generator().manual_seed(0)
    batches = [{"image": torch.rand(4, 3, 16, 16, generator=gen) * 2 - 1} for _ in range(2 * MAX_STEPS)]
    probe, ema = StepProbe(), EMA(decay=0.9, every_n_steps=3)
    checkpoints = ModelCheckpoint(dirpath=folder, filename="step_{step:06d}", auto_insert_metric_name=False,
                                  every_n_train_steps=CKPT_EVERY, save_top_k=-1)
    trainer = L.Trainer(max_steps=MAX_STEPS, accelerator="cpu", logger=False, limit_val_batches=0,
                        callbacks=[probe, ema, checkpoints], enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=folder)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None), ckpt_path=ckpt_path)
    return trainer, probe, ema


def adam_steps(optimizer_state: dict) -> set[int]:
    """The step count AdamW holds for each parameter of one optimiser's state dict."""
    return {int(s["step"]) for s in optimizer_state["state"].values()}


def end_of_cosine() -> float:
    """The generator's LR after ``MAX_STEPS`` scheduler steps, from the warm-up + cosine formula:
    progress (MAX_STEPS - WARMUP) / (MAX_STEPS - WARMUP) = 1, cos(pi) = -1, so the factor is MIN_RATIO."""
    return LR * (MIN_RATIO + (1 - MIN_RATIO) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi)).item()))


def test_gan_tokenizer_counts_one_step_per_batch(tmp_path):
    module = gan_module()
    trainer, probe, ema = fit(module, tmp_path)

    observed = {
        "global_step": trainer.global_step,
        "batch_starts": [start for start, _ in probe.rows],
        "first_discriminator_step": next(start for start, moved in probe.rows if moved),
        "discriminator_steps": sum(moved for _, moved in probe.rows),
        "final_lr": pytest.approx(module.optimizers()[0].param_groups[0]["lr"], rel=1e-9),
        "ema_updates": ema.num_updates,
        "checkpoints": sorted(p.name for p in tmp_path.glob("step_*.ckpt")),
    }
    expected = {
        "global_step": MAX_STEPS,
        "batch_starts": list(range(MAX_STEPS)),                  # one generator step per batch
        "first_discriminator_step": GAN_START,                   # the discriminator joins exactly there
        "discriminator_steps": MAX_STEPS - GAN_START,
        "final_lr": end_of_cosine(),
        "ema_updates": MAX_STEPS // 3,
        "checkpoints": [f"step_{s:06d}.ckpt" for s in range(CKPT_EVERY, MAX_STEPS + 1, CKPT_EVERY)],
    }
    assert observed == expected


def test_gan_tokenizer_resumes_at_the_generator_step(tmp_path):
    fit(gan_module(), tmp_path / "first")
    middle = tmp_path / "first" / "step_000010.ckpt"
    saved = torch.load(middle, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 10
    assert adam_steps(saved["optimizer_states"][1]) == {10 - GAN_START}

    module = gan_module()
    trainer, probe, _ = fit(module, tmp_path / "second", ckpt_path=str(middle))
    assert [start for start, _ in probe.rows] == list(range(10, MAX_STEPS))
    assert all(moved for _, moved in probe.rows)
    assert trainer.global_step == MAX_STEPS
    final = torch.load(tmp_path / "second" / f"step_{MAX_STEPS:06d}.ckpt", map_location="cpu", weights_only=False)
    assert adam_steps(final["optimizer_states"][0]) == {MAX_STEPS}
    assert adam_steps(final["optimizer_states"][1]) == {MAX_STEPS - GAN_START}
    assert final["lr_schedulers"][0]["last_epoch"] == MAX_STEPS
    assert module.optimizers()[0].param_groups[0]["lr"] == pytest.approx(end_of_cosine(), rel=1e-9)


def ema_names(module: torch.nn.Module) -> set[str]:
    """What the EMA should average in ``module``: its parameters and floating-point buffers, by name."""
    return {n for n, _ in module.named_parameters()} | {n for n, b in module.named_buffers() if b.is_floating_point()}


def test_ema_averages_the_tokenizer_by_name_and_never_the_discriminator(tmp_path):
    module = gan_module()
    _, _, ema = fit(module, tmp_path)
    assert set(ema.shadow) == ema_names(module.tokenizer)                # the tokenizer's weights, by name
    assert any(not torch.equal(ema.shadow[n], p) for n, p in module.tokenizer.named_parameters())
    disc = {n: p.detach().clone() for n, p in module.discriminator.named_parameters()}
    averaged = ema.averaged_state_dict(module)
    assert averaged.keys() == module.tokenizer.state_dict().keys()
    assert all(torch.equal(p, disc[n]) for n, p in module.discriminator.named_parameters())   # swaps left it alone
    saved = torch.load(tmp_path / f"step_{MAX_STEPS:06d}.ckpt", map_location="cpu", weights_only=False)
    (state,) = [v for k, v in saved["callbacks"].items() if k.startswith("EMA")]
    assert set(state["shadow"]) == ema_names(module.tokenizer) and state["num_updates"] == MAX_STEPS // 3


def test_ema_state_is_restored_by_name(tmp_path):
    """A checkpoint's average goes back to the weights of the same name, whatever the registration order."""
    class Two(L.LightningModule):
        def __init__(self, order):
            super().__init__()
            self.net = torch.nn.Module()
            for name in order:
                self.net.add_module(name, torch.nn.Linear(2, 2, bias=False))

        def ema_module(self):
            return self.net

    first = Two(["a", "b"])
    with torch.no_grad():
        first.net.a.weight.fill_(1.0)
        first.net.b.weight.fill_(2.0)
    ema = EMA(decay=0.5)
    ema.on_fit_start(None, first)
    restored, second = EMA(decay=0.5), Two(["b", "a"])
    restored.load_state_dict(ema.state_dict())
    restored.on_fit_start(None, second)
    restored.swap_in(second)
    assert second.net.a.weight.eq(1.0).all() and second.net.b.weight.eq(2.0).all()
    legacy = {**ema.state_dict(), "shadow": [torch.full((2, 2), 1.0), torch.full((2, 2), 2.0)]}  # older checkpoints
    old_style = EMA(decay=0.5)
    old_style.load_state_dict(legacy)
    old_style.on_fit_start(None, first)
    assert old_style.shadow["a.weight"].eq(1.0).all() and old_style.shadow["b.weight"].eq(2.0).all()


def test_gan_smoke_run_trains_max_steps_generator_steps(tmp_path):
    from helpers import call_main, read_json

    run_dir = tmp_path / "run"
    proc = call_main("barlab.train", "experiment=smoke", "stage=tokenizer", "metrics.backend=random",
                     "metrics.rfid.enabled=false", "tokenizer.loss.gan.weight=0.1", "tokenizer.loss.gan.start_step=5",
                     f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_json(run_dir / "results.json")["train_steps"] == 20            # the smoke tokenizer.max_steps
    last = torch.load(run_dir / "checkpoints" / "tokenizer" / "last.ckpt", map_location="cpu", weights_only=False)
    observed = {"global_step": last["global_step"], "lr_schedule_steps": last["lr_schedulers"][0]["last_epoch"],
                "generator_steps": adam_steps(last["optimizer_states"][0]),
                "discriminator_steps": adam_steps(last["optimizer_states"][1])}
    assert observed == {"global_step": 20, "lr_schedule_steps": 20, "generator_steps": {20},
                        "discriminator_steps": {15}}


class TokenizerProbe(StepProbe):
    """StepProbe, and per batch whether the tokenizer's weights moved."""

    def __init__(self):
        super().__init__()
        self.tokenizer_moved: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self._tok = [p.detach().clone() for p in pl_module.tokenizer.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        after = list(pl_module.tokenizer.parameters())
        self.tokenizer_moved.append(any(not torch.equal(a, b.detach()) for a, b in zip(self._tok, after)))


def test_official_alternating_gan_phase_gives_each_batch_to_one_network(tmp_path):
    """gan_alternate (the official BAR-FSQ loop): from GAN_START on, the tokenizer steps at even
    distances from it and the discriminator at odd ones; every batch is one step; each schedule
    advances with its own optimiser only."""
    module = gan_module(alternate=True)
    probe = TokenizerProbe()
    gen = torch.Generator().manual_seed(0)
    batches = [{"image": torch.rand(4, 3, 16, 16, generator=gen) * 2 - 1} for _ in range(MAX_STEPS)]
    trainer = L.Trainer(max_steps=MAX_STEPS, accelerator="cpu", logger=False, limit_val_batches=0, callbacks=[probe],
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    d_turns = list(range(GAN_START + 1, MAX_STEPS, 2))
    assert trainer.global_step == MAX_STEPS
    assert [start for start, _ in probe.rows] == list(range(MAX_STEPS))        # one step per batch
    assert [start for start, moved in probe.rows if moved] == d_turns
    assert [i for i, moved in enumerate(probe.tokenizer_moved) if not moved] == d_turns
    g_sched, d_sched = module.lr_schedulers()
    assert (g_sched.last_epoch, d_sched.last_epoch) == (MAX_STEPS - len(d_turns), len(d_turns))
    assert adam_steps(module.optimizers()[1].optimizer.state_dict()) == {len(d_turns)}
