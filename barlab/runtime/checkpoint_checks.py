"""Checks that a Lightning checkpoint fits the run that is about to resume from it.

Every barlab Lightning checkpoint carries an identity under ``checkpoint["barlab"]``: the stage and
the facts that decide the model's shape, keyed by the knob that sets them (``head``,
``tokenizer.bits``, ``generator.backbone.width``, ...). The modules write it in
``on_save_checkpoint`` from ``checkpoint_identity()``. Before ``trainer.fit`` resumes,
:func:`check_resume_checkpoint` compares it with the module about to train and names what differs,
in one line; then it compares the tensor names and shapes (which also covers checkpoints written
before identities existed). Nothing is written, and the file is read with ``mmap`` so only its
pickled structure is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from torch import nn

from barlab.errors import CheckpointError
from barlab.utils.io import describe_payload, load_torch_file

IDENTITY_KEY = "barlab"
QUANTIZER_OPTIONS = {"BinaryFSQ": "binary_fsq", "FSQ": "fsq", "KLLatent": "kl"}


def tokenizer_identity(tokenizer: nn.Module) -> dict[str, Any]:
    """Facts of a :class:`barlab.tokenizer.Tokenizer` that decide its weights' shapes and its codes."""
    q = tokenizer.quantizer
    name = type(q).__name__
    facts: dict[str, Any] = {"tokenizer/quantizer": QUANTIZER_OPTIONS.get(name, name),
                             "tokenizer.bits": int(q.bits_per_token)}
    if hasattr(q, "levels"):
        facts["tokenizer.quantizer.levels"] = [int(level) for level in q.levels]
    facts["tokenizer.latent_channels"] = int(q.latent_channels)
    if getattr(q, "out_channels", q.latent_channels) != q.latent_channels:  # BAR-FSQ: 1152 -> k -> 1024
        facts["tokenizer.quantizer.out_channels"] = int(q.out_channels)
    facts["tokenizer.encoder.downsample"] = int(tokenizer.encoder.downsample)
    facts["data.channels"] = int(tokenizer.encoder.in_channels)
    return facts


def head_identity(head: nn.Module) -> dict[str, Any]:
    """The ``head=`` option of a head module (``MBMHead`` -> ``mbm``) and its size knobs."""
    facts: dict[str, Any] = {"head": type(head).__name__.removesuffix("Head").lower()}
    if hasattr(head, "blocks"):  # MBM
        facts["head.width"] = int(head.width)
        facts["head.depth"] = len(head.blocks)
    if hasattr(head, "allocation"):
        facts["head.allocation"] = [int(a) for a in head.allocation]
    if isinstance(getattr(head, "net", None), nn.Sequential):  # bitwise with a hidden layer
        facts["head.hidden"] = int(head.net[0].out_features)
        facts["head.depth"] = sum(isinstance(m, nn.Linear) for m in head.net) - 1
    return facts


def _show(facts: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k}={_value(facts.get(k))}" for k in keys)


def _value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    return "unset" if value is None else str(value)


def _stage_of(payload: dict) -> str | None:
    """The stage a checkpoint was written by: its identity, else guessed from its tensor names."""
    identity = payload.get(IDENTITY_KEY)
    if isinstance(identity, dict) and identity.get("stage"):
        return str(identity["stage"])
    keys = payload.get("state_dict") or {}
    if any(k.startswith("backbone.") for k in keys):
        return "generator"
    if any(k.startswith("tokenizer.") for k in keys):
        return "tokenizer"
    return None


def _shape_mismatch(saved: dict, module: L.LightningModule) -> str | None:
    """How the checkpoint's tensors differ from ``module.state_dict()`` (names and shapes), or None."""
    here = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    there = {k: tuple(getattr(v, "shape", ())) for k, v in saved.items()}
    missing = [k for k in here if k not in there]
    extra = [k for k in there if k not in here]
    shapes = [k for k in here if k in there and here[k] != there[k]]
    if shapes:
        k = shapes[0]
        return (f"{len(shapes)} tensor(s) have other shapes, e.g. {k} is {list(there[k])} in the checkpoint "
                f"and {list(here[k])} in this run")
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensor(s) of this run are missing from it (e.g. {missing[0]})")
        if extra:
            parts.append(f"{len(extra)} tensor(s) in it are unknown to this run (e.g. {extra[0]})")
        return "; ".join(parts)
    return None


def check_resume_checkpoint(path: str | Path, stage: str, module: L.LightningModule) -> None:
    """Raise :class:`barlab.errors.CheckpointError` (file + mismatch, one line) if ``path`` cannot resume ``module``."""
    label = f"checkpoint {path}"
    afresh = f"ckpt_path=<run>/checkpoints/{stage}/last.ckpt of a run with these settings, or start afresh " \
             "in a new run folder without ckpt_path"
    payload = load_torch_file(path, label, afresh, mmap=True)
    if not isinstance(payload, dict) or not isinstance(payload.get("state_dict"), dict):
        raise CheckpointError(f"{label}: this is {describe_payload(payload)}, not a Lightning training checkpoint "
                              f"(fix: {afresh})")
    saved_stage = _stage_of(payload)
    if saved_stage is not None and saved_stage != stage:
        raise CheckpointError(f"{label}: this is a checkpoint of the {saved_stage} stage; stage={stage} needs one "
                              f"of the {stage} stage (fix: ckpt_path=<run>/checkpoints/{stage}/last.ckpt)")

    identity = payload.get(IDENTITY_KEY)
    current = module.checkpoint_identity() if hasattr(module, "checkpoint_identity") else None
    if isinstance(identity, dict) and current is not None:
        differ = [k for k in dict.fromkeys([*current, *identity]) if _value(identity.get(k)) != _value(current.get(k))]
        differ = [k for k in differ if not any(k.startswith(f"{d}.") for d in differ)]  # head=, not head.width=
        if differ:
            raise CheckpointError(f"{label}: it was trained with {_show(identity, differ)}; this run has "
                                  f"{_show(current, differ)} (fix: rerun with {_show(identity, differ)} to continue "
                                  f"it, or start afresh in a new run folder without ckpt_path)")

    mismatch = _shape_mismatch(payload["state_dict"], module)
    if mismatch is not None:
        raise CheckpointError(f"{label}: its weights do not fit this run's model: {mismatch} "
                              f"(fix: rerun with the settings it was trained with, or {afresh})")
