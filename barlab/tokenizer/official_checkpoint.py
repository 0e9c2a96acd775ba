"""Released official BAR-FSQ tokenizer weights (noctrog/BAR ``modeling/tokenizer.py`` ``BAR_FSQ``, e.g.
``bar_fsq_16bits.bin``) as the state dict of barlab's ``tokenizer=bar_fsq_paper``. Pure tensor mapping.

The official file is the plain ``state_dict()`` of ``BAR_FSQ(config)``::

    official                                          barlab (Tokenizer)
    encoder.siglip.embeddings.*                       encoder.embeddings.*        (frozen, kept: encoding needs it)
    encoder.trainable_encoder.layers.N.*              encoder.encoder.layers.N.*
    encoder.trainable_post_layernorm.*                encoder.post_layernorm.*
    quantize.in_proj.{weight (k, D), bias}            quantizer.proj_in.{weight (k, D, 1, 1), bias}
    quantize.out_proj.{weight (D_out, k), bias}       quantizer.proj_out.{weight (D_out, k, 1, 1), bias}
    decoder.clip_projector.{0,2,4}.*                  decoder.distill_projector.{0,2,4}.*
    decoder.* (everything else)                       decoder.* (the same names)

    encoder.siglip.{encoder,post_layernorm,head}.*, encoder.frozen_encoder.*, encoder.frozen_post_layernorm.*:
        the frozen SigLIP2 (the distillation teacher and its unused pooling head): not part of barlab's
        tokenizer, which reads the teacher from the SigLIP2 folder when it trains; dropped.

Any other key is refused in one line naming it; missing keys and shapes are checked by the caller's
strict load into the preset's tokenizer.
"""

from __future__ import annotations

import math

from torch import Tensor

from barlab.errors import CheckpointError

TEACHER_PREFIXES = ("encoder.siglip.encoder.", "encoder.siglip.post_layernorm.", "encoder.siglip.head.",
                    "encoder.frozen_encoder.", "encoder.frozen_post_layernorm.")
RENAMES = (("encoder.siglip.embeddings.", "encoder.embeddings."),
           ("encoder.trainable_encoder.", "encoder.encoder."),
           ("encoder.trainable_post_layernorm.", "encoder.post_layernorm."),
           ("quantize.in_proj.", "quantizer.proj_in."),
           ("quantize.out_proj.", "quantizer.proj_out."),
           ("decoder.clip_projector.", "decoder.distill_projector."),
           ("decoder.", "decoder."))


def is_official_tokenizer(state: dict[str, Tensor]) -> bool:
    """Whether ``state`` is an official ``BAR_FSQ`` state dict (it has the FSQ's input projection)."""
    return "quantize.in_proj.weight" in state


def official_tokenizer_sizes(state: dict[str, Tensor]) -> dict[str, int]:
    """``{"bits", "grid", "encoder_depth", "decoder_depth"}`` read from the key shapes (one line if absent)."""
    try:
        bits = int(state["quantize.in_proj.weight"].shape[0])
        tokens = int(state["decoder.positional_embedding"].shape[0]) - 1
    except KeyError as err:
        raise CheckpointError(f"missing key {err.args[0]!r}: not an official BAR_FSQ state dict") from None
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise CheckpointError(f"key 'decoder.positional_embedding' has {tokens + 1} rows, not 1 + a square grid")

    def depth(prefix: str) -> int:
        return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})

    return {"bits": bits, "grid": grid, "encoder_depth": depth("encoder.trainable_encoder.layers."),
            "decoder_depth": depth("decoder.transformer.")}


def official_tokenizer_to_barlab(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The official ``BAR_FSQ`` state dict -> barlab's ``Tokenizer`` state dict (views, no copies)."""
    mapped: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(TEACHER_PREFIXES):
            continue
        new = next((to + key[len(old):] for old, to in RENAMES if key.startswith(old)), None)
        if new is None:
            raise CheckpointError(f"unexpected key {key!r}: not part of an official BAR_FSQ state dict")
        if new in ("quantizer.proj_in.weight", "quantizer.proj_out.weight"):
            value = value[:, :, None, None]  # nn.Linear (out, in) -> 1x1 conv (out, in, 1, 1)
        mapped[new] = value
    return mapped
