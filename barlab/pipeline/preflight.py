"""Checks of a composed config, run before anything is built or trained.

Each check raises :class:`barlab.errors.ConfigError` naming the knob and the fix, so a bad
sweep point fails in a second instead of after an hour of training.
"""

from __future__ import annotations

import json
import math
import os
import re

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from barlab.config.instantiate import knob_names
from barlab.errors import ConfigError
from barlab.generator.heads import LinearHead, MBMHead
from barlab.pipeline.generator_stage import (
    build_backbone_and_head,
    head_token_type,
    pretokenize_limits,
    tokenizer_path,
)
from barlab.runtime.distributed import check_global_batches
from barlab.tokenizer.pretrained import PRETRAINED_DOWNLOADS
from barlab.tokenizer.quantizers import FSQ, BinaryFSQ, KLLatent
from barlab.utils.integers import check_int


def target_class(node: DictConfig | None, knob: str) -> type | None:
    """The class a config node instantiates (its ``_target_``), or None for a node without one; a
    ``_target_`` that names nothing importable is refused in one line."""
    if not isinstance(node, DictConfig) or not node.get("_target_"):
        return None
    try:
        return get_class(str(node._target_))
    except Exception as err:
        raise ConfigError(f"{knob}._target_", f"{node._target_!r} is not an importable class ({err})") from None


def is_a(node: DictConfig | None, knob: str, cls: type) -> bool:
    """Whether ``node`` instantiates ``cls`` or a subclass of it."""
    target = target_class(node, knob)
    return isinstance(target, type) and issubclass(target, cls)


def encoder_factor(tok: DictConfig) -> object:
    """The tokenizer's pixels per token side: ``encoder.downsample`` (conv encoder) or ``encoder.patch_size``
    (SigLIP2 encoder), unchecked."""
    return tok.encoder.get("downsample", tok.encoder.get("patch_size"))


def factor_knob(tok: DictConfig) -> str:
    """The knob that sets :func:`encoder_factor`."""
    return "tokenizer.encoder.downsample" if "downsample" in tok.encoder else "tokenizer.encoder.patch_size"


# the loss parts of the tokenizer that load pretrained files, each with the knob of its weight
_PRETRAINED_USERS = (("encoder_init", None), ("loss.perceptual.net", "loss.perceptual.weight"),
                     ("loss.distillation.teacher", "loss.distillation.weight"), ("loss.gram.net", "loss.gram.weight"),
                     ("loss.gan.discriminator", "loss.gan.weight"))


def check_pretrained_files(cfg: DictConfig) -> None:
    """Every ``tokenizer.pretrained.<name>`` file that an enabled part uses exists, else one line that names
    the knob and what to download. Runs before anything is built (the files are read later, strictly)."""
    files = cfg.tokenizer.get("pretrained")
    if not isinstance(files, DictConfig) or cfg.stage not in ("tokenizer", "all"):
        return
    raw = OmegaConf.to_container(cfg.tokenizer, resolve=False)
    used: list[str] = []
    for path, weight in _PRETRAINED_USERS:
        part = raw
        for key in path.split("."):
            part = part.get(key) if isinstance(part, dict) else None
        if part is None or (weight is not None and not OmegaConf.select(cfg.tokenizer, weight, default=0)):
            continue
        used += [name for name in re.findall(r"\$\{tokenizer\.pretrained\.(\w+)\}", json.dumps(part))
                 if name not in used]
    for name in used:
        location = files.get(name)
        if location is None or not os.path.exists(str(location)):
            what = PRETRAINED_DOWNLOADS.get(name, "that pretrained file")
            raise ConfigError(f"tokenizer.pretrained.{name}",
                              f"{'not set' if location is None else repr(str(location)) + ' not found'}; "
                              f"download {what}; nothing is downloaded at run time",
                              fix=f"tokenizer.pretrained.{name}=/path/to/it")


