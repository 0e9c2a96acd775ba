"""A trained class-conditional image generator as one plain module, and its file ``generator.pt``.

:class:`ImageGenerator` = AR backbone + prediction head + frozen tokenizer: class labels → images.
``generator.pt`` (written at the end of the generator stage) holds the resolved backbone and head
configs, their weights, the grid / token-shuffle facts and the whole tokenizer file, so
``python -m barlab.sample`` needs nothing else. A generator of continuous tokens also stores
``"token_type": "continuous"`` (absent: discrete), which rebuilds its backbone with the linear input
projection; its images are decoded by the tokenizer's ``decode_tokens`` instead of ``decode_bits``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from barlab.errors import CheckpointError
from barlab.generator.sampler import ARSampler
from barlab.generator.token_shuffle import unshuffle
from barlab.utils.io import atomic_torch_save, describe_payload, load_torch_file

# /2: the MBM head's adaLN modulations are Sequential(SiLU, Linear), as in the official code
FORMAT = "barlab.generator/2"
OLD_FORMATS = ("barlab.generator/1",)
# the sampler's keyword settings (``ARSampler.sample``, :func:`generate_images`), stored in generator.pt
SAMPLING_KEYS = ("guidance", "schedule", "power", "temperature", "allocation", "clip_x0")


def sampler_kwargs(settings) -> dict:
    """The :data:`SAMPLING_KEYS` entries of a ``sampling`` mapping (dict or DictConfig), as keyword arguments of
    ``ARSampler.sample`` / :func:`generate_images`; the missing ones keep those functions' defaults."""
    return {k: settings[k] for k in SAMPLING_KEYS if k in settings}


@torch.no_grad()
def generate_images(sampler: ARSampler, tokenizer: nn.Module, grid: tuple[int, int], token_shuffle: int,
                    labels: torch.Tensor, guidance: float = 1.0, schedule: str = "linear", power: float = 1.0,
                    temperature: float = 1.0, generator: torch.Generator | None = None,
                    allocation=None, clip_x0: float | None = None) -> torch.Tensor:
    """labels (B,) → images (B, C, H, W) in [-1, 1]: AR-sample bits (or continuous tokens), undo token
    shuffling, decode (``decode_bits``, or ``decode_tokens`` for continuous tokens).

    ``allocation``: the MBM head's unmasking allocation for this call (None: the head's own);
    ``clip_x0``: the diffusion head's x̂0 clamp (None: none, as MAR)."""
    steps = sampler.sample(labels, guidance=guidance, schedule=schedule, power=power,
                           temperature=temperature, generator=generator, allocation=allocation, clip_x0=clip_x0)
    return decode_steps(tokenizer, steps, grid, token_shuffle, getattr(sampler.backbone, "token_type", "discrete"))


def generate_with_settings(sampler: ARSampler, tokenizer: nn.Module, grid: tuple[int, int], token_shuffle: int,
                           labels: torch.Tensor, settings: dict, generator: torch.Generator | None = None
                           ) -> torch.Tensor:
    """:func:`generate_images` with a ``sampling`` settings dict (:func:`sampler_kwargs`)."""
    return generate_images(sampler, tokenizer, grid, token_shuffle, labels, generator=generator,
                           **sampler_kwargs(settings))


def decode_steps(tokenizer: nn.Module, steps: torch.Tensor, grid: tuple[int, int], token_shuffle: int,
                 token_type: str = "discrete") -> torch.Tensor:
    """AR steps (B, L', k·p²) → images (B, C, H, W) in [-1, 1]: undo token shuffling, then decode the
    raster tokens: bits by ``decode_bits``, continuous tokens (``token_type="continuous"``) by ``decode_tokens``."""
    tokens = unshuffle(steps, grid, token_shuffle)
    if token_type == "continuous":
        return tokenizer.decode_tokens(tokens, grid).float().clamp(-1, 1)
    return tokenizer.decode_bits(tokens, grid).float().clamp(-1, 1)


