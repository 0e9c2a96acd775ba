"""Released official BAR generator weights (noctrog/BAR ``modeling/generator.py``, e.g. ``bar_b.bin``) as
barlab's backbone + MBM head state dicts. Pure tensor mapping: nothing is read from disk here.

The official file is the plain ``state_dict()`` of ``BAR(config)``. Its sizes are read from key shapes
(:func:`read_official_geometry`), the whole official key layout of those sizes is rebuilt
(:func:`official_layout`) and compared with the file: any missing, unexpected or mis-shaped key is one
:class:`~barlab.errors.CheckpointError` line naming it. Then every tensor is moved to its barlab key
(:func:`convert_official_state`). D = width, hd = head dim, H = SwiGLU hidden, N = AR steps, P = 1 +
class_repeat, W = head width, k' = bits per AR step::

    official                                   barlab (backbone)
    cls_token (1, 1, D)                        prefix.cls (D)
    pos_embed (1, N + 128, D)                  prefix.pos = [0, :P]; pos.table = [0, P:P+N]  (rest unused)
    target_aware_pos_embed (1, N + 128, D)     pos.target_table = [0, P:P+N]                  (rest unused)
    timesteps_embeddings (1, N + 100, D)       timestep = [0, :P+N-1]                         (rest unused)
    embeddings.weight (2 + 1 + C + 1, D)       prefix.classes.weight = [3:]  (official id = class + 3;
                                               its null id C + 3 -> barlab's null class C; rows 0..2 unused)
    input_embeddings.weight, input_merge.*     bit_embed.table.weight, bit_embed.proj.*
    blocks.i.attn.qkv.{weight,bias}            blocks.i.attn.qkv.*, q and k rows of every head permuted (RoPE)
    blocks.i.attn.{q,k}_norm.weight            blocks.i.attn.{q,k}_norm.weight, permuted the same way
    blocks.i.attn.rope.freqs_{cos,sin}         dropped (a fixed table, recomputed by barlab's Rope2D;
                                               checked against the official formula)
    blocks.i.mlp.w12.{weight,bias} (2H, ..)    blocks.i.mlp.w1.* = [:H] (gate, silu), blocks.i.mlp.w2.* = [H:]
    blocks.i.adaLN_modulation.1.*              blocks.i.ada.1.*  (same chunk order)
    blocks.i.{norm1,norm2,attn.proj,mlp.w3}.*  the same names
    norm.weight, latent_condition_proj.*       norm.weight, out.*

    official                                   barlab (MBM head)
    lm_head.input_embed.weight                 bit_embed.weight
    lm_head.input_proj.*, lm_head.ln_pre.*     in_proj.*, in_norm.*
    lm_head.t_embedder.W, .mlp.{0,2}.*         fourier.freqs, t_mlp.{0,2}.*
    lm_head.transformer.j.in_ln.weight         blocks.j.norm.weight
    lm_head.transformer.j.mlp.w12 / w3         blocks.j.mlp.w1 + w2 (split as above) / w3
    lm_head.transformer.j.adaLN_modulation.1   blocks.j.ada.1  (same chunk order: shift, scale, gate)
    lm_head.adaln_before_head.norm_final       final_norm
    lm_head.adaln_before_head.adaLN_modulation.1  final_ada.1, halves swapped: official (scale, shift),
                                               barlab (shift, scale)
    lm_head.output_embed.*                     out.*  (same (k', 2) layout)

RoPE: the official rotation pairs dims (2j, 2j+1) of a head, barlab's pairs (j, j + hd/2), with the same
angle for pair j in both (rows then columns, the same frequencies). So barlab dim b holds official dim
``2b`` for b < hd/2 and ``2(b - hd/2) + 1`` otherwise (:func:`rope_permutation`); q·k is unchanged when
q and k are both permuted, and v is not touched.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from barlab.errors import CheckpointError

# the official model's fixed extra rows of its position tables (modeling/generator.py)
POS_EXTRA_ROWS = 128
TIMESTEP_EXTRA_ROWS = 100
# the official condition ids: 0 .. target_codebook_size (bit ids and mask), then the classes, then the null class
CLASS_OFFSET = 3
NUM_BIT_IDS = 3  # {0, 1, [M]}: the official target_codebook_size 2, plus its mask id
ROPE_THETA = 10000.0

# barlab generator preset -> the official sizes it holds (official configs/generator/bar_*.yaml; the
# 16-bit tokenizer on a 16 x 16 grid: k' = 16 p^2 bits, N = 256 / p^2 AR steps)
OFFICIAL_PRESETS = {
    "bar_b": {"width": 768, "depth": 24, "heads": 12, "bits_per_step": 16, "seq_len": 256},
    "bar_b_p2": {"width": 768, "depth": 24, "heads": 12, "bits_per_step": 64, "seq_len": 64},
    "bar_b_p4": {"width": 768, "depth": 24, "heads": 12, "bits_per_step": 256, "seq_len": 16},
    "bar_l": {"width": 1280, "depth": 32, "heads": 16, "bits_per_step": 16, "seq_len": 256},
}
PRESET_COMMON = {"class_repeat": 32, "num_classes": 1000, "head_width": 2048, "head_depth": 3}
# barlab's SwiGLU hidden sizes: int(2/3 * mlp_ratio * width) in the backbone, int(mlp_ratio * width) in the head
BACKBONE_MLP_RATIO = 4.0
HEAD_MLP_RATIO = 8 / 3


@dataclass(frozen=True)
class OfficialGeometry:
    """The sizes of an official BAR generator, read from its key shapes."""

    width: int
    depth: int
    heads: int
    bits_per_step: int
    seq_len: int
    class_repeat: int
    num_classes: int
    mlp_hidden: int
    head_width: int
    head_depth: int
    head_hidden: int
    fourier_dim: int

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def prefix_len(self) -> int:
        return 1 + self.class_repeat

    @property
    def grid(self) -> tuple[int, int]:
        """The AR grid (h, w): the official 2D RoPE needs a square one."""
        side = math.isqrt(self.seq_len)
        return side, side

    def backbone_kwargs(self) -> dict:
        """``ARBackbone`` arguments of these sizes (cond_dim = the head width, as the official
        ``latent_condition_proj``)."""
        return {"bits_per_step": self.bits_per_step, "grid": self.grid, "num_classes": self.num_classes,
                "width": self.width, "depth": self.depth, "heads": self.heads, "cond_dim": self.head_width,
                "class_repeat": self.class_repeat, "mlp_ratio": BACKBONE_MLP_RATIO, "qkv_bias": True}

    def head_kwargs(self) -> dict:
        """``MBMHead`` arguments of these sizes."""
        return {"cond_dim": self.head_width, "bits_per_step": self.bits_per_step, "width": self.head_width,
                "depth": self.head_depth, "mlp_ratio": HEAD_MLP_RATIO, "fourier_dim": self.fourier_dim}


def _fail(message: str) -> CheckpointError:
    return CheckpointError(f"official generator weights: {message}")


def _shape(state: dict[str, Tensor], key: str, ndim: int) -> tuple[int, ...]:
    if key not in state:
        raise _fail(f"missing key {key!r} (not a state dict of the official modeling/generator.py BAR)")
    value = state[key]
    if not isinstance(value, Tensor) or value.ndim != ndim:
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise _fail(f"key {key!r} has shape {got}, expected {ndim} dims")
    return tuple(value.shape)


def _count(state: dict[str, Tensor], prefix: str) -> int:
    """1 + the largest i of the keys ``<prefix>.<i>.*`` (0 if none)."""
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    found = [int(m.group(1)) for m in (pattern.match(k) for k in state) if m]
    return max(found) + 1 if found else 0


def read_official_geometry(state: dict[str, Tensor]) -> OfficialGeometry:
    """Sizes from key shapes: width (cls_token), depth (blocks.*), head dim (q_norm), bits per step
    (lm_head.output_embed rows / 2), N (pos_embed rows - 128), class_repeat (RoPE table rows - 1 - N),
    classes (embeddings rows - 4), SwiGLU hidden sizes (w3), head width/depth, Fourier features."""
    if not isinstance(state, dict) or not state:
        raise _fail(f"expected a non-empty dict of tensors, got {type(state).__name__}")
    width = _shape(state, "cls_token", 3)[-1]
    depth = _count(state, "blocks")
    if depth < 1:
        raise _fail("no 'blocks.<i>.' keys (not a state dict of the official modeling/generator.py BAR)")
    head_dim = _shape(state, "blocks.0.attn.q_norm.weight", 1)[0]
    if head_dim < 1 or width % head_dim:
        raise _fail(f"key 'blocks.0.attn.q_norm.weight' has {head_dim} dims, which do not divide the width {width}")
    out_rows = _shape(state, "lm_head.output_embed.weight", 2)[0]
    if out_rows % 2:
        raise _fail(f"key 'lm_head.output_embed.weight' has {out_rows} rows, expected 2 x bits per step")
    seq_len = _shape(state, "pos_embed", 3)[1] - POS_EXTRA_ROWS
    rope_rows = _shape(state, "blocks.0.attn.rope.freqs_cos", 2)[0]
    class_repeat = rope_rows - 1 - seq_len
    num_classes = _shape(state, "embeddings.weight", 2)[0] - CLASS_OFFSET - 1
    head_depth = _count(state, "lm_head.transformer")
    geometry = OfficialGeometry(
        width=width, depth=depth, heads=width // head_dim, bits_per_step=out_rows // 2, seq_len=seq_len,
        class_repeat=class_repeat, num_classes=num_classes,
        mlp_hidden=_shape(state, "blocks.0.mlp.w3.weight", 2)[1],
        head_width=_shape(state, "lm_head.ln_pre.weight", 1)[0], head_depth=head_depth,
        head_hidden=_shape(state, "lm_head.transformer.0.mlp.w3.weight", 2)[1] if head_depth else 0,
        fourier_dim=_shape(state, "lm_head.t_embedder.W", 1)[0])
    _check_geometry(geometry)
    return geometry


def _check_geometry(g: OfficialGeometry) -> None:
    """Sizes barlab's modules can hold exactly (else one line saying which)."""
    if g.seq_len < 1 or math.isqrt(g.seq_len) ** 2 != g.seq_len:
        raise _fail(f"key 'pos_embed' gives {g.seq_len} AR steps (rows - {POS_EXTRA_ROWS}), not a square grid")
    if g.class_repeat < 0:
        raise _fail(f"key 'blocks.0.attn.rope.freqs_cos' has {g.prefix_len + g.seq_len} rows, fewer than "
                    f"1 + {g.seq_len} (the [CLS] slot and the AR steps)")
    if g.num_classes < 1:
        raise _fail("key 'embeddings.weight' has too few rows for 3 bit ids, a class and the null class")
    if g.heads % 2 or g.head_dim % 4:
        raise _fail(f"width {g.width} / head dim {g.head_dim}: target-aware 2D RoPE needs an even number of heads "
                    "and a head dim divisible by 4")
    if int(2 / 3 * BACKBONE_MLP_RATIO * g.width) != g.mlp_hidden:
        raise _fail(f"key 'blocks.0.mlp.w3.weight': SwiGLU hidden {g.mlp_hidden} != barlab's "
                    f"int(2/3 * 4 * {g.width}) = {int(2 / 3 * BACKBONE_MLP_RATIO * g.width)}")
    if g.head_depth and int(HEAD_MLP_RATIO * g.head_width) != g.head_hidden:
        raise _fail(f"key 'lm_head.transformer.0.mlp.w3.weight': SwiGLU hidden {g.head_hidden} != barlab's "
                    f"int(8/3 * {g.head_width}) = {int(HEAD_MLP_RATIO * g.head_width)}")