def check_config(cfg: DictConfig) -> None:
    """Validate the knobs users sweep and the paths they point at."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(missing[0], "is required but not set", fix=f"{missing[0]}=<value>")
    if cfg.get("ckpt_path") not in (None, "", "last") and cfg.stage not in ("tokenizer", "generator"):
        # one checkpoint cannot start both stages; stage=all continues its own run folder instead
        raise ConfigError("ckpt_path", f"a checkpoint file starts one stage, not stage={cfg.stage}",
                          fix="stage=tokenizer or stage=generator with ckpt_path, or run_name=<run> to continue a run")

    tok = cfg.tokenizer
    target_class(tok.quantizer, "tokenizer.quantizer")  # a _target_ that imports nothing: refused here
    if is_a(tok.quantizer, "tokenizer.quantizer", BinaryFSQ):
        bits = check_int(tok.get("bits"), "tokenizer.bits", fix="tokenizer.bits=16")
        if bits > 4096:
            raise ConfigError("tokenizer.bits", f"{bits} bits per token is beyond any sensible tokenizer",
                              fix="tokenizer.bits=16")
    elif is_a(tok.quantizer, "tokenizer.quantizer", KLLatent):
        check_int(tok.quantizer.get("channels"), "tokenizer.quantizer.channels", fix="tokenizer.quantizer.channels=4")
    elif is_a(tok.quantizer, "tokenizer.quantizer", FSQ):
        levels = tok.quantizer.get("levels")
        if not levels or any(isinstance(lv, bool) or not isinstance(lv, int) or lv < 2 for lv in levels):
            raise ConfigError("tokenizer.quantizer.levels", f"must be a list of integers >= 2, got {levels}",
                              fix="tokenizer.quantizer.levels=[8,5,5,5]")

    f = check_int(encoder_factor(tok), factor_knob(tok), fix=f"{factor_knob(tok)}=4")
    if "downsample" in tok.encoder and f & (f - 1):
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
        check_generator(cfg)
    check_global_batches(cfg)
    check_pretrained_files(cfg)

    check_shard_urls(cfg)
    source = cfg.data.get("source")
    if isinstance(source, DictConfig):
        for key in ("idx_dir", "root", "val_root"):
            path = source.get(key)
            if path is not None and not os.path.isdir(str(path)):
                raise ConfigError(f"data.source.{key}", f"folder {path} does not exist",
                                  fix=f"data.source.{key}=/path/to/data" + (" or null" if key != "root" else ""))


def check_shard_urls(cfg: DictConfig) -> None:
    """``data.train_urls`` / ``data.val_urls`` (``data=webdataset``): every file of the brace patterns exists
    and is readable, else one line naming the knob and the first missing file."""
    for key in ("train_urls", "val_urls"):
        if key in cfg.data:
            from barlab.data.wds_datamodule import expand_urls

            value = cfg.data[key]
            expand_urls(value if value is None or isinstance(value, str) else OmegaConf.to_container(value),
                        f"data.{key}")


def check_generator(cfg: DictConfig) -> None:
    """Generator knobs, and the linear head's size guard where the bit width is known up front."""
    gen = cfg.generator
    check_int(gen.get("max_steps"), "generator.max_steps", fix="generator.max_steps=1200")
    check_int(gen.get("val_every"), "generator.val_every", fix="generator.val_every=500")
    p = check_int(gen.get("token_shuffle"), "generator.token_shuffle", fix="generator.token_shuffle=1")
    check_int(gen.data.get("batch_size"), "generator.data.batch_size", fix="generator.data.batch_size=64")
    pretokenize_limits(cfg)
    continuous_head = head_token_type(cfg) == "continuous"
    if cfg.stage == "all" and is_a(cfg.tokenizer.quantizer, "tokenizer.quantizer", KLLatent) != continuous_head:
        if continuous_head:
            raise ConfigError("tokenizer/quantizer", "the head models continuous tokens, and this tokenizer gives bits",
                              fix="tokenizer/quantizer=kl, or a discrete head")
        raise ConfigError("head", "a KL tokenizer gives continuous tokens, which a bit head cannot model",
                          fix="head=diffusion, or tokenizer/quantizer=binary_fsq")
    if cfg.stage == "generator":
        tokenizer_path(cfg, trained=None)  # refuses stage=generator without tokenizer_ckpt
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
    if allocation is not None and not is_a(cfg.head, "head", MBMHead):
        head = target_class(cfg.head, "head")
        raise ConfigError("sampling.allocation", f"only the MBM head unmasks bits in steps, not head "
                          f"{head.__name__ if head is not None else cfg.head}", fix="sampling.allocation=null")
    facts = token_facts(cfg)
    if facts is not None:
        if allocation is not None:
            from barlab.generator.heads import check_allocation

            with knob_names(allocation="sampling.allocation"):
                check_allocation(allocation, facts[0] * p * p)
        build_generator_on_meta(cfg, *facts, p, token_type="continuous" if continuous_head else "discrete")


