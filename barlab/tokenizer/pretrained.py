"""Reading pretrained weights from safetensors files and Hugging Face model folders, nothing downloaded.

Every frozen pretrained network of the tokenizer (SigLIP2, VGG16/LPIPS, Gram, ConvNeXt, DINO) is read
and loaded here: :func:`read_state_file` (a torch state dict), :func:`read_weights` (also the layouts a
Hugging Face download has), :func:`load_state_strict` (a key or shape mismatch is one line),
:func:`freeze` and :func:`gray_to_rgb`. The layouts :func:`read_weights` reads:

- a model folder: ``config.json`` plus ``model.safetensors``, or a sharded ``model.safetensors.index.json``
  (its ``weight_map`` names the shard of every key);
- a single ``.safetensors`` file;
- anything else is read as a torch state dict by ``read_state_file``.

Every problem is one ConfigError line on the caller's argument (``knob``) naming the path and what to
get, worded as ``read_state_file``'s: ``'<path>' not found; <user> needs a local <expected>, nothing is
downloaded (fix: <fix>)``. Strict loading is :func:`load_state_strict`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from barlab.errors import ConfigError

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
CONFIG_FILE = "config.json"


# What each ``tokenizer.pretrained.<name>`` file of the paper tokenizer is, and where it comes from.
PRETRAINED_DOWNLOADS = {
    "siglip2": "the Hugging Face model folder of google/siglip2-so400m-patch16-naflex (config.json and "
               "model.safetensors)",
    "vgg16": "torchvision's VGG16 ImageNet weights vgg16-397923af.pth (download.pytorch.org/models)",
    "lpips": "the LPIPS linear layers, vgg.pth of richzhang/PerceptualSimilarity (weights/v0.1) or taming's "
             "vgg_lpips.pth",
    "convnext_s": "torchvision's ConvNeXt-S ImageNet weights convnext_small-0c510722.pth (download.pytorch.org/models)",
    "dino": "the DINO ViT-S/8 discriminator backbone dino_vit_small_patch8_224.pth "
            "(huggingface.co/nyu-visionx/RAE-collections, discs/)",
}


def read_state_file(path: str | os.PathLike | None, knob: str, *, user: str, expected: str,
                    fix: str) -> dict[str, Tensor]:
    """Read a local torch state dict (a ``{"state_dict": ...}`` wrapper is unwrapped).

    Every failure is one ConfigError on ``knob`` whose one-line message names the file and says what to
    get: ``'<path>' not found; <user> needs a local <expected>, nothing is downloaded (fix: <fix>)``;
    likewise for an unreadable file or one that holds no dict. Nothing is downloaded.
    """
    if path is None or not os.path.isfile(os.fspath(path)):
        raise ConfigError(knob, f"{path!r} not found; {user} needs a local {expected}, nothing is downloaded",
                          fix=fix)
    name = os.fspath(path)
    try:
        state = torch.load(name, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(knob, f"{name!r} is not a readable torch state dict ({first}); {user} needs a local "
                          f"{expected}", fix=fix) from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(knob, f"{name!r} holds a {type(state).__name__} that is not a state dict of tensors; "
                          f"{user} needs a local {expected}", fix=fix)
    return state


def _few(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{f', ... {len(names) - limit} more' if len(names) > limit else ''}]"


def state_mismatch(own: dict[str, Tensor], state: dict[str, Tensor]) -> dict[str, list[str]]:
    """How ``state`` fails to load strictly into a module whose state dict is ``own``:
    ``{"missing keys": [...], "unexpected keys": [...], "wrong shapes": ["key (got) != (expected)", ...]}``."""
    return {"missing keys": [k for k in own if k not in state],
            "unexpected keys": [k for k in state if k not in own],
            "wrong shapes": [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
                             if k in state and state[k].shape != v.shape]}


def load_state_strict(module: nn.Module, state: dict[str, Tensor], path: str | os.PathLike | None, knob: str, *,
                      expected: str, fix: str) -> None:
    """``module.load_state_dict(state, strict=True)``, but a mismatch is one ConfigError line on ``knob``:
    ``'<path>' is not a <expected>: missing keys [...], unexpected keys [...], wrong shapes [...]``."""
    problems = [f"{what} {_few(names)}" for what, names in state_mismatch(module.state_dict(), state).items() if names]
    if problems:
        raise ConfigError(knob, f"{os.fspath(path)!r} is not a {expected}: {', '.join(problems)}", fix=fix)
    module.load_state_dict(state, strict=True)


def freeze(module: nn.Module) -> nn.Module:
    """requires_grad False on every parameter and eval mode; returns ``module``. (Modules that must stay in
    eval also override ``train()``; gradients still flow through them to their inputs.)"""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def gray_to_rgb(x: Tensor, who: str) -> Tensor:
    """x (B, C, H, W) with C in {1, 3} -> (B, 3, H, W): gray is repeated to three channels."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{who} expects images (B, 1 or 3, H, W), got {tuple(x.shape)}")
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _read_safetensors(file: str, keep: Callable[[str], bool], knob: str, *, user: str, expected: str,
                      fix: str) -> dict[str, Tensor]:
    """Only the tensors whose key passes ``keep`` are read from disk (a full SigLIP2 file also holds its text tower)."""
    from safetensors import safe_open  # imported here: only a safetensors file needs it

    try:
        with safe_open(file, framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys() if keep(key)}
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(knob, f"{file!r} is not a readable safetensors file ({_first_line(err)}); {user} needs a "
                          f"local {expected}", fix=fix) from err


