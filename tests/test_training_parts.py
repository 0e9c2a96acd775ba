"""Training plumbing: EMA, atomic checkpoints, LR schedule, image grids, and that training learns."""

from __future__ import annotations

import math
import os
from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from barlab.lightning.callbacks.ema import EMA
from barlab.runtime.checkpoint_io import AtomicCheckpointIO
from barlab.utils.image_grid import float_to_uint8, make_grid
from barlab.utils.lr_schedules import warmup_cosine, warmup_cosine_scheduler

# optimizer and LR-schedule factories for modules built by hand (the stages build them from the config)
ADAMW = partial(torch.optim.AdamW, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
SCHEDULE = partial(warmup_cosine_scheduler, warmup_steps=5, min_lr_ratio=0.1)


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
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 1.75))
    ema.swap_in(module)
    assert torch.allclose(module.net.weight, torch.full((1, 2), 1.75))
    ema.swap_out(module)
    assert torch.allclose(module.net.weight, torch.full((1, 2), 3.0))
    assert ema.averaged_state_dict(module)["weight"].eq(1.75).all()

    restored = EMA(decay=0.5, warmup=False)
    restored.load_state_dict(ema.state_dict())
    restored.on_fit_start(None, module)
    assert restored.num_updates == 2 and torch.equal(restored.shadow["weight"], ema.shadow["weight"])


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


def test_float_to_uint8_rounds_and_grid_layout():
    x = torch.tensor([-1.0, 1.7 / 127.5 - 1, 0.0, 1.0]).view(1, 1, 2, 2)  # 1.7 rounds to 2, truncates to 1
    assert float_to_uint8(x).flatten().tolist() == [0, 2, 128, 255]
    grid = make_grid(torch.zeros(5, 1, 4, 4), nrow=3, padding=1)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 3) and grid.dtype == np.uint8


def test_a_few_training_steps_lower_the_loss(tmp_path):
    from barlab.lightning.tokenizer_module import TokenizerModule
    from barlab.tokenizer import BinaryFSQ, ConvDecoder, ConvEncoder, Tokenizer

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


# ---------------------------------------------------------------- the generator's training step

class _RecordingHead(nn.Module):
    """A head that records what the training step hands it; its loss is a plain function of cond."""

    def __init__(self, cond_dim, bits_per_step):
        super().__init__()
        self.cond_dim, self.bits_per_step = cond_dim, bits_per_step
        self.scale = nn.Parameter(torch.ones(()))
        self.calls = []

    def loss(self, cond, bits):
        from barlab.generator.heads.base import HeadOutput

        self.calls.append((cond.detach().clone(), bits.clone()))
        return HeadOutput(loss=(self.scale * cond).square().mean(), bit_accuracy=torch.tensor(0.5))


