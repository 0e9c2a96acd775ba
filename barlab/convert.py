"""``python -m barlab.convert``: a released official BAR generator as barlab's ``generator.pt``, or a
released official BAR-FSQ tokenizer as barlab's ``tokenizer.pt``.

    python -m barlab.convert ckpt=assets/tokenizer/bar_fsq_16bits.bin
    python -m barlab.convert ckpt=assets/generator/bar_b.bin tokenizer_ckpt=assets/tokenizer/bar_fsq_16bits/tokenizer.pt
    python -m barlab.sample ckpt=assets/generator/bar_b/generator.pt

A tokenizer (``BAR_FSQ``, ``bar_fsq_16bits.bin`` / ``bar_fsq_16bits_ft.bin``) becomes ``tokenizer=bar_fsq_paper``
with the file's bits and grid (:mod:`barlab.tokenizer.official_checkpoint`), loaded strictly and written as
``tokenizer.pt``; the frozen SigLIP2 teacher in the file is not part of it.

``ckpt`` is the official state dict (noctrog/BAR ``modeling/generator.py``; bar_b.bin, bar_b_patch2.bin,
bar_b_patch4.bin, bar_l.bin of huggingface.co/FAR-Amazon/BAR-collections). Its sizes pick the barlab preset
(configs/generator/bar_*.yaml with its MBM head, configs/head_preset/generator/mbm_<preset>.yaml, and its
official sampling settings); the tensors are mapped by :mod:`barlab.generator.official_checkpoint` and loaded
strictly into the preset's backbone and head (built on the meta device: no second copy of the weights), and
``generator.pt`` is written with ``tokenizer_ckpt`` embedded, as a finished training run writes it. Every problem
is one line and exit status 2.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from omegaconf import DictConfig

from barlab.cli import hydra_tool, require
from barlab.errors import CheckpointError, ConfigError

log = logging.getLogger("barlab")
DOWNLOAD = ("official BAR generator or tokenizer state dict (bar_b.bin, bar_b_patch2.bin, bar_b_patch4.bin, "
            "bar_l.bin, bar_fsq_16bits.bin or bar_fsq_16bits_ft.bin of huggingface.co/FAR-Amazon/BAR-collections)")
PRESET_CHOICES = "auto, custom, bar_b, bar_b_p2, bar_b_p4, bar_l"


def converted_path(ckpt: Path, name: str = "generator.pt") -> Path:
    """``<folder of ckpt>/<ckpt name without suffix>/<name>``."""
    return ckpt.parent / ckpt.stem / name


def choose_preset(requested: str, found: str | None, sizes: str) -> str | None:
    """The preset to build: ``found`` (the weights' own) for auto, None for custom (configs from shapes)."""
    from barlab.generator.official_checkpoint import OFFICIAL_PRESETS

    if requested == "custom":
        return None
    if requested == "auto":
        if found is None:
            raise ConfigError("preset", f"the weights' sizes match no barlab preset ({sizes})",
                              fix="preset=custom (configs built from the weights' shapes)")
        return found
    if requested not in OFFICIAL_PRESETS:
        raise ConfigError("preset", f"unknown preset {requested!r}, expected one of {PRESET_CHOICES}",
                          fix="preset=auto")
    if requested != found:
        raise ConfigError("preset", f"the weights are {found or 'of no barlab preset'}, not {requested} ({sizes})",
                          fix=f"preset={found or 'custom'}")
    return requested


def custom_overrides(geometry) -> list[str]:
    """``generator=tiny head=mbm`` overrides that give the backbone and head exactly these sizes."""
    return [f"generator.backbone.width={geometry.width}", f"generator.backbone.depth={geometry.depth}",
            f"generator.backbone.heads={geometry.heads}", f"generator.backbone.cond_dim={geometry.head_width}",
            f"generator.backbone.class_repeat={geometry.class_repeat}", "generator.backbone.mlp_ratio=4.0",
            "generator.backbone.qkv_bias=true", "generator.backbone.rope=true",
            "generator.backbone.target_aware_rope=true", "generator.backbone.target_aware_pos=true",
            f"head.width={geometry.head_width}", f"head.depth={geometry.head_depth}",
            f"head.fourier_dim={geometry.fourier_dim}"]


def token_shuffle_of(bits_per_step: int, bits_per_token: int, ar_grid: tuple[int, int],
                     token_grid: tuple[int, int], tokenizer: str) -> int:
    """p with bits_per_step = bits_per_token * p^2 and token grid = AR grid * p; else one line on ``tokenizer``."""
    p = math.isqrt(bits_per_step // bits_per_token) if bits_per_step % bits_per_token == 0 else 0
    if p < 1 or bits_per_token * p * p != bits_per_step or tuple(token_grid) != (ar_grid[0] * p, ar_grid[1] * p):
        raise ConfigError("tokenizer_ckpt", f"{tokenizer} has {bits_per_token}-bit tokens on a {token_grid[0]}x"
                          f"{token_grid[1]} grid; the generator predicts {bits_per_step} bits per step on a "
                          f"{ar_grid[0]}x{ar_grid[1]} grid", fix="tokenizer_ckpt=<the tokenizer it was trained on>.pt "
                          "(the released ones: bar_fsq_16bits, 16-bit tokens on a 16x16 grid)")
    return p


def run(cfg: DictConfig) -> dict:
    from barlab.bench.models import compose_generator
    from barlab.generator.image_generator import save_generator
    from barlab.generator.official_checkpoint import (
        describe_geometry,
        official_generator_to_barlab,
        read_official_geometry,
    )
    from barlab.pipeline.generator_stage import build_backbone_and_head, sampling_settings
    from barlab.tokenizer.checkpoint import load_tokenizer
    from barlab.tokenizer.official_checkpoint import is_official_tokenizer
    from barlab.tokenizer.pretrained import read_state_file

    require(cfg, "ckpt", "ckpt=assets/generator/bar_b.bin")
    ckpt = Path(str(cfg.ckpt))
    state = read_state_file(str(ckpt), "ckpt", user="barlab.convert", expected=DOWNLOAD,
                            fix="ckpt=assets/generator/bar_b.bin")
    if is_official_tokenizer(state):
        return convert_tokenizer(cfg, ckpt, state)
    require(cfg, "tokenizer_ckpt", "tokenizer_ckpt=/path/to/tokenizer.pt")
    try:
        geometry = read_official_geometry(state)
        found, converted = official_generator_to_barlab(state, require_preset=False, copy=False)
    except CheckpointError as err:
        raise CheckpointError(f"ckpt={ckpt}: {err}") from None
    del state
    preset = choose_preset(str(cfg.preset), found, describe_geometry(geometry))

    tokenizer_file = Path(str(cfg.tokenizer_ckpt))
    tokenizer, info = load_tokenizer(tokenizer_file, knob="tokenizer_ckpt")
    if not info.get("is_discrete", True) or tokenizer.quantizer.bits_per_token < 1:
        raise ConfigError("tokenizer_ckpt", f"{tokenizer_file} is not a discrete tokenizer (binary_fsq or fsq)",
                          fix="tokenizer_ckpt=<the tokenizer the generator was trained on>.pt")
    bits_per_token, token_grid = int(tokenizer.quantizer.bits_per_token), tuple(info["grid"])
    p = token_shuffle_of(geometry.bits_per_step, bits_per_token, geometry.grid, token_grid, str(tokenizer_file))
    del tokenizer

    gen_cfg = compose_generator(preset or "tiny", "mbm",
                                [] if preset else [f"generator.token_shuffle={p}", *custom_overrides(geometry)])
    if int(gen_cfg.generator.token_shuffle) != p:
        raise ConfigError("tokenizer_ckpt", f"preset {preset} shuffles {gen_cfg.generator.token_shuffle}x"
                          f"{gen_cfg.generator.token_shuffle} tokens, the weights and {tokenizer_file} need {p}x{p}",
                          fix="tokenizer_ckpt=<the tokenizer the generator was trained on>.pt")
    with torch.device("meta"):
        backbone, head = build_backbone_and_head(gen_cfg, bits_per_token, token_grid, geometry.num_classes)
    if backbone.heads != geometry.heads:
        raise CheckpointError(f"ckpt={ckpt}: {geometry.heads} attention heads (head dim {geometry.head_dim}), "
                              f"preset {preset} has {backbone.heads} (fix: preset=custom)")
    for name, module in (("backbone", backbone), ("head", head)):
        try:
            module.load_state_dict(converted[name], strict=True, assign=True)
        except RuntimeError as err:
            reason = str(err).strip().splitlines()[-1].strip() if str(err).strip() else type(err).__name__
            raise CheckpointError(f"ckpt={ckpt}: its {name} does not fit preset {preset or 'custom'} ({reason}) "
                                  "(fix: preset=custom)") from None
    out = Path(str(cfg.out)) if cfg.out else converted_path(ckpt)
    sampling = sampling_settings(gen_cfg)
    written = save_generator(out, gen_cfg.generator.backbone, gen_cfg.head, backbone, head, tokenizer_file,
                             grid=token_grid, token_shuffle=p, num_classes=geometry.num_classes, sampling=sampling,
                             extra={"converted_from": {"file": str(ckpt), "format": "noctrog/BAR modeling/generator.py",
                                                       "preset": preset or "custom"}})
    summary = {"generator": str(written), "official": str(ckpt), "preset": preset or "custom",
               "parameters": sum(t.numel() for t in backbone.parameters()) + sum(t.numel() for t in head.parameters()),
               "bits_per_step": geometry.bits_per_step, "token_shuffle": p, "grid": list(token_grid),
               "num_classes": geometry.num_classes, "tokenizer": str(tokenizer_file),
               "sampling": {k: v for k, v in sampling.items() if k != "per_class"}}
    log.info("converted %s -> %s (preset %s)", ckpt, written, summary["preset"])
    print(json.dumps(summary, indent=2))
    return summary


def convert_tokenizer(cfg: DictConfig, ckpt: Path, state: dict) -> dict:
    """An official ``BAR_FSQ`` state dict -> ``tokenizer.pt`` of ``tokenizer=bar_fsq_paper`` at its sizes."""
    from omegaconf import OmegaConf

    from barlab.bench.models import compose_generator
    from barlab.tokenizer.checkpoint import build_tokenizer, save_tokenizer
    from barlab.tokenizer.official_checkpoint import official_tokenizer_sizes, official_tokenizer_to_barlab
    from barlab.tokenizer.pretrained import state_mismatch

    try:
        sizes = official_tokenizer_sizes(state)
        converted = official_tokenizer_to_barlab(state)
    except CheckpointError as err:
        raise CheckpointError(f"ckpt={ckpt}: {err}") from None
    patch = 16
    overrides = ["tokenizer=bar_fsq_paper", f"tokenizer.bits={sizes['bits']}", "data=imagefolder",
                 "data.source.root=/unused", f"data.image_size={sizes['grid'] * patch}",
                 f"tokenizer.encoder.depth={sizes['encoder_depth']}",
                 f"tokenizer.decoder.depth={sizes['decoder_depth']}"]
    train_cfg = compose_generator("tiny", "mbm", overrides)
    with torch.device("meta"):
        tokenizer = build_tokenizer(train_cfg.tokenizer)
    mismatch = state_mismatch(tokenizer.state_dict(), converted)
    for what, names in zip(("missing key", "unexpected key", "wrong shape of key"), mismatch.values()):
        if names:
            raise CheckpointError(f"ckpt={ckpt}: {what} {names[0]!r} for tokenizer=bar_fsq_paper with "
                                  f"{sizes['bits']} bits on a {sizes['grid']}x{sizes['grid']} grid"
                                  + (f" ({len(names) - 1} more)" if len(names) > 1 else ""))
    tokenizer.load_state_dict(converted, strict=True, assign=True)
    out = Path(str(cfg.out)) if cfg.out else converted_path(ckpt, "tokenizer.pt")
    image_size = sizes["grid"] * patch
    tok_cfg = OmegaConf.create(OmegaConf.to_container(train_cfg.tokenizer, resolve=True))
    written = save_tokenizer(out, tok_cfg, tokenizer.state_dict(), image_size=image_size, channels=3,
                             extra={"grid": [sizes["grid"]] * 2, "bits_per_token": sizes["bits"], "is_discrete": True,
                                    "ema": False, "converted_from": {"file": str(ckpt),
                                                                     "format": "noctrog/BAR modeling/tokenizer.py"}})
    summary = {"tokenizer": str(written), "official": str(ckpt), "bits_per_token": sizes["bits"],
               "grid": [sizes["grid"]] * 2, "image_size": image_size,
               "parameters": sum(t.numel() for t in tokenizer.parameters())}
    log.info("converted %s -> %s (tokenizer=bar_fsq_paper, %d bits)", ckpt, written, sizes["bits"])
    print(json.dumps(summary, indent=2))
    return summary


main = hydra_tool("convert", run)

if __name__ == "__main__":
    main()
