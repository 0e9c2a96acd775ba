"""Save and load a trained tokenizer as one self-describing file (``tokenizer.pt``).

The file holds the tokenizer's Hydra config (so it can be rebuilt without the run's YAML), the
EMA weights, and the facts downstream stages need: image size, channels, grid and bits per token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from barlab.cli import instantiate_checked
from barlab.errors import CheckpointError
from barlab.utils.io import atomic_torch_save

FORMAT = "barlab.tokenizer/1"


def build_tokenizer(cfg: DictConfig | dict) -> "Tokenizer":  # noqa: F821
    """Instantiate ``Tokenizer(encoder, quantizer, decoder)`` from the ``tokenizer`` config group."""
    from barlab.tokenizer.tokenizer import Tokenizer

    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    return Tokenizer(
        encoder=instantiate_checked(cfg.encoder, "tokenizer.encoder"),
        quantizer=instantiate_checked(cfg.quantizer, "tokenizer.quantizer"),
        decoder=instantiate_checked(cfg.decoder, "tokenizer.decoder"),
    )


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


def load_tokenizer(path: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild a tokenizer from ``tokenizer.pt``; returns ``(tokenizer in eval mode, info dict)``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"tokenizer checkpoint {path} does not exist; train one with "
            "`python -m barlab.train stage=tokenizer` (it writes <run>/tokenizer.pt)"
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # corrupt or truncated file
        raise CheckpointError(f"cannot read tokenizer checkpoint {path}: {err}") from err
    return tokenizer_from_payload(payload, str(path))


def tokenizer_from_payload(payload: Any, where: str):
    """Rebuild a tokenizer from the contents of a tokenizer file (also embedded in generator.pt)."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a barlab tokenizer file (expected format {FORMAT})")
    tokenizer = build_tokenizer(payload["config"])
    try:
        tokenizer.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"tokenizer weights in {where} do not match its config: {err}") from err
    tokenizer.eval()
    info = {k: v for k, v in payload.items() if k not in ("state_dict",)}
    return tokenizer, info