def _generator_module(p=1, grid=(4, 4), k=2, label_drop=0.1, classes=5):
    from barlab.generator import ARBackbone
    from barlab.lightning.generator_module import GeneratorModule

    torch.manual_seed(0)
    steps = (grid[0] // p) * (grid[1] // p)
    backbone = ARBackbone(k * p * p, (grid[0] // p, grid[1] // p), classes, width=16, depth=1, heads=2, cond_dim=8,
                          class_repeat=1)
    head = _RecordingHead(8, k * p * p)
    module = GeneratorModule(backbone, head, nn.Identity(), grid=grid, token_shuffle=p, label_drop=label_drop,
                             optimizer=ADAMW, scheduler=SCHEDULE)
    return module, steps


def test_generator_targets_are_the_bits_in_the_sampled_order():
    module, steps = _generator_module()
    gen = torch.Generator().manual_seed(1)
    bits = torch.randint(0, 2, (3, steps, 2), generator=gen).float()
    labels = torch.tensor([0, 2, 4])
    order = torch.stack([torch.arange(steps).flip(0), torch.randperm(steps, generator=gen), torch.arange(steps)])
    module._loss({"bits": bits, "label": labels}, order, labels)
    cond, targets = module.head.calls[-1]
    # row b, position j of the flattened targets is token order[b, j] of row b
    by_hand = torch.stack([torch.stack([bits[b, int(order[b, j])] for j in range(steps)]) for b in range(3)])
    assert torch.equal(targets, by_hand.reshape(-1, 2))
    with torch.no_grad():
        torch.testing.assert_close(cond, module.backbone(bits, labels, order).reshape(-1, 8))


def test_generator_step_shuffles_p_by_p_tokens_into_one_step():
    """p = 2 on a 4x4 grid of 4-bit tokens whose bits spell their raster index t: AR step (i, j) holds
    tokens (2i + a, 2j + b) for (a, b) in raster order, each with its own 4 bits, one after the other."""
    module, steps = _generator_module(p=2, k=4)
    assert steps == 4
    tokens = torch.arange(16)
    bits = torch.stack([(tokens >> j) & 1 for j in range(4)], dim=-1).float()[None]   # token t -> the bits of t
    bits = torch.cat([bits, 1 - bits])                                                # a second row, complemented
    module._loss({"bits": bits, "label": torch.tensor([0, 1])}, None, torch.tensor([0, 1]))
    _, targets = module.head.calls[-1]
    targets = targets.reshape(2, 4, 16)
    for i in range(2):
        for j in range(2):
            members = [(2 * i + a) * 4 + (2 * j + b) for a in range(2) for b in range(2)]
            want = torch.cat([torch.tensor([(t >> q) & 1 for q in range(4)]).float() for t in members])
            assert torch.equal(targets[0, i * 2 + j], want), (i, j)
            assert torch.equal(targets[1, i * 2 + j], 1 - want)


def test_training_step_drops_labels_at_rate_p_and_uses_random_orders_early(monkeypatch):
    module, steps = _generator_module(label_drop=0.1)
    seen = []
    real_forward = module.backbone.forward

    def spy(bits, labels, order=None):
        seen.append((labels.clone(), order.clone(), bits.clone()))
        return real_forward(bits, labels, order)

    monkeypatch.setattr(module.backbone, "forward", spy)
    monkeypatch.setattr(module, "log_dict", lambda *a, **k: None)   # logging needs a real Trainer
    monkeypatch.setattr(module, "log", lambda *a, **k: None)

    class _AtStepZero:
        max_steps, global_step = 1000, 0

    module._trainer = _AtStepZero()
    torch.manual_seed(0)
    n, rounds = 500, 40
    labels = torch.arange(n) % 5
    gen = torch.Generator().manual_seed(3)
    for i in range(rounds):
        bits = torch.randint(0, 2, (n, steps, 2), generator=gen).float()
        module.training_step({"bits": bits, "label": labels}, i)
        fed, order, _ = seen[-1]
        _, targets = module.head.calls[-1]
        kept = fed != 5
        assert torch.equal(fed[kept], labels[kept])           # undropped labels pass unchanged
        # step 0 of 1000: random_ratio = 1, so every row is a permutation, and the targets follow it
        assert torch.equal(order.sort(dim=1).values, torch.arange(steps).expand(n, steps))
        assert torch.equal(targets.reshape(n, steps, 2), bits.gather(1, order[..., None].expand(-1, -1, 2)))
    dropped = torch.stack([(s[0] == 5).float().mean() for s in seen]).mean().item()
    # 20,000 Bernoulli(0.1) draws: std 0.0021, so +-0.01 is ~5 sigma
    assert abs(dropped - 0.1) < 0.01, dropped
    not_raster = torch.cat([(s[1] != torch.arange(steps)).any(1) for s in seen]).float().mean().item()
    assert not_raster > 0.9  # a uniform permutation of 16 is the identity with probability 1/16!


# ---------------------------------------------------------------- the tokenizer's validation numbers

class _EchoTokenizer(nn.Module):
    """Reconstructs x as ``sign * x`` and reports hand-made bits (one (B, 2, 2, 3) tensor per batch, in turn)."""

    def __init__(self, sign, bits):
        super().__init__()
        from types import SimpleNamespace

        self.sign, self.bits, self.calls = sign, bits, 0
        self.quantizer = SimpleNamespace(bits_per_token=3, is_discrete=True)
        self.anchor = nn.Parameter(torch.zeros(()))  # something for the optimiser

    def bits_per_image(self, size):
        return 4 * 3

    def forward(self, images):
        from barlab.tokenizer.quantizers.base import QuantizerOutput

        bits = self.bits[self.calls % len(self.bits)]
        self.calls += 1
        return self.sign * images + 0 * self.anchor, QuantizerOutput(latent=images, bits=bits, codes=bits.long(),
                                                                     loss=torch.zeros(()), metrics={})


def _validate(sign, tmp_path):
    from barlab.lightning.tokenizer_module import TokenizerModule

    images = [torch.full((2, 1, 8, 8), 0.5), torch.full((2, 1, 8, 8), -0.2)]
    off = torch.zeros(2, 2, 3)
    bits = [torch.tensor([1.0, 0.0, 1.0]).expand(2, 2, 2, 3),                         # every token 101
            torch.stack([torch.tensor([1.0, 1.0, 0.0]).expand(2, 2, 3), off])]          # 110 and 000
    module = TokenizerModule(_EchoTokenizer(sign, bits), image_size=8, optimizer=ADAMW, scheduler=SCHEDULE)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    batches = [{"image": x, "label": torch.zeros(2, dtype=torch.long)} for x in images]
    out = trainer.validate(module, dataloaders=torch.utils.data.DataLoader(batches, batch_size=None),
                           verbose=False)[0]
    # one tokenizer forward per batch gives the reconstruction and the bits: the bit statistics below are of the
    # tokens each batch's own forward produced, in order
    assert module.tokenizer.calls == len(batches)
    return out, module


def test_tokenizer_validation_ssim_psnr_and_bit_usage_by_hand(tmp_path):
    out, module = _validate(1.0, tmp_path)
    assert out["val/ssim"] == pytest.approx(1.0, abs=1e-6)               # identical images
    # usage over the 16 tokens: bit 0 set in 8 + 4, bit 1 in 4, bit 2 in 8
    assert module.last_bit_stats["usage"] == pytest.approx([0.75, 0.25, 0.5])
    h = lambda p: -(p * math.log2(p) + (1 - p) * math.log2(1 - p))  # noqa: E731
    assert module.last_bit_stats["entropy"] == pytest.approx([h(0.75), h(0.75), 1.0])
    assert out["val/bits_usage_min"] == pytest.approx(0.25) and out["val/bits_usage_max"] == pytest.approx(0.75)

    out, _ = _validate(-1.0, tmp_path)                                    # each image against its negative
    # constant images a, b in [0, 1]: no variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 1)^2
    c1 = 1e-4
    ssim = lambda a, b: (2 * a * b + c1) / (a * a + b * b + c1)  # noqa: E731
    # v = 0.5 -> (0.75, 0.25); v = -0.2 -> (0.4, 0.6)
    expected_ssim = (ssim(0.75, 0.25) + ssim(0.4, 0.6)) / 2
    # (torchmetrics computes the local variances in float32: ~4e-7 of round-off against C2 = 9e-4 moves SSIM ~5e-4)
    assert out["val/ssim"] == pytest.approx(expected_ssim, rel=1e-3)
    # PSNR per image, data range 1: 10 log10(1 / (2a - 1)^2), averaged over the 4 images
    expected_psnr = (10 * math.log10(1 / 0.25) + 10 * math.log10(1 / 0.04)) / 2
    assert out["val/psnr"] == pytest.approx(expected_psnr, rel=1e-5)


def test_tokenizer_bit_statistics_cover_only_the_latest_validation(tmp_path):
    """A second validation whose tokens are all 000 reports usage 0 for every bit: the accumulator is
    reset at each validation's start (without the reset it would report the two runs' mean)."""
    _, module = _validate(1.0, tmp_path)
    assert module.last_bit_stats["usage"] == pytest.approx([0.75, 0.25, 0.5])
    module.tokenizer.bits = [torch.zeros(2, 2, 2, 3)]
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    batches = [{"image": torch.full((2, 1, 8, 8), 0.5), "label": torch.zeros(2, dtype=torch.long)}]
    out = trainer.validate(module, dataloaders=torch.utils.data.DataLoader(batches, batch_size=None), verbose=False)[0]
    assert module.last_bit_stats["usage"] == [0.0, 0.0, 0.0]
    assert module.last_bit_stats["entropy"] == [0.0, 0.0, 0.0] and out["val/bits_usage_max"] == 0.0
