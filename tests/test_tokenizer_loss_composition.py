"""The TokenizerModule's training step, redone by hand on tiny hand-made modules under a real Trainer:

- the autoencoder loss is ``w1·L1 + w2·L2 + wp·perceptual + quantizer loss (+ wg·hinge-G from gan_start_step on)``
  and the tokenizer's update is exactly SGD on that loss's gradient, clipped to ``grad_clip`` (norm);
- the discriminator step sees the real images and a *detached* reconstruction: its update is SGD on the
  hinge-D loss alone, and no gradient of the discriminator loss reaches the tokenizer.
"""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from barlab.lightning.tokenizer_module import TokenizerModule
from barlab.tokenizer.quantizers.base import QuantizerOutput

LR, W1, W2, WP, WG, GAN_START = 0.1, 0.3, 0.7, 0.25, 0.4, 1


class AffineTokenizer(nn.Module):
    """recon = a·x + b; quantizer loss = c² (a stand-in for a KL term)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (nn.Parameter(torch.tensor(v)) for v in (0.8, 0.1, 0.5))
        self.quantizer = SimpleNamespace(bits_per_token=2, is_discrete=False)

    def bits_per_image(self, size):
        return 8

    def forward(self, images):
        return self.a * images + self.b, QuantizerOutput(latent=images, bits=None, codes=None, loss=self.c ** 2,
                                                         metrics={})


class CubePerceptual(nn.Module):
    """A frozen 'perceptual' distance with a known value: mean |x − y|³."""

    def forward(self, x, y):
        return (x - y).abs().pow(3).mean()


class TinyDiscriminator(nn.Module):
    """logits (B, 1) = u·mean(x) + v·mean(x²) + w; records what it is fed."""

    def __init__(self):
        super().__init__()
        self.u, self.v, self.w = (nn.Parameter(torch.tensor(t)) for t in (0.3, -0.2, 0.05))
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x)
        return (self.u * x.mean(dim=(1, 2, 3)) + self.v * x.pow(2).mean(dim=(1, 2, 3)) + self.w)[:, None]


def logits(params: dict, x: torch.Tensor) -> torch.Tensor:
    return (params["u"] * x.mean(dim=(1, 2, 3)) + params["v"] * x.pow(2).mean(dim=(1, 2, 3)) + params["w"])[:, None]


class Recorder(L.Callback):
    """Per batch: the step, both modules' weights before it, the returned loss, the weights and grads after."""

    def __init__(self):
        self.rows = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        pl_module.discriminator.inputs.clear()
        self.rows.append({"step": trainer.global_step, "image": batch["image"].clone(),
                          "tok": {n: p.detach().clone() for n, p in pl_module.tokenizer.named_parameters()},
                          "disc": {n: p.detach().clone() for n, p in pl_module.discriminator.named_parameters()}})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        row = self.rows[-1]
        row["loss"] = float(outputs["loss"] if isinstance(outputs, dict) else outputs)
        row["tok_after"] = {n: p.detach().clone() for n, p in pl_module.tokenizer.named_parameters()}
        row["tok_grad"] = {n: p.grad.clone() for n, p in pl_module.tokenizer.named_parameters()}
        row["disc_after"] = {n: p.detach().clone() for n, p in pl_module.discriminator.named_parameters()}
        row["disc_inputs"] = [(x.requires_grad, x.detach().clone()) for x in pl_module.discriminator.inputs]


def train(grad_clip: float, steps: int = 3):
    module = TokenizerModule(AffineTokenizer(), image_size=4, l1_weight=W1, l2_weight=W2, perceptual=CubePerceptual(),
                             perceptual_weight=WP, discriminator=TinyDiscriminator(), gan_weight=WG,
                             gan_start_step=GAN_START, grad_clip=grad_clip, optimizer=partial(torch.optim.SGD, lr=LR),
                             scheduler=lambda opt, total_steps: LambdaLR(opt, lambda step: 1.0))
    gen = torch.Generator().manual_seed(0)
    batches = [{"image": torch.rand(3, 1, 4, 4, generator=gen) * 2 - 1} for _ in range(steps)]
    recorder = Recorder()
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[recorder])
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    assert trainer.global_step == steps
    return recorder.rows


def generator_loss(tok: dict, disc: dict, x: torch.Tensor, gan: bool) -> torch.Tensor:
    """The documented composition, written out."""
    recon = tok["a"] * x + tok["b"]
    loss = W1 * (recon - x).abs().mean() + W2 * (recon - x).pow(2).mean()
    loss = loss + WP * (recon - x).abs().pow(3).mean() + tok["c"] ** 2
    if gan:
        loss = loss + WG * -logits(disc, recon).mean()
    return loss