def official_layout(g: OfficialGeometry) -> dict[str, tuple[int, ...]]:
    """Every key of the official ``BAR(config).state_dict()`` of these sizes -> its shape, in its order."""
    d, n, w, k = g.width, g.seq_len, g.head_width, g.bits_per_step
    bit_dim, head_bit_dim = math.ceil(d / k), math.ceil(w / k)
    layout: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, n + POS_EXTRA_ROWS, d),
        "target_aware_pos_embed": (1, n + POS_EXTRA_ROWS, d),
        "timesteps_embeddings": (1, n + TIMESTEP_EXTRA_ROWS, d),
    }
    for i in range(g.depth):
        b = f"blocks.{i}."
        layout.update({
            b + "norm1.weight": (d,),
            b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
            b + "attn.q_norm.weight": (g.head_dim,), b + "attn.k_norm.weight": (g.head_dim,),
            b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
            b + "attn.rope.freqs_cos": (g.prefix_len + n, g.head_dim),
            b + "attn.rope.freqs_sin": (g.prefix_len + n, g.head_dim),
            b + "norm2.weight": (d,),
            b + "mlp.w12.weight": (2 * g.mlp_hidden, d), b + "mlp.w12.bias": (2 * g.mlp_hidden,),
            b + "mlp.w3.weight": (d, g.mlp_hidden), b + "mlp.w3.bias": (d,),
            b + "adaLN_modulation.1.weight": (6 * d, d), b + "adaLN_modulation.1.bias": (6 * d,),
        })
    layout.update({
        "norm.weight": (d,),
        "lm_head.input_embed.weight": (NUM_BIT_IDS, head_bit_dim),
        "lm_head.input_proj.weight": (w, head_bit_dim * k), "lm_head.input_proj.bias": (w,),
        "lm_head.ln_pre.weight": (w,),
    })
    for j in range(g.head_depth):
        b = f"lm_head.transformer.{j}."
        layout.update({
            b + "in_ln.weight": (w,),
            b + "mlp.w12.weight": (2 * g.head_hidden, w), b + "mlp.w12.bias": (2 * g.head_hidden,),
            b + "mlp.w3.weight": (w, g.head_hidden), b + "mlp.w3.bias": (w,),
            b + "adaLN_modulation.1.weight": (3 * w, w), b + "adaLN_modulation.1.bias": (3 * w,),
        })
    layout.update({
        "lm_head.output_embed.weight": (2 * k, w), "lm_head.output_embed.bias": (2 * k,),
        "lm_head.t_embedder.W": (g.fourier_dim,),
        "lm_head.t_embedder.mlp.0.weight": (w, 2 * g.fourier_dim), "lm_head.t_embedder.mlp.0.bias": (w,),
        "lm_head.t_embedder.mlp.2.weight": (w, w), "lm_head.t_embedder.mlp.2.bias": (w,),
        "lm_head.adaln_before_head.norm_final.weight": (w,),
        "lm_head.adaln_before_head.adaLN_modulation.1.weight": (2 * w, w),
        "lm_head.adaln_before_head.adaLN_modulation.1.bias": (2 * w,),
        "latent_condition_proj.weight": (w, d), "latent_condition_proj.bias": (w,),
        "embeddings.weight": (CLASS_OFFSET + g.num_classes + 1, d),
        "input_embeddings.weight": (NUM_BIT_IDS, bit_dim),
        "input_merge.weight": (d, bit_dim * k), "input_merge.bias": (d,),
    })
    return layout