def token_facts(cfg: DictConfig) -> tuple[int, tuple[int, int]] | None:
    """``(bits per token, token grid)`` the generator will see, known before anything trains, else None.
    For continuous tokens (a KL latent), the channels per token instead of the bits.

    stage=all: from the tokenizer config (binary FSQ: ``tokenizer.bits``; FSQ:
    ``ceil(log2(prod(levels)))``; KL: ``tokenizer.quantizer.channels``; grid
    ``data.image_size / tokenizer.encoder.downsample``).
    stage=generator: from the ``tokenizer_ckpt`` file (a wrong or broken file fails here, in one line).
    """
    if cfg.stage == "generator":
        from barlab.tokenizer.checkpoint import load_tokenizer

        tokenizer, info = load_tokenizer(cfg.tokenizer_ckpt)
        if not info.get("is_discrete", True) or tokenizer.quantizer.bits_per_token < 1:
            return None  # refused or checked with its own message by the generator stage
        return int(info["bits_per_token"]), tuple(int(g) for g in info["grid"])
    side = cfg.data.image_size // encoder_factor(cfg.tokenizer)  # both checked in check_config
    if is_a(cfg.tokenizer.quantizer, "tokenizer.quantizer", BinaryFSQ):
        return int(cfg.tokenizer.bits), (side, side)
    if is_a(cfg.tokenizer.quantizer, "tokenizer.quantizer", FSQ):
        return (math.prod(int(level) for level in cfg.tokenizer.quantizer.levels) - 1).bit_length(), (side, side)
    if is_a(cfg.tokenizer.quantizer, "tokenizer.quantizer", KLLatent):
        return int(cfg.tokenizer.quantizer.channels), (side, side)
    return None


def build_generator_on_meta(cfg: DictConfig, bits: int, grid: tuple[int, int], p: int,
                            token_type: str = "discrete") -> None:
    """Build the backbone and the head from the config on the meta device (no memory, no time), so a
    bad generator or head knob fails now with a one-line ConfigError instead of after the tokenizer.

    bits: bits per token (continuous: channels); grid: the tokenizer's token grid (h, w); p:
    ``generator.token_shuffle``; token_type: ``discrete`` or ``continuous``.
    The head's size guard (``head.max_memory_gb`` of the linear head) runs in its constructor; the
    linear head is given the tokens one process trains on per step (``generator.data.batch_size`` x
    AR steps) unless ``head.batch_tokens`` is set.
    """
    import torch

    source = cfg.data.get("source")
    num_classes = source.get("num_classes") if isinstance(source, DictConfig) else cfg.data.get("num_classes")
    extra = {}
    if is_a(cfg.head, "head", LinearHead) and cfg.head.get("batch_tokens") is None:
        extra["batch_tokens"] = int(cfg.generator.data.batch_size) * (grid[0] // p) * (grid[1] // p)
    with torch.device("meta"):
        build_backbone_and_head(cfg, bits, grid, int(num_classes or 10), token_type=token_type, **extra)
