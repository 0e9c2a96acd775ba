"""Save and load a trained tokenizer as one self-describing file (``tokenizer.pt``).

The file holds the tokenizer's Hydra config (so it can be rebuilt without the run's YAML), the
EMA weights, and the facts downstream stages need: image size, channels, grid and bits per token.
A continuous tokenizer's file also holds ``latent_scale`` (1/std of its posterior means over training
images, the factor its generator tokens are scaled by); a continuous file written without it still
loads, with ``latent_scale`` None, and encoding or decoding continuous tokens with it is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from barlab.config.instantiate import instantiate_checked, knob_names
from barlab.errors import CheckpointError
from barlab.utils.io import atomic_torch_save, describe_payload, load_torch_file

FORMAT = "barlab.tokenizer/1"
FIX = "tokenizer_ckpt=<run>/tokenizer.pt, the file a finished stage=tokenizer or stage=all run exports"
# What a Tokenizer's errors name (its arguments, and the widths and factors it checks across them) -> the knob.
TOKENIZER_KNOBS = {"latent_channels": "tokenizer.latent_channels", "upsample": "tokenizer.decoder.upsample",
                   "quantizer": "tokenizer.quantizer", "levels": "tokenizer.quantizer.levels",
                   "bits": "tokenizer.bits", "image_size": "data.image_size"}


def build_tokenizer(cfg: DictConfig | dict) -> "Tokenizer":  # noqa: F821
    """Instantiate ``Tokenizer(encoder, quantizer, decoder)`` from the ``tokenizer`` config group."""
    from barlab.tokenizer.tokenizer import Tokenizer

    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    encoder = instantiate_checked(cfg.encoder, "tokenizer.encoder")
    quantizer = instantiate_checked(cfg.quantizer, "tokenizer.quantizer")
    decoder = instantiate_checked(cfg.decoder, "tokenizer.decoder")
    with knob_names(TOKENIZER_KNOBS):
        return Tokenizer(encoder=encoder, quantizer=quantizer, decoder=decoder)


def save_tokenizer(path: str | Path, tokenizer_cfg: DictConfig, state_dict: dict[str, torch.Tensor],
                   image_size: int, channels: int, extra: dict[str, Any] | None = None) -> Path:
    """Write the tokenizer file atomically. ``tokenizer_cfg`` must be fully resolved."""
    cfg = OmegaConf.to_container(tokenizer_cfg, resolve=True)
    payload = {
        "format": FORMAT,
        "config": cfg,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "image_size": image_size,
        "channels": channels,
        **(extra or {}),
    }
    return atomic_torch_save(payload, path)


def load_tokenizer(path: str | Path, map_location: str | torch.device = "cpu", knob: str = "tokenizer_ckpt"):
    """Rebuild a tokenizer from ``tokenizer.pt``; returns ``(tokenizer in eval mode, info dict)``.

    Errors name the file as ``<knob>=<path>`` and say what the file is instead (a generator file, a
    Lightning checkpoint, no checkpoint at all, a truncated one), in one line.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{knob}={path} does not exist; train one with "
            "`python -m barlab.train stage=tokenizer` (it writes <run>/tokenizer.pt)"
        )
    payload = load_torch_file(path, f"{knob}={path}", FIX, map_location=map_location)
    return tokenizer_from_payload(payload, f"{knob}={path}")


def tokenizer_from_payload(payload: Any, where: str):
    """Rebuild a tokenizer from the contents of a tokenizer file (also embedded in generator.pt)."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{where}: this is {describe_payload(payload)}, not a tokenizer (expected format "
                              f"{FORMAT}) (fix: {FIX})")
    tokenizer = build_tokenizer(payload["config"])
    try:
        tokenizer.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1].strip() if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{where}: its tokenizer weights do not match its own config ({reason})") from None
    tokenizer.eval()
    if payload.get("latent_scale") is not None:
        tokenizer.latent_scale = float(payload["latent_scale"])
    info = {k: v for k, v in payload.items() if k not in ("state_dict",)}
    return tokenizer, info
