"""Stage ``tokenizer``: train a tokenizer, evaluate it on the validation split, export it.

The evaluation gives PSNR/SSIM (EMA weights) and the rFID of the exported tokenizer (``metrics``).

Reads top to bottom: build data, model, callbacks, loggers and trainer from the config; fit;
validate with the EMA weights; write ``tokenizer.pt`` and return the numbers for results.json.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from barlab.config.instantiate import instantiate_checked, knob_names
from barlab.lightning.callbacks.ema import EMA
from barlab.lightning.callbacks.recon_grid import ReconstructionGrid
from barlab.lightning.tokenizer_module import TokenizerModule
from barlab.metrics.evaluation import evaluate_tokenizer, headline
from barlab.pipeline.results import TokenizerResult
from barlab.pipeline.trainer import (
    build_callbacks,
    build_loggers,
    build_optimization,
    build_trainer,
    checkpoint_dir,
    log_config,
    resume_point,
)
from barlab.runtime.distributed import apply_global_batch
from barlab.runtime.run_state import RunState, stream_seed
from barlab.tokenizer.checkpoint import TOKENIZER_KNOBS, build_tokenizer, load_tokenizer, save_tokenizer

log = logging.getLogger("barlab")
LATENT_SCALE_IMAGES = 1024  # default of ``tokenizer.latent_scale_images``


def continuous_latent_scale(cfg: DictConfig, datamodule, state: dict, device) -> dict:
    """``{"latent_scale": s}`` for a continuous tokenizer, {} for a discrete one: s = 1/std of the posterior
    means of the first ``tokenizer.latent_scale_images`` training images (deterministic, unaugmented pass),
    with the exported (EMA) weights ``state``."""
    tokenizer = build_tokenizer(cfg.tokenizer)
    if tokenizer.is_discrete:
        return {}
    tokenizer.load_state_dict(state)
    tokenizer.to(device).eval()
    count = int(cfg.tokenizer.get("latent_scale_images") or LATENT_SCALE_IMAGES)
    batches = (batch["image"] for batch in datamodule.eval_dataset("train", count))
    with knob_names(latent_scale="tokenizer.latent_scale_images"):
        scale = tokenizer.estimate_latent_scale(batches, max_images=count)
    log.info("tokenizer: latent scale %.6g (1/std of the latents of %d training images)", scale, count)
    return {"latent_scale": scale}


def build_tokenizer_module(cfg: DictConfig) -> TokenizerModule:
    """The LightningModule for ``cfg.tokenizer``: tokenizer + losses + optimiser settings.

    Every loss term whose weight is 0 builds nothing (and needs no file). With ``tokenizer.encoder_init``
    (BAR-FSQ: the SigLIP2 folder) the encoder starts from those pretrained weights.
    """
    tok = cfg.tokenizer
    tokenizer = build_tokenizer(tok)  # constructor errors surface as one-line ConfigErrors
    if tok.get("encoder_init"):
        with knob_names({"weights_path": "tokenizer.encoder_init"}):
            tokenizer.encoder.load_pretrained(tok.encoder_init)
    loss = tok.loss
    gan, perceptual = loss.gan, loss.perceptual
    distill, gram = loss.get("distillation"), loss.get("gram")
    discriminator = (instantiate_checked(gan.discriminator, "tokenizer.loss.gan.discriminator")
                     if gan.weight > 0 else None)
    perceptual_net = None
    if perceptual.weight > 0 and perceptual.get("net") is not None:
        perceptual_net = instantiate_checked(perceptual.net, "tokenizer.loss.perceptual.net")
    elif perceptual.weight > 0:
        from barlab.tokenizer.perceptual import VGGPerceptualLoss

        with knob_names({name: f"tokenizer.loss.perceptual.{name}" for name in ("weights_path", "weight")}):
            perceptual_net = VGGPerceptualLoss(perceptual.weights_path)
    teacher = (instantiate_checked(distill.teacher, "tokenizer.loss.distillation.teacher")
               if distill is not None and distill.weight > 0 else None)
    gram_net = (instantiate_checked(gram.net, "tokenizer.loss.gram.net")
                if gram is not None and gram.weight > 0 else None)
    with knob_names(TOKENIZER_KNOBS, l1_weight="tokenizer.loss.l1_weight", l2_weight="tokenizer.loss.l2_weight"):
        return TokenizerModule(
            tokenizer=tokenizer,
            image_size=cfg.data.image_size,
            l1_weight=loss.l1_weight,
            l2_weight=loss.l2_weight,
            perceptual=perceptual_net,
            perceptual_weight=perceptual.weight,
            discriminator=discriminator,
            gan_weight=gan.weight,
            gan_start_step=gan.start_step,
            gan_quantize_fake=bool(gan.get("quantize_fake", False)),
            gan_alternate=bool(gan.get("alternate", False)),
            teacher=teacher,
            distill_weight=distill.weight if teacher is not None else 0.0,
            gram=gram_net,
            gram_weight=gram.weight if gram_net is not None else 0.0,
            encoder_lr_mult=float(tok.get("encoder_lr_mult", 1.0)),
            **build_optimization(tok, "tokenizer"),
        )


def run_tokenizer_stage(cfg: DictConfig, state: RunState) -> TokenizerResult:
    """Train (or continue training), evaluate and export a tokenizer. Returns the results.json body."""
    run_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate_checked(cfg.data, "data")
    module = build_tokenizer_module(cfg)
    callbacks = build_callbacks(cfg, "tokenizer")
    trainer = build_trainer(cfg, cfg.tokenizer, callbacks, build_loggers(cfg, "tokenizer", state))
    apply_global_batch(trainer, datamodule, cfg.tokenizer.get("global_batch_size"), "tokenizer.global_batch_size",
                       can_accumulate=False)
    log_config(trainer, cfg)

    log.info("tokenizer: %s, %d bits per image, %.2fM parameters", type(module.tokenizer.quantizer).__name__,
             module.bits_per_image, sum(p.numel() for p in module.tokenizer.parameters()) / 1e6)
    ckpt_path, resumed_from = resume_point(cfg, "tokenizer", module)
    datamodule.seed = stream_seed(cfg.seed, resumed_from)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    # Final numbers on the validation split, with the EMA weights (the callback swaps them in).
    trainer.limit_val_batches = cfg.final_eval.max_batches or 1.0
    final = trainer.validate(module, datamodule=datamodule, verbose=False)[0]

    ema = next((c for c in trainer.callbacks if isinstance(c, EMA)), None)
    state = ema.averaged_state_dict(module) if ema is not None else module.tokenizer.state_dict()
    quantizer = module.tokenizer.quantizer
    with knob_names(TOKENIZER_KNOBS):
        grid = module.tokenizer.grid_size(cfg.data.image_size)
    tokenizer_path = run_dir / "tokenizer.pt"
    if trainer.is_global_zero:  # one writer; the other ranks wait for the file at the barrier
        save_tokenizer(tokenizer_path, cfg.tokenizer, state, image_size=cfg.data.image_size,
                       channels=cfg.data.channels,
                       extra={"grid": list(grid), "bits_per_token": quantizer.bits_per_token,
                              "is_discrete": quantizer.is_discrete, "ema": ema is not None,
                              **continuous_latent_scale(cfg, datamodule, state, module.device)})
    trainer.strategy.barrier("tokenizer.pt")
    grid_cb = next((c for c in trainer.callbacks if isinstance(c, ReconstructionGrid)), None)

    metrics = {k: float(v) for k, v in final.items()}
    rfid = {}
    if cfg.metrics.rfid.enabled and trainer.is_global_zero:
        rfid = evaluate_tokenizer(cfg, load_tokenizer(tokenizer_path)[0])
    return {
        "stage": "tokenizer",
        "quantizer": type(quantizer).__name__,
        "family": "discrete" if quantizer.is_discrete else "continuous",
        "bits_per_token": quantizer.bits_per_token,
        "grid": list(grid),
        "bits_per_image": module.bits_per_image,
        "psnr": metrics.get("val/psnr"),
        "ssim": metrics.get("val/ssim"),
        "val_loss": metrics.get("val/loss"),
        **(headline("r", rfid) if rfid else {}),
        "metrics": metrics,
        "rfid_eval": rfid or None,
        "bit_stats": module.last_bit_stats,
        "train_steps": trainer.global_step,
        "resumed_from_step": resumed_from,
        "skipped_samples": getattr(datamodule, "skipped", 0),
        "artifacts": {
            "tokenizer": str(tokenizer_path),
            "checkpoint": str(checkpoint_dir(cfg, "tokenizer") / "last.ckpt"),
            "recon_grid": str(grid_cb.latest) if grid_cb is not None and grid_cb.latest else None,
        },
    }