def check_official_keys(state: dict[str, Tensor], g: OfficialGeometry) -> None:
    """The state dict holds exactly :func:`official_layout`'s keys and shapes; else one line naming the
    first missing, unexpected or mis-shaped key (and how many more there are)."""
    layout = official_layout(g)
    sizes = (f"width {g.width}, depth {g.depth}, {g.bits_per_step} bits x {g.seq_len} steps, "
             f"head {g.head_width} x {g.head_depth}")
    missing = [key for key in layout if key not in state]
    unexpected = [key for key in state if key not in layout]
    wrong = [key for key in layout if key in state and
             (not isinstance(state[key], Tensor) or tuple(state[key].shape) != layout[key])]
    for names, what in ((missing, "missing key"), (unexpected, "unexpected key"), (wrong, "wrong shape of key")):
        if names:
            key = names[0]
            detail = ""
            if what == "wrong shape of key":
                got = tuple(state[key].shape) if isinstance(state[key], Tensor) else type(state[key]).__name__
                detail = f": {got}, expected {layout[key]}"
            more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
            raise _fail(f"{what} {key!r}{detail}{more}, for the sizes its other keys give ({sizes})")


def rope_permutation(head_dim: int) -> Tensor:
    """perm (head_dim,) long: barlab dim b of a head = official dim perm[b] = [0, 2, .., hd-2, 1, 3, .., hd-1]."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def official_rope_table(g: OfficialGeometry) -> tuple[Tensor, Tensor]:
    """The official ``VisionRotaryEmbeddingFast`` cos/sin tables (P + N, hd), float32: P identity rows,
    then per raster position the angles [row·f_j, row·f_j, ..., col·f_j, col·f_j, ...] (each twice, interleaved),
    f_j = theta^(-j / (hd/4))."""
    quarter = g.head_dim // 4
    freqs = 1.0 / ROPE_THETA ** (torch.arange(0, 2 * quarter, 2)[:quarter].float() / (2 * quarter))
    side = g.grid[0]
    per_axis = (torch.arange(side).float()[:, None] * freqs).repeat_interleave(2, dim=-1)   # (side, hd/2)
    angles = torch.cat([per_axis[:, None, :].expand(side, side, -1), per_axis[None, :, :].expand(side, side, -1)],
                       dim=-1).reshape(side * side, -1)
    pad = g.prefix_len
    cos = torch.cat([torch.ones(pad, g.head_dim), angles.cos()])
    sin = torch.cat([torch.zeros(pad, g.head_dim), angles.sin()])
    return cos, sin


def _check_rope_tables(state: dict[str, Tensor], g: OfficialGeometry, atol: float = 1e-3) -> None:
    """The dropped RoPE buffers are the fixed table barlab recomputes (skipped for meta tensors)."""
    cos, sin = None, None
    for i in range(g.depth):
        for name in ("freqs_cos", "freqs_sin"):
            key = f"blocks.{i}.attn.rope.{name}"
            value = state[key]
            if value.is_meta:
                continue
            if cos is None:
                cos, sin = official_rope_table(g)
            want = cos if name == "freqs_cos" else sin
            if not torch.allclose(value.detach().float().cpu(), want, atol=atol, rtol=0):
                raise _fail(f"key {key!r} is not the official RoPE table of a {g.grid[0]}x{g.grid[1]} grid with "
                            f"{g.prefix_len} prefix slots")


def _permute_qk_rows(t: Tensor, g: OfficialGeometry) -> Tensor:
    """qkv weight (3D, D) or bias (3D,): rows of q and k permuted within each head, v unchanged."""
    perm = rope_permutation(g.head_dim).to(t.device)
    heads = t.reshape(3, g.heads, g.head_dim, *t.shape[1:])
    q, k, v = heads[0][:, perm], heads[1][:, perm], heads[2]
    return torch.stack([q, k, v]).reshape(t.shape)


def convert_official_state(state: dict[str, Tensor], g: OfficialGeometry,
                           copy: bool = True) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Official tensors -> (barlab ARBackbone state, barlab MBMHead state); see the module doc. ``copy``:
    every output tensor is a fresh copy; else slices stay views of the official tensors (no second copy of
    the weights in memory; ``torch.save`` then writes each shared storage once)."""
    p, n = g.prefix_len, g.seq_len
    perm = rope_permutation(g.head_dim)
    bb: dict[str, Tensor] = {
        "timestep": state["timesteps_embeddings"][0, :p + n - 1],
        "prefix.cls": state["cls_token"].reshape(g.width),
        "prefix.pos": state["pos_embed"][0, :p],
        "prefix.classes.weight": state["embeddings.weight"][CLASS_OFFSET:],
        "bit_embed.table.weight": state["input_embeddings.weight"],
        "bit_embed.proj.weight": state["input_merge.weight"],
        "bit_embed.proj.bias": state["input_merge.bias"],
        "pos.table": state["pos_embed"][0, p:p + n],
        "pos.target_table": state["target_aware_pos_embed"][0, p:p + n],
    }
    for i in range(g.depth):
        o, b = f"blocks.{i}.", f"blocks.{i}."
        bb[b + "norm1.weight"] = state[o + "norm1.weight"]
        bb[b + "attn.qkv.weight"] = _permute_qk_rows(state[o + "attn.qkv.weight"], g)
        bb[b + "attn.qkv.bias"] = _permute_qk_rows(state[o + "attn.qkv.bias"], g)
        bb[b + "attn.q_norm.weight"] = state[o + "attn.q_norm.weight"][perm.to(state[o + "attn.q_norm.weight"].device)]
        bb[b + "attn.k_norm.weight"] = state[o + "attn.k_norm.weight"][perm.to(state[o + "attn.k_norm.weight"].device)]
        bb[b + "attn.proj.weight"] = state[o + "attn.proj.weight"]
        bb[b + "attn.proj.bias"] = state[o + "attn.proj.bias"]
        bb[b + "norm2.weight"] = state[o + "norm2.weight"]
        _split_swiglu(state, o + "mlp.", bb, b + "mlp.", g.mlp_hidden)
        bb[b + "ada.1.weight"] = state[o + "adaLN_modulation.1.weight"]
        bb[b + "ada.1.bias"] = state[o + "adaLN_modulation.1.bias"]
    bb["norm.weight"] = state["norm.weight"]
    bb["out.weight"] = state["latent_condition_proj.weight"]
    bb["out.bias"] = state["latent_condition_proj.bias"]

    w, o = g.head_width, "lm_head."
    head: dict[str, Tensor] = {
        "bit_embed.weight": state[o + "input_embed.weight"],
        "in_proj.weight": state[o + "input_proj.weight"],
        "in_proj.bias": state[o + "input_proj.bias"],
        "fourier.freqs": state[o + "t_embedder.W"],
        "t_mlp.0.weight": state[o + "t_embedder.mlp.0.weight"],
        "t_mlp.0.bias": state[o + "t_embedder.mlp.0.bias"],
        "t_mlp.2.weight": state[o + "t_embedder.mlp.2.weight"],
        "t_mlp.2.bias": state[o + "t_embedder.mlp.2.bias"],
        "in_norm.weight": state[o + "ln_pre.weight"],
    }
    for j in range(g.head_depth):
        t, b = f"{o}transformer.{j}.", f"blocks.{j}."
        head[b + "norm.weight"] = state[t + "in_ln.weight"]
        head[b + "ada.1.weight"] = state[t + "adaLN_modulation.1.weight"]
        head[b + "ada.1.bias"] = state[t + "adaLN_modulation.1.bias"]
        _split_swiglu(state, t + "mlp.", head, b + "mlp.", g.head_hidden)
    final = o + "adaln_before_head."
    head["final_norm.weight"] = state[final + "norm_final.weight"]
    for name in ("weight", "bias"):  # official chunks (scale, shift) -> barlab's (shift, scale)
        scale, shift = state[final + f"adaLN_modulation.1.{name}"].split(w)
        head[f"final_ada.1.{name}"] = torch.cat([shift, scale])
    head["out.weight"] = state[o + "output_embed.weight"]
    head["out.bias"] = state[o + "output_embed.bias"]
    if not copy:
        return bb, head
    fresh = lambda d: {key: value.detach().clone() for key, value in d.items()}  # noqa: E731
    return fresh(bb), fresh(head)