class ImageGenerator(nn.Module):
    """backbone, head: the trained generator; tokenizer: decodes bits; grid (h, w); token_shuffle p."""

    def __init__(self, backbone: nn.Module, head: nn.Module, tokenizer: nn.Module, grid: tuple[int, int],
                 token_shuffle: int = 1, sampling: dict | None = None):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.grid, self.token_shuffle = tuple(grid), int(token_shuffle)
        self.sampling = sampler_kwargs(sampling or {})
        self.sampler = ARSampler(backbone, head)

    @property
    def num_classes(self) -> int:
        return int(self.backbone.null_class)

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, generator: torch.Generator | None = None, **overrides) -> torch.Tensor:
        """labels (B,) → images (B, C, H, W) in [-1, 1], with the stored ``sampling`` (overridable)."""
        opts = {**self.sampling, **{k: v for k, v in overrides.items() if v is not None}}
        device = next(self.backbone.parameters()).device
        return generate_with_settings(self.sampler, self.tokenizer, self.grid, self.token_shuffle, labels.to(device),
                                      opts, generator)


def plain(value):
    """An OmegaConf node (or a dict holding some) as plain Python containers; anything else as is."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def token_type_entry(backbone: nn.Module) -> dict:
    """``{"token_type": "continuous"}`` for a backbone of continuous tokens; {} for bits (the default)."""
    kind = getattr(backbone, "token_type", "discrete")
    return {} if kind == "discrete" else {"token_type": kind}


def save_generator(path: str | Path, backbone_cfg, head_cfg, backbone: nn.Module, head: nn.Module,
                   tokenizer_file: str | Path, grid: tuple[int, int], token_shuffle: int, num_classes: int,
                   sampling: dict, extra: dict[str, Any] | None = None) -> Path:
    """Write ``generator.pt`` atomically; configs are resolved, the tokenizer file is embedded."""
    to_dict = lambda c: OmegaConf.to_container(c, resolve=True) if not isinstance(c, dict) else c  # noqa: E731
    payload = {
        "format": FORMAT,
        "backbone_config": to_dict(backbone_cfg),
        "head_config": to_dict(head_cfg),
        "backbone": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
        "head": {k: v.detach().cpu() for k, v in head.state_dict().items()},
        "tokenizer": torch.load(tokenizer_file, map_location="cpu", weights_only=False),
        "grid": list(grid),
        "token_shuffle": int(token_shuffle),
        "num_classes": int(num_classes),
        "bits_per_step": int(head.bits_per_step),
        "sampling": sampler_kwargs(plain(sampling)),
        **token_type_entry(backbone),
        **(extra or {}),
    }
    return atomic_torch_save(payload, path)


def load_generator(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[ImageGenerator, dict]:
    """Rebuild an :class:`ImageGenerator` (eval mode) from ``generator.pt`` or a run folder holding one."""
    from hydra.utils import instantiate

    from barlab.tokenizer.checkpoint import tokenizer_from_payload

    path = Path(path)
    if path.is_dir():
        path = path / "generator.pt"
    if not path.is_file():
        raise CheckpointError(f"generator file {path} does not exist; a finished `python -m barlab.train` run "
                              "(stage=all or generator) writes <run>/generator.pt")
    fix = "a finished run's <run>/generator.pt (or its run folder)"
    payload = load_torch_file(path, f"cannot read generator file {path}", fix, map_location=map_location)
    if isinstance(payload, dict) and payload.get("format") in OLD_FORMATS:
        raise CheckpointError(f"{path}: written by an older barlab ({payload['format']}) whose MBM head differs from "
                              "the official one; its weights do not fit this version (fix: train the generator again)")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: this is {describe_payload(payload)}, not a generator (expected format "
                              f"{FORMAT}) (fix: {fix})")
    tokenizer, tok_info = tokenizer_from_payload(payload["tokenizer"], str(path))
    grid = tuple(payload["grid"])
    p = payload["token_shuffle"]
    backbone = instantiate(payload["backbone_config"], bits_per_step=payload["bits_per_step"],
                           grid=(grid[0] // p, grid[1] // p), num_classes=payload["num_classes"],
                           **({"token_type": payload["token_type"]} if "token_type" in payload else {}))
    head = instantiate(payload["head_config"], cond_dim=payload["backbone_config"]["cond_dim"],
                       bits_per_step=payload["bits_per_step"])
    try:
        backbone.load_state_dict(payload["backbone"])
        head.load_state_dict(payload["head"])
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1].strip() if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: its weights do not match its own config ({reason})") from None
    model = ImageGenerator(backbone, head, tokenizer, grid, p, payload.get("sampling")).eval()
    info = {k: v for k, v in payload.items() if k not in ("backbone", "head", "tokenizer")}
    info["tokenizer"] = tok_info
    info["path"] = str(path)
    return model, info