def _read_folder(folder: str, keep: Callable[[str], bool], knob: str, *, user: str, expected: str,
                 fix: str) -> dict[str, Tensor]:
    single = os.path.join(folder, SAFETENSORS_FILE)
    if os.path.isfile(single):
        return _read_safetensors(single, keep, knob, user=user, expected=expected, fix=fix)
    index = os.path.join(folder, SAFETENSORS_INDEX)
    if not os.path.isfile(index):
        raise ConfigError(knob, f"{folder!r} holds neither {SAFETENSORS_FILE} nor {SAFETENSORS_INDEX}; {user} needs "
                          f"a local {expected}, nothing is downloaded", fix=fix)
    try:
        with open(index, encoding="utf-8") as handle:
            weight_map = json.load(handle)["weight_map"]
        shards = sorted({str(shard) for key, shard in weight_map.items() if keep(key)})
    except Exception as err:  # noqa: BLE001 - any unreadable index is the same user error
        raise ConfigError(knob, f"{index!r} is not a readable shard index ({_first_line(err)}); {user} needs a local "
                          f"{expected}", fix=fix) from err
    state: dict[str, Tensor] = {}
    for shard in shards:
        file = os.path.join(folder, shard)
        if not os.path.isfile(file):
            raise ConfigError(knob, f"{file!r} not found (a shard named in {SAFETENSORS_INDEX}); {user} needs a "
                              f"local {expected}, nothing is downloaded", fix=fix)
        state.update(_read_safetensors(file, keep, knob, user=user, expected=expected, fix=fix))
    return state


def read_weights(path: str | os.PathLike | None, knob: str, *, user: str, expected: str, fix: str,
                 keep: Callable[[str], bool] | None = None) -> dict[str, Tensor]:
    """Tensors of a model folder, a ``.safetensors`` file or a torch state dict (see the module docstring).

    Args:
        path: the folder or file; None or a missing path raises ConfigError on ``knob``.
        knob: the caller's argument name, used by every error.
        user: who needs the file, for the messages (e.g. ``"the SigLIP2 encoder"``).
        expected: what to get, for the messages (e.g. ``"google/siglip2-so400m-patch16-naflex folder"``).
        fix: the ``fix=`` of every error.
        keep: which keys to return (default all); a safetensors file reads only those from disk.

    Returns:
        ``{key: tensor}`` on the CPU, in the stored dtype.
    """
    keep = keep or (lambda key: True)
    if path is not None and os.path.isdir(os.fspath(path)):
        return _read_folder(os.fspath(path), keep, knob, user=user, expected=expected, fix=fix)
    if path is not None and os.fspath(path).endswith(".safetensors") and os.path.isfile(os.fspath(path)):
        return _read_safetensors(os.fspath(path), keep, knob, user=user, expected=expected, fix=fix)
    state = read_state_file(path, knob, user=user, expected=expected, fix=fix)
    return {key: value for key, value in state.items() if keep(key)}


def read_folder_config(path: str | os.PathLike | None, knob: str, *, fix: str) -> dict | None:
    """The parsed ``config.json`` of a model folder; None for a file, a missing path or a folder without one."""
    if path is None or not os.path.isdir(os.fspath(path)):
        return None
    file = os.path.join(os.fspath(path), CONFIG_FILE)
    if not os.path.isfile(file):
        return None
    try:
        with open(file, encoding="utf-8") as handle:
            config = json.load(handle)
    except Exception as err:  # noqa: BLE001 - any unreadable config is the same user error
        raise ConfigError(knob, f"{file!r} is not readable JSON ({_first_line(err)})", fix=fix) from err
    if not isinstance(config, dict):
        raise ConfigError(knob, f"{file!r} holds a {type(config).__name__}, not a JSON object", fix=fix)
    return config