def _split_swiglu(state: dict[str, Tensor], src: str, out: dict[str, Tensor], dst: str, hidden: int) -> None:
    """Official ``w12`` (2H, ..) -> barlab ``w1`` = rows [:H] (the silu gate), ``w2`` = rows [H:]; ``w3`` as is."""
    for name in ("weight", "bias"):
        gate, value = state[f"{src}w12.{name}"].split(hidden)
        out[f"{dst}w1.{name}"], out[f"{dst}w2.{name}"] = gate, value
        out[f"{dst}w3.{name}"] = state[f"{src}w3.{name}"]


def official_preset(g: OfficialGeometry) -> str | None:
    """The barlab generator preset (configs/generator/<name>.yaml) holding these sizes, or None."""
    for name, sizes in OFFICIAL_PRESETS.items():
        facts = {**PRESET_COMMON, **sizes}
        if all(getattr(g, key) == value for key, value in facts.items()):
            return name
    return None


# where each preset fact is read from, for messages
FACT_KEYS = {"width": "cls_token", "depth": "blocks.<i>.*", "heads": "blocks.0.attn.q_norm.weight",
             "bits_per_step": "lm_head.output_embed.weight", "seq_len": "pos_embed",
             "class_repeat": "blocks.0.attn.rope.freqs_cos", "num_classes": "embeddings.weight",
             "head_width": "lm_head.ln_pre.weight", "head_depth": "lm_head.transformer.<j>.*"}


