"""Checks of a composed config, run before anything is built or trained.

Each check raises :class:`barlab.errors.ConfigError` naming the knob and the fix, so a bad
sweep point fails in a second instead of after an hour of training.
"""

from __future__ import annotations

import math
import os

from omegaconf import DictConfig, OmegaConf

from barlab.errors import ConfigError
from barlab.runtime.distributed import check_global_batches
from barlab.utils.integers import check_int

STAGES = ("tokenizer", "generator", "all", "classifier")


def _target(node) -> str:
    return str(node.get("_target_", "")) if isinstance(node, DictConfig) else ""


def check_config(cfg: DictConfig) -> None:
    """Validate the knobs users sweep and the paths they point at."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(missing[0], "is required but not set", fix=f"{missing[0]}=<value>")
    if cfg.stage not in STAGES:
        raise ConfigError("stage", f"unknown stage {cfg.stage!r}; choose one of {', '.join(STAGES)}",
                          fix=f"stage={STAGES[0]}")
    if cfg.get("ckpt_path") not in (None, "", "last") and cfg.stage not in ("tokenizer", "generator"):
        # one checkpoint cannot start both stages; stage=all continues its own run folder instead
        raise ConfigError("ckpt_path", f"a checkpoint file starts one stage, not stage={cfg.stage}",
                          fix="stage=tokenizer or stage=generator with ckpt_path, or run_name=<run> to continue a run")

    tok = cfg.tokenizer
    quantizer = _target(tok.quantizer)
    if quantizer.endswith("BinaryFSQ"):
        bits = check_int(tok.get("bits"), "tokenizer.bits", fix="tokenizer.bits=16")
        if bits > 4096:
            raise ConfigError("tokenizer.bits", f"{bits} bits per token is beyond any sensible tokenizer",
                              fix="tokenizer.bits=16")
    elif quantizer.endswith("KLLatent"):
        check_int(tok.quantizer.get("channels"), "tokenizer.quantizer.channels", fix="tokenizer.quantizer.channels=4")
    elif quantizer.endswith("FSQ"):
        levels = tok.quantizer.get("levels")
        if not levels or any(isinstance(lv, bool) or not isinstance(lv, int) or lv < 2 for lv in levels):
            raise ConfigError("tokenizer.quantizer.levels", f"must be a list of integers >= 2, got {levels}",
                              fix="tokenizer.quantizer.levels=[8,5,5,5]")

    f = check_int(tok.encoder.get("downsample"), "tokenizer.encoder.downsample", fix="tokenizer.encoder.downsample=4")
    if f & (f - 1):
        raise ConfigError("tokenizer.encoder.downsample", f"must be a power of two, got {f}",
                          fix="tokenizer.encoder.downsample=4")
    size = check_int(cfg.data.get("image_size"), "data.image_size", fix="data.image_size=32")
    if size % f:
        raise ConfigError("data.image_size", f"{size} is not divisible by the downsampling factor {f}",
                          fix=f"data.image_size={max(f, size // f * f)}")
    check_int(cfg.data.get("batch_size"), "data.batch_size", fix="data.batch_size=64")
    check_int(tok.get("max_steps"), "tokenizer.max_steps", fix="tokenizer.max_steps=800")
    check_int(tok.get("val_every"), "tokenizer.val_every", fix="tokenizer.val_every=200")
    if cfg.stage in ("generator", "all"):
        check_generator(cfg, quantizer)
    check_global_batches(cfg)

    source = cfg.data.get("source")
    if isinstance(source, DictConfig):
        for key in ("idx_dir", "root", "val_root"):
            path = source.get(key)
            if path is not None and not os.path.isdir(str(path)):
                raise ConfigError(f"data.source.{key}", f"folder {path} does not exist",
                                  fix=f"data.source.{key}=/path/to/data" + (" or null" if key != "root" else ""))


def check_generator(cfg: DictConfig, quantizer: str) -> None:
    """Generator knobs, and the linear head's size guard where the bit width is known up front."""
    gen = cfg.generator
    check_int(gen.get("max_steps"), "generator.max_steps", fix="generator.max_steps=1200")
    check_int(gen.get("val_every"), "generator.val_every", fix="generator.val_every=500")
    p = check_int(gen.get("token_shuffle"), "generator.token_shuffle", fix="generator.token_shuffle=1")
    check_int(gen.data.get("batch_size"), "generator.data.batch_size", fix="generator.data.batch_size=64")
    if quantizer.endswith("KLLatent") and cfg.stage == "all":
        raise ConfigError("tokenizer/quantizer", "the generator needs a discrete tokenizer, not a KL latent",
                          fix="tokenizer/quantizer=binary_fsq, or stage=tokenizer")
    if cfg.stage == "generator" and not cfg.get("tokenizer_ckpt"):
        raise ConfigError("tokenizer_ckpt", "stage=generator needs a trained tokenizer",
                          fix="tokenizer_ckpt=/path/to/run/tokenizer.pt, or stage=all")
    sampling = cfg.sampling
    if not isinstance(sampling.guidance, (int, float)) or isinstance(sampling.guidance, bool) or sampling.guidance < 0:
        raise ConfigError("sampling.guidance", f"must be a number >= 0 (1 = no guidance), got {sampling.guidance!r}",
                          fix="sampling.guidance=3.0")
    if sampling.schedule not in ("constant", "linear", "power-cosine"):
        raise ConfigError("sampling.schedule", f"unknown CFG schedule {sampling.schedule!r}",
                          fix="sampling.schedule=linear (or constant, power-cosine)")
    if not isinstance(sampling.temperature, (int, float)) or sampling.temperature < 0:
        raise ConfigError("sampling.temperature", f"must be a number >= 0, got {sampling.temperature!r}",
                          fix="sampling.temperature=1.0")
    check_int(sampling.get("per_class"), "sampling.per_class", fix="sampling.per_class=10")
    allocation = sampling.get("allocation")
    if allocation is not None and not _target(cfg.head).endswith("MBMHead"):
        raise ConfigError("sampling.allocation", f"only the MBM head unmasks bits in steps, not head "
                          f"{_target(cfg.head).rsplit('.', 1)[-1] or cfg.head}", fix="sampling.allocation=null")
    facts = token_facts(cfg, quantizer)
    if facts is not None:
        if allocation is not None:
            from barlab.generator.heads import check_allocation

            check_allocation(allocation, facts[0] * p * p, "sampling.allocation")
        build_generator_on_meta(cfg, *facts, p)


