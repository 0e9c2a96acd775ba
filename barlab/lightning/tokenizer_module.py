"""LightningModule that trains a tokenizer (BAR-FSQ, FSQ or a continuous KL latent).

One training step, written out (manual optimisation, because the GAN needs two optimisers):

1. ``recon, q = tokenizer(x)``; loss = 0.1·L1 + 1.0·L2 (+ perceptual) (+ quantizer aux, e.g. KL)
   (+ distill_weight·MSE(decoder's distillation head, frozen teacher's features))
   (+ gram_weight·Gram loss) (+ gan_weight·hinge generator loss once ``global_step >= gan_start_step``)
2. backward, clip the gradient norm, AdamW step, learning-rate schedule step
3. if the GAN is on (decided once per batch, before step 2): one hinge step of the discriminator
   on (x, recon.detach()) — with ``gan_quantize_fake``, the reconstruction clamped to [-1, 1] and
   rounded to 8 bits first, as the official BAR-FSQ — not counted as a training step (see
   ``step_uncounted``)

With ``gan_alternate`` (the official BAR-FSQ loop) the GAN phase alternates instead: from
``gan_start_step`` on, the tokenizer steps on the batches at an even distance from it and the
discriminator (on a reconstruction made without gradients, in eval mode) on the others, each batch
one counted training step, each optimiser's schedule stepped with its own optimiser.

The frozen networks the losses use (perceptual, Gram, the distillation teacher) come from their own
files: they are never trained and never written to a checkpoint (see ``FROZEN_LOSS_NETS``). The
encoder's trainable parameters can take a multiple of the learning rate (``encoder_lr_mult``,
BAR-FSQ: 0.1); frozen parameters are given to no optimiser.

So ``global_step`` counts generator (autoencoder) steps with the GAN on or off: ``tokenizer.max_steps``,
the LR schedule, ``gan_start_step``, the EMA and checkpoint periods and resume all mean those.

Validation logs PSNR and SSIM on [0, 1] images, per-bit usage and entropy of the codes (never a
2^k histogram) and the bits per image.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import nn
from torch.nn import functional as F
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from barlab.lightning.optim import OptimizerFactory
from barlab.runtime.checkpoint_checks import IDENTITY_KEY, tokenizer_identity
from barlab.tokenizer.bit_stats import BitStatsAccumulator, bit_statistics, usage_summary
from barlab.tokenizer.dino_discriminator import discriminator_fake_input
from barlab.tokenizer.discriminator import hinge_d_loss, hinge_g_loss
from barlab.tokenizer.losses import ReconstructionLoss
from barlab.tokenizer.tokenizer import Tokenizer
from barlab.utils.lr_schedules import SchedulerFactory, planned_steps

# Attributes holding frozen loss networks: loaded from their own files, so left out of checkpoints.
FROZEN_LOSS_NETS = ("perceptual", "gram", "teacher")


class TokenizerModule(L.LightningModule):
    """Wires a :class:`Tokenizer` to its losses and optimisers.

    tokenizer: encoder + quantizer + decoder (plain nn.Modules).
    image_size: side of the square training images (for the bit budget).
    l1_weight, l2_weight: reconstruction weights (paper: 0.1, 1.0).
    perceptual: an optional frozen perceptual loss module, weighted by ``perceptual_weight``.
    discriminator: an optional discriminator; its hinge loss enters with ``gan_weight`` from
        ``gan_start_step`` on.
    optimizer: ``params -> optimiser`` (the ``tokenizer.optim`` node, a ``_partial_`` AdamW), used
        for the tokenizer and, with ``disc_lr`` if given, for the discriminator.
    scheduler: ``(optimiser, total_steps) -> LR scheduler`` (the ``tokenizer.scheduler`` node), one
        per optimiser, stepped every training step.
    grad_clip: gradient-norm clip of both optimisers.
    teacher: an optional frozen network giving distillation targets (B, L, D_t) for the decoder's
        distillation head (``SigLIP2Teacher``), weighted by ``distill_weight``.
    gram: an optional frozen Gram-matrix loss module, weighted by ``gram_weight``.
    encoder_lr_mult: learning-rate multiple of the encoder's trainable parameters.
    gan_quantize_fake: the discriminator's step sees reconstructions clamped and rounded to 8 bits.
    gan_alternate: once the GAN is on, the official BAR-FSQ schedule: batches alternate between the
        tokenizer's step and the discriminator's step, and each counts as a training step.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        image_size: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        l1_weight: float = 0.1,
        l2_weight: float = 1.0,
        perceptual: nn.Module | None = None,
        perceptual_weight: float = 0.0,
        discriminator: nn.Module | None = None,
        gan_weight: float = 0.0,
        gan_start_step: int = 0,
        grad_clip: float = 1.0,
        disc_lr: float | None = None,
        teacher: nn.Module | None = None,
        distill_weight: float = 0.0,
        gram: nn.Module | None = None,
        gram_weight: float = 0.0,
        encoder_lr_mult: float = 1.0,
        gan_quantize_fake: bool = False,
        gan_alternate: bool = False,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.recon_loss = ReconstructionLoss(l1_weight=l1_weight, l2_weight=l2_weight)
        self.perceptual = perceptual
        self.perceptual_weight = perceptual_weight
        self.discriminator = discriminator
        self.gan_weight = gan_weight
        self.gan_start_step = gan_start_step
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.grad_clip = grad_clip
        self.disc_lr = disc_lr
        self.teacher = teacher if distill_weight > 0 else None
        self.distill_weight = distill_weight
        self.gram = gram if gram_weight > 0 else None
        self.gram_weight = gram_weight
        self.encoder_lr_mult = encoder_lr_mult
        self.gan_quantize_fake = gan_quantize_fake
        self.gan_alternate = gan_alternate
        self.register_state_dict_post_hook(_drop_frozen_loss_nets)
        self.register_load_state_dict_pre_hook(_keep_frozen_loss_nets)

        self.bits_per_image = tokenizer.bits_per_image(image_size)
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        k = tokenizer.quantizer.bits_per_token if tokenizer.quantizer.is_discrete else 0
        self.val_bits = BitStatsAccumulator(k) if k else None  # only fed when the quantizer yields bits
        self.last_bit_stats: dict[str, Any] = {}

    # ------------------------------------------------------------------ helpers
    def ema_module(self) -> nn.Module:
        """The weights the EMA callback averages: the tokenizer only."""
        return self.tokenizer

    def checkpoint_identity(self) -> dict[str, Any]:
        """What this tokenizer is, keyed by knob; stored in every checkpoint, checked before resuming."""
        return {"stage": "tokenizer", **tokenizer_identity(self.tokenizer), "data.image_size": int(self.image_size)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[IDENTITY_KEY] = self.checkpoint_identity()

    @property
    def gan_active(self) -> bool:
        return self.discriminator is not None and self.gan_weight > 0 and self.global_step >= self.gan_start_step

    def step_uncounted(self, optimizer: LightningOptimizer) -> None:
        """Step ``optimizer`` without counting a training step.

        With manual optimisation Lightning counts every ``LightningOptimizer.step()`` toward
        ``trainer.global_step`` (the wrapper's step hooks feed the loop's progress counter), so a
        discriminator stepped that way would count each batch twice. The step goes through the
        strategy instead, with the wrapped torch optimiser: the precision plugin (AMP gradient
        scaling) and the ``on_before_optimizer_step`` hooks still run; only the counter does not move.
        """
        self.trainer.strategy.optimizer_step(optimizer.optimizer, closure=lambda: None, model=self)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] → reconstructions clamped to [-1, 1]."""
        recon, _ = self.tokenizer(images.to(self.device))
        return recon.float().clamp(-1, 1)

    # ------------------------------------------------------------------ training
    def autoencoder_loss(self, images: torch.Tensor, gan_on: bool) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """images (B, C, H, W) in [-1, 1] -> (the tokenizer's loss, a scalar; its terms by log name;
        the reconstruction (B, C, H, W)). Every term whose weight is 0 is skipped; ``gan_on`` adds the
        generator's hinge term."""
        if self.teacher is not None:
            recon, q, prediction = self.tokenizer.forward_with_distillation(images)
        else:
            recon, q = self.tokenizer(images)
        terms = self.recon_loss(recon.float(), images.float())
        loss = terms["loss"] + q.loss
        logs = {"train/l1": terms["l1"], "train/l2": terms["l2"]}
        for name, value in q.metrics.items():
            logs[f"train/{name}"] = value
        if self.perceptual is not None and self.perceptual_weight > 0:
            perceptual = self.perceptual(recon.float(), images.float())
            loss = loss + self.perceptual_weight * perceptual
            logs["train/perceptual"] = perceptual
        if self.teacher is not None:
            with torch.no_grad():
                target = self.teacher(images)
            distill = F.mse_loss(prediction.float(), target.float())
            loss = loss + self.distill_weight * distill
            logs["train/distill"] = distill
        if self.gram is not None:
            gram = self.gram(recon.float(), images.float())
            loss = loss + self.gram_weight * gram
            logs["train/gram"] = gram
        if gan_on:
            g_loss = hinge_g_loss(self.discriminator(recon))
            loss = loss + self.gan_weight * g_loss
            logs["train/gan_g"] = g_loss
        return loss, logs, recon

    def discriminator_loss(self, images: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """The discriminator's hinge loss on real ``images`` and the (detached) reconstructions, a scalar."""
        fake = discriminator_fake_input(recon) if self.gan_quantize_fake else recon.detach()
        return hinge_d_loss(self.discriminator(images), self.discriminator(fake))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        optimizers = self.optimizers()
        opt_g, opt_d = (optimizers if isinstance(optimizers, list) else (optimizers, None))
        schedulers = self.lr_schedulers()
        schedulers = schedulers if isinstance(schedulers, list) else [schedulers]

        gan_on = self.gan_active  # once per batch: the generator's step below moves global_step on
        if gan_on and self.gan_alternate and opt_d is not None and (self.global_step - self.gan_start_step) % 2:
            return self.alternate_discriminator_step(images, opt_d, schedulers[1])
        loss, logs, recon = self.autoencoder_loss(images, gan_on)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        self.clip_gradients(opt_g, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
        opt_g.step()
        schedulers[0].step()

        if gan_on and opt_d is not None and not self.gan_alternate:
            d_loss = self.discriminator_loss(images, recon)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            self.clip_gradients(opt_d, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
            self.step_uncounted(opt_d)
            schedulers[1].step()
            logs["train/disc"] = d_loss

        if "skipped" in batch:
            logs["data/skipped"] = torch.as_tensor(batch["skipped"], dtype=torch.float32).sum()
        logs["train/loss"] = loss
        logs["lr"] = torch.tensor(opt_g.param_groups[-1]["lr"])  # the base rate (the encoder's group is first)
        n = images.shape[0]
        # means over ranks (each rank trains on its own batch)
        self.log_dict({k: v.detach().float() for k, v in logs.items()}, prog_bar=False, on_step=True, batch_size=n,
                      sync_dist=True)
        self.log("loss", loss.detach().float(), prog_bar=True, logger=False, batch_size=n)
        return loss.detach()

    def alternate_discriminator_step(self, images: torch.Tensor, opt_d, scheduler) -> torch.Tensor:
        """The official GAN phase's discriminator batch: reconstruct without gradients (tokenizer in eval
        mode), one hinge step of the discriminator, counted as a training step; the tokenizer rests."""
        with torch.no_grad():
            self.tokenizer.eval()
            recon, _ = self.tokenizer(images)
            self.tokenizer.train()
        d_loss = self.discriminator_loss(images, recon)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        self.clip_gradients(opt_d, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
        opt_d.step()  # through Lightning: counts as this batch's training step
        scheduler.step()
        self.log("train/disc", d_loss.detach().float(), on_step=True, batch_size=images.shape[0], sync_dist=True)
        return d_loss.detach()

    # ---------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        if self.val_bits is not None:
            self.val_bits.reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        images = batch["image"]
        recon, q = self.tokenizer(images)
        recon = recon.float()
        terms = self.recon_loss(recon, images.float())
        target01 = (images.float() + 1) / 2
        recon01 = (recon.clamp(-1, 1) + 1) / 2
        self.val_psnr(recon01, target01)
        self.val_ssim(recon01, target01)
        if self.val_bits is not None and q.bits is not None:
            self.val_bits.update(q.bits.detach())
            unique = bit_statistics(q.bits.detach())["unique_fraction"]
            self.log("val/bits_unique_fraction", unique, on_epoch=True, sync_dist=True, batch_size=images.shape[0])
        n = images.shape[0]
        self.log("val/loss", terms["loss"], on_epoch=True, sync_dist=True, prog_bar=True, batch_size=n)
        self.log("val/l1", terms["l1"], on_epoch=True, sync_dist=True, batch_size=n)
        self.log("val/l2", terms["l2"], on_epoch=True, sync_dist=True, batch_size=n)
        self.log("val/psnr", self.val_psnr, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("val/ssim", self.val_ssim, on_epoch=True, batch_size=n)

    def on_validation_epoch_end(self) -> None:
        self.log("val/bits_per_image", float(self.bits_per_image))
        if self.val_bits is None or self.val_bits.ones is None:
            return
        ones = self.val_bits.ones.to(self.device)
        tokens = torch.tensor(self.val_bits.num_tokens, device=self.device)
        if self.trainer.world_size > 1:  # per-bit counts are additive across ranks
            ones = self.all_gather(ones).reshape(-1, ones.shape[-1]).sum(0)
            tokens = self.all_gather(tokens).sum()
        stats = usage_summary(ones.double() / tokens.double(), 0.0, int(tokens))
        self.last_bit_stats = {"usage": stats["usage"].tolist(), "entropy": stats["entropy"].tolist()}
        self.log("val/bits_mean_entropy", float(stats["mean_entropy"]))
        self.log("val/bits_min_entropy", float(stats["min_entropy"]))
        self.log("val/bits_usage_min", float(stats["usage"].min()))
        self.log("val/bits_usage_max", float(stats["usage"].max()))

    # -------------------------------------------------------------- optimisers
    def build_optimizers(self) -> list[torch.optim.Optimizer]:
        """The tokenizer's optimiser (the encoder's group at ``encoder_lr_mult`` times the rate) and, with
        the GAN on, the discriminator's."""
        optimizers = [self.optimizer(self.tokenizer_param_groups())]
        if len(optimizers[0].param_groups) == 2:  # the encoder's group: before a schedule reads its lr
            optimizers[0].param_groups[0]["lr"] *= self.encoder_lr_mult
        if self.discriminator is not None and self.gan_weight > 0:
            disc = {} if self.disc_lr is None else {"lr": self.disc_lr}
            params = [p for p in self.discriminator.parameters() if p.requires_grad]
            optimizers.append(self.optimizer(params, **disc))
        return optimizers

    def tokenizer_param_groups(self) -> list[dict]:
        """The tokenizer's trainable parameters: one group, or (``encoder_lr_mult`` != 1) the encoder's
        first and then the rest. Frozen parameters (e.g. BAR-FSQ's SigLIP2 embeddings) are left out."""
        trainable = [p for p in self.tokenizer.parameters() if p.requires_grad]
        if self.encoder_lr_mult == 1.0:
            return [{"params": trainable}]
        encoder = {id(p) for p in self.tokenizer.encoder.parameters()}
        return [{"params": [p for p in trainable if id(p) in encoder]},
                {"params": [p for p in trainable if id(p) not in encoder]}]

    def configure_optimizers(self):
        """AdamW (the ``optim`` node) on the tokenizer, and on the discriminator when the GAN is on;
        each with its own warm-up + cosine schedule (the ``scheduler`` node), stepped per step."""
        total = planned_steps(self.trainer)
        optimizers = self.build_optimizers()
        schedulers = [self.scheduler(opt, total_steps=total) for opt in optimizers]
        return optimizers, [{"scheduler": s, "interval": "step"} for s in schedulers]


def _drop_frozen_loss_nets(module: TokenizerModule, state_dict: dict, prefix: str, local_metadata) -> None:
    """State-dict hook: leave the frozen loss networks (``FROZEN_LOSS_NETS``) out of checkpoints."""
    for key in [k for k in state_dict if k.startswith(tuple(f"{prefix}{name}." for name in FROZEN_LOSS_NETS))]:
        del state_dict[key]


def _keep_frozen_loss_nets(module: TokenizerModule, state_dict: dict, prefix: str, *args) -> None:
    """Load-state-dict pre-hook: the frozen loss networks keep the weights read from their files (a
    checkpoint written before they were left out may still hold them; those are dropped)."""
    for name in FROZEN_LOSS_NETS:
        for key in [k for k in state_dict if k.startswith(f"{prefix}{name}.")]:
            del state_dict[key]
        net = getattr(module, name, None)
        if isinstance(net, nn.Module):
            state_dict.update({f"{prefix}{name}.{k}": v for k, v in net.state_dict().items()})
