"""Training plumbing: EMA, atomic checkpoints, LR schedule, image grids, and that training learns."""

from __future__ import annotations

import os
from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from barlab.training.callbacks.ema import EMA
from barlab.training.checkpoint_io import AtomicCheckpointIO
from barlab.training.schedules import warmup_cosine, warmup_cosine_scheduler
from barlab.utils.images import make_grid, to_uint8


class _Holder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(2, 1, bias=False)

    def ema_module(self):
        return self.net


class _FakeTrainer:
    global_step = 0


def test_ema_follows_the_formula_and_swaps_weights():
    module = _Holder()
    with torch.no_grad():
        module.net.weight.fill_(0.0)
    ema = EMA(decay=0.5, warmup=False)
    ema.on_fit_start(None, module)
    with torch.no_grad():
        module.net.weight.fill_(1.0)
    ema.on_train_batch_end(_FakeTrainer(), module, None, None, 0)      # 0.5*0 + 0.5*1
    with torch.no_grad():
        module.net.weight.fill_(3.0)
    ema.on_train_batch_end(_FakeTrainer(), module, None, None, 1)      # 0.5*0.5 + 0.5*3
    assert torch.allclose(ema.shadow[0], torch.full((1, 2), 1.75))
    ema.swap_in(module)
    assert torch.allclose(module.net.weight, torch.full((1, 2), 1.75))
    ema.swap_out(module)
    assert torch.allclose(module.net.weight, torch.full((1, 2), 3.0))
    assert ema.averaged_state_dict(module)["weight"].eq(1.75).all()

    restored = EMA(decay=0.5, warmup=False)
    restored.load_state_dict(ema.state_dict())
    restored.on_fit_start(None, module)
    assert restored.num_updates == 2 and torch.equal(restored.shadow[0], ema.shadow[0])


def test_ema_warmup_decay_starts_small():
    ema = EMA(decay=0.999, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)
    ema.num_updates = 10_000
    assert ema.current_decay() == pytest.approx(0.999)


def test_atomic_checkpoint_keeps_the_old_file_when_saving_fails(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, str(path))

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"step": 2, "bad": Unpicklable()}, str(path))
    assert torch.load(path, weights_only=False)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt"]   # no temp file left behind


def test_warmup_cosine_schedule_values():
    assert warmup_cosine(0, 10, 110, 0.1) == pytest.approx(1 / 11)
    assert warmup_cosine(10, 10, 110, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110, 0.1) == pytest.approx(0.55)
    assert warmup_cosine(500, 10, 110, 0.1) == pytest.approx(0.1)


def test_to_uint8_rounds_and_grid_layout():
    x = torch.tensor([-1.0, 1.7 / 127.5 - 1, 0.0, 1.0]).view(1, 1, 2, 2)  # 1.7 rounds to 2, truncates to 1
    assert to_uint8(x).flatten().tolist() == [0, 2, 128, 255]
    grid = make_grid(torch.zeros(5, 1, 4, 4), nrow=3, padding=1)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 3) and grid.dtype == np.uint8


def test_a_few_training_steps_lower_the_loss(tmp_path):
    from barlab.tokenizer import BinaryFSQ, ConvDecoder, ConvEncoder, Tokenizer
    from barlab.training.tokenizer_module import TokenizerModule

    torch.manual_seed(0)
    tokenizer = Tokenizer(ConvEncoder(3, width=16, depth=1, downsample=4, out_channels=16),
                          BinaryFSQ(16, bits=12),
                          ConvDecoder(3, width=16, depth=1, upsample=4, in_channels=16))
    module = TokenizerModule(tokenizer, image_size=16,
                             optimizer=partial(torch.optim.AdamW, lr=3e-3, betas=(0.9, 0.999), weight_decay=0.0),
                             scheduler=partial(warmup_cosine_scheduler, warmup_steps=5, min_lr_ratio=0.1))
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(32, 3, 16, 16, generator=gen) * 2 - 1
    images = torch.nn.functional.avg_pool2d(images, 3, 1, 1)  # smooth, learnable images
    batches = [{"image": images[i:i + 8], "label": torch.zeros(8, dtype=torch.long)} for i in range(0, 32, 8)]

    def val_loss() -> float:
        module.eval()
        with torch.no_grad():
            return float(sum(module.recon_loss(module.tokenizer(b["image"])[0], b["image"])["loss"] for b in batches))

    before = val_loss()
    module.train()
    trainer = L.Trainer(max_steps=60, accelerator="cpu", logger=False, enable_checkpointing=False, limit_val_batches=0,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches * 15, batch_size=None))
    after = val_loss()
    assert trainer.global_step == 60
    assert after < 0.6 * before, (before, after)