def token_facts(cfg: DictConfig, quantizer: str) -> tuple[int, tuple[int, int]] | None:
    """``(bits per token, token grid)`` the generator will see, known before anything trains, else None.

    stage=all: from the tokenizer config (binary FSQ: ``tokenizer.bits``; FSQ:
    ``ceil(log2(prod(levels)))``; grid ``data.image_size / tokenizer.encoder.downsample``).
    stage=generator: from the ``tokenizer_ckpt`` file (a wrong or broken file fails here, in one line).
    """
    if cfg.stage == "generator":
        from barlab.tokenizer.checkpoint import load_tokenizer

        tokenizer, info = load_tokenizer(cfg.tokenizer_ckpt)
        if not info.get("is_discrete", True) or tokenizer.quantizer.bits_per_token < 1:
            return None  # refused with its own message by the generator stage
        return int(info["bits_per_token"]), tuple(int(g) for g in info["grid"])
    side = cfg.data.image_size // cfg.tokenizer.encoder.downsample  # both checked in check_config
    if quantizer.endswith("BinaryFSQ"):
        return int(cfg.tokenizer.bits), (side, side)
    if quantizer.endswith("FSQ"):
        return (math.prod(int(level) for level in cfg.tokenizer.quantizer.levels) - 1).bit_length(), (side, side)
    return None


def build_generator_on_meta(cfg: DictConfig, bits: int, grid: tuple[int, int], p: int) -> None:
    """Build the backbone and the head from the config on the meta device (no memory, no time), so a
    bad generator or head knob fails now with a one-line ConfigError instead of after the tokenizer.

    bits: bits per token; grid: the tokenizer's token grid (h, w); p: ``generator.token_shuffle``.
    The head's size guard (``head.max_memory_gb`` of the linear head) runs in its constructor; the
    linear head is given the tokens one process trains on per step (``generator.data.batch_size`` x
    AR steps) unless ``head.batch_tokens`` is set.
    """
    import torch

    from barlab.config.instantiate import instantiate_checked

    if grid[0] % p or grid[1] % p:
        raise ConfigError("generator.token_shuffle", f"p={p} does not divide the token grid {list(grid)}",
                          fix="generator.token_shuffle=1")
    bits_per_step = bits * p * p
    source = cfg.data.get("source")
    num_classes = source.get("num_classes") if isinstance(source, DictConfig) else None
    with torch.device("meta"):
        instantiate_checked(cfg.generator.backbone, "generator.backbone", bits_per_step=bits_per_step,
                            grid=(grid[0] // p, grid[1] // p), num_classes=int(num_classes or 10))
        extra = {}
        if _target(cfg.head).endswith("LinearHead") and cfg.head.get("batch_tokens") is None:
            extra["batch_tokens"] = int(cfg.generator.data.batch_size) * (grid[0] // p) * (grid[1] // p)
        instantiate_checked(cfg.head, "head", cond_dim=cfg.generator.backbone.cond_dim, bits_per_step=bits_per_step,
                            **extra)