def clipped(grads: dict, clip: float) -> dict:
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
    scale = min(1.0, clip / (float(norm) + 1e-6))
    return {n: g * scale for n, g in grads.items()}


def hand_step(row: dict, grad_clip: float):
    """(loss, clipped tokenizer grads, expected tokenizer weights, expected discriminator weights)."""
    x, gan = row["image"], row["step"] >= GAN_START
    tok = {n: p.clone().requires_grad_(True) for n, p in row["tok"].items()}
    disc = {n: p.clone() for n, p in row["disc"].items()}
    loss = generator_loss(tok, disc, x, gan)
    grads = clipped(dict(zip(tok, torch.autograd.grad(loss, list(tok.values())))), grad_clip)
    tok_after = {n: row["tok"][n] - LR * grads[n] for n in tok}
    disc_after = dict(row["disc"])
    if gan:
        recon = (row["tok"]["a"] * x + row["tok"]["b"]).detach()              # the reconstruction before the step
        d = {n: p.clone().requires_grad_(True) for n, p in row["disc"].items()}
        d_loss = 0.5 * (torch.relu(1 - logits(d, x)).mean() + torch.relu(1 + logits(d, recon)).mean())
        d_grads = clipped(dict(zip(d, torch.autograd.grad(d_loss, list(d.values())))), grad_clip)
        disc_after = {n: row["disc"][n] - LR * d_grads[n] for n in d}
    return float(loss.detach()), grads, tok_after, disc_after


def assert_close_dicts(got: dict, want: dict, what: str):
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7,
                                   msg=lambda m, n=name: f"{what}.{n}: {m}")


def test_generator_loss_is_the_weighted_sum_and_the_gan_term_joins_at_its_start_step():
    rows = train(grad_clip=1e6)
    assert [r["step"] for r in rows] == [0, 1, 2]
    for row in rows:
        loss, grads, tok_after, disc_after = hand_step(row, 1e6)
        assert row["loss"] == pytest.approx(loss, rel=1e-6), row["step"]
        # without the GAN term the loss would differ by wg·hinge-G: make sure that term is not negligible
        no_gan = float(generator_loss(row["tok"], row["disc"], row["image"], gan=False))
        if row["step"] >= GAN_START:
            assert abs(loss - no_gan) > 1e-3
        else:
            assert loss == no_gan
        assert_close_dicts(row["tok_grad"], grads, "tokenizer grad")      # nothing else reached the tokenizer
        assert_close_dicts(row["tok_after"], tok_after, "tokenizer")
        assert_close_dicts(row["disc_after"], disc_after, "discriminator")
    assert all(torch.equal(rows[0]["disc_after"][n], p) for n, p in rows[0]["disc"].items())  # no D step before the GAN


def test_discriminator_step_is_fed_the_real_images_and_a_detached_reconstruction():
    rows = train(grad_clip=1e6)
    assert rows[0]["disc_inputs"] == []                                 # GAN off at step 0: never called
    for row in rows[1:]:
        x = row["image"]
        recon = row["tok"]["a"] * x + row["tok"]["b"]
        (g_grad, g_in), (real_grad, real_in), (fake_grad, fake_in) = row["disc_inputs"]
        assert g_grad and torch.allclose(g_in, recon)                       # the G term backpropagates into recon
        assert not real_grad and torch.equal(real_in, x)
        assert not fake_grad and torch.allclose(fake_in, recon)            # detached: no path back to the tokenizer


def test_gradient_norm_clipping_is_applied_to_both_optimisers():
    clip = 0.02
    rows = train(grad_clip=clip)
    for row in rows:
        loss, grads, tok_after, disc_after = hand_step(row, clip)
        norm = torch.sqrt(sum(g.pow(2).sum() for g in row["tok_grad"].values()))
        assert float(norm) == pytest.approx(clip, rel=1e-4)                 # the raw gradient is far larger
        assert_close_dicts(row["tok_grad"], grads, "clipped tokenizer grad")
        assert_close_dicts(row["tok_after"], tok_after, "tokenizer")
        assert_close_dicts(row["disc_after"], disc_after, "discriminator")
        if row["step"] >= GAN_START:
            moved = torch.sqrt(sum((row["disc_after"][n] - row["disc"][n]).pow(2).sum() for n in row["disc"]))
            assert float(moved) == pytest.approx(LR * clip, rel=1e-4)