def preset_mismatch(g: OfficialGeometry) -> str:
    """How these sizes differ from the closest preset, naming the keys they come from."""
    def differences(sizes: dict) -> list[str]:
        facts = {**PRESET_COMMON, **sizes}
        return [f"{key} {getattr(g, key)} != {value} (key {FACT_KEYS[key]!r})" for key, value in facts.items()
                if getattr(g, key) != value]

    name, diff = min(((name, differences(sizes)) for name, sizes in OFFICIAL_PRESETS.items()),
                     key=lambda item: len(item[1]))
    return f"closest {name}: {', '.join(diff)}"


def describe_geometry(g: OfficialGeometry) -> str:
    """One line of sizes, for messages."""
    return ", ".join(f"{key}={value}" for key, value in asdict(g).items())


def official_generator_to_barlab(state: dict[str, Tensor], require_preset: bool = True,
                                 copy: bool = True) -> tuple[str | None, dict[str, dict[str, Tensor]]]:
    """An official ``BAR`` state dict -> ``(preset, {"backbone": ARBackbone state, "head": MBMHead state})``.

    ``preset``: the barlab generator preset of its sizes (bar_b, bar_b_p2, bar_b_p4, bar_l); with
    ``require_preset=False`` other sizes convert too and give None. Strict: every official key must be
    there with its shape and nothing else (one-line :class:`CheckpointError` naming the key). ``copy``: see
    :func:`convert_official_state`.
    """
    geometry = read_official_geometry(state)
    check_official_keys(state, geometry)
    _check_rope_tables(state, geometry)
    preset = official_preset(geometry)
    if preset is None and require_preset:
        raise _fail(f"its sizes match no barlab preset ({', '.join(OFFICIAL_PRESETS)}); {preset_mismatch(geometry)}")
    backbone, head = convert_official_state(state, geometry, copy=copy)
    return preset, {"backbone": backbone, "head": head}
