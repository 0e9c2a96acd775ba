"""Generators for the benchmarks, built the way training builds them: compose ``configs/train.yaml``
with ``generator=<preset> head=<head>`` and the benchmark's overrides, then
:func:`barlab.pipeline.generator_stage.build_generator_module` (random weights, no tokenizer)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from omegaconf import DictConfig
from torch import nn

from barlab.config.instantiate import instantiate_checked
from barlab.config.paths import CONFIG_DIR


def compose_train(overrides: Sequence[str] = ()) -> DictConfig:
    """``configs/train.yaml`` with ``overrides``, inside or outside a running Hydra app."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name="train", overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def compose_generator(preset: str, head: str = "mbm", overrides: Sequence[str] = ()) -> DictConfig:
    """``configs/train.yaml`` with ``generator=<preset> head=<head>`` and ``overrides``."""
    return compose_train([f"generator={preset}", f"head={head}", *overrides])


def build_head(cfg: DictConfig, bits_per_step: int, **kwargs) -> nn.Module:
    """The ``head`` node of ``cfg`` for ``bits_per_step`` bits and the preset's cond_dim."""
    return instantiate_checked(cfg.head, "head", cond_dim=cfg.generator.backbone.cond_dim,
                               bits_per_step=bits_per_step, **kwargs)


def build_module(cfg: DictConfig, grid: tuple[int, int], bits_per_token: int, num_classes: int,
                 device: torch.device, seed: int = 0, token_channels: int | None = None):
    """A :class:`GeneratorModule` for ``cfg`` over a (h, w) token grid of ``bits_per_token`` bits (with
    ``token_channels`` C: continuous tokens of C channels instead), seeded, on ``device``; its tokenizer is
    an ``nn.Identity`` (nothing is decoded)."""
    from barlab.pipeline.generator_stage import build_generator_module

    torch.manual_seed(seed)
    info = {"grid": list(grid), "bits_per_token": int(bits_per_token)}
    if token_channels is not None:
        info.update(is_discrete=False, token_channels=int(token_channels))
    return build_generator_module(cfg, nn.Identity(), info, num_classes).to(device)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
