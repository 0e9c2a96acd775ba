"""The AR context model: a causal adaLN-Zero transformer over bit tokens (paper §4.1).

``token_type="continuous"``: the tokens are real vectors (c·p² channels per AR step, KL latents) and a
``Linear(c·p² -> d)`` (``token_embed``) replaces the per-bit embedding (``bit_embed``); all else is the same.

Sequence (S = P + L - 1 slots, P = 1 + class_repeat)::

    slot:   0      1 .. P-1          P          P+1        ...  P+L-2
    input:  [CLS]  class × repeat    tok o[0]   tok o[1]   ...  tok o[L-2]
    cur:    -      -                 o[0]       o[1]       ...  o[L-2]      (abs. pos. emb., RoPE keys)
    target: -      o[0] at P-1 only  o[1]       o[2]       ...  o[L-1]      (target emb., RoPE queries)
    output:        slot P-1+j predicts token o[j], j = 0 .. L-1

o is the token order (raster during sampling). The last token o[L-1] is never an input, so the
sequence stops one slot short of P + L (the same outputs as feeding it and dropping its output).
Every slot s gets the adaLN condition ``class_vec + timestep[s]`` (one learned vector per slot).
The prefix has its own learned position vectors (``ClassPrefix.pos``) and the identity rotation.
The L outputs go through a final RMSNorm and ``Linear(d -> cond_dim)``: the head's condition.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from barlab.errors import ConfigError
from barlab.generator.embeddings import BitEmbedding, ClassPrefix, ContinuousEmbedding, PositionEmbedding
from barlab.generator.kv_cache import KVCache
from barlab.generator.layers import RMSNorm
from barlab.generator.rope import Rope2D
from barlab.generator.transformer_block import Block
from barlab.utils.integers import check_int

TOKEN_TYPES = ("discrete", "continuous")


def _check(ok: bool, knob: str, message: str, fix: str) -> None:
    if not ok:
        raise ConfigError(knob, message, fix=fix)


class ARBackbone(nn.Module):
    """bits (B, L, k') + labels (B,) [+ order (B, L)] -> cond (B, L, cond_dim); see the module doc.

    ``token_type``: ``"discrete"`` (bits {0, 1}, the default) or ``"continuous"`` (real tokens of
    ``bits_per_step`` = c·p² channels per AR step, embedded by a linear projection).
    """

    def __init__(self, bits_per_step: int, grid: tuple[int, int], num_classes: int, width: int = 768,
                 depth: int = 24, heads: int = 12, cond_dim: int = 2048, class_repeat: int = 32,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, dropout: float = 0.0,
                 attn_dropout: float = 0.0, rope: bool = True, target_aware_rope: bool = True,
                 target_aware_pos: bool = True, token_type: str = "discrete"):
        super().__init__()
        _check(token_type in TOKEN_TYPES, "token_type", f"must be one of {TOKEN_TYPES}, got {token_type!r}",
               "token_type=discrete")
        bits_per_step = check_int(bits_per_step, "bits_per_step", fix="bits_per_step=16")
        _check(len(grid) == 2 and min(grid) >= 1, "grid", f"must be (h, w) >= 1, got {grid!r}", "grid=[16,16]")
        num_classes = check_int(num_classes, "num_classes", fix="num_classes=1000")
        width = check_int(width, "width", fix="width=768")
        heads = check_int(heads, "heads", fix="heads=12")
        depth = check_int(depth, "depth", fix="depth=24")
        cond_dim = check_int(cond_dim, "cond_dim", fix="cond_dim=2048")
        class_repeat = check_int(class_repeat, "class_repeat", minimum=0, fix="class_repeat=32")
        _check(width % heads == 0, "heads", f"must divide width {width}, got {heads}",
               f"heads={max(h for h in range(1, heads + 1) if width % h == 0)}")
        _check(not rope or (width // heads) % 4 == 0, "heads",
               f"2D RoPE needs head_dim = width/heads divisible by 4, got {width}/{heads}", "rope=false")
        _check(isinstance(mlp_ratio, (int, float)) and not isinstance(mlp_ratio, bool) and mlp_ratio > 0,
               "mlp_ratio", f"must be a positive number, got {mlp_ratio!r}", "mlp_ratio=4.0")
        for name, p in (("dropout", dropout), ("attn_dropout", attn_dropout)):
            _check(isinstance(p, (int, float)) and 0.0 <= p < 1.0, name, f"must be in [0, 1), got {p!r}",
                   f"{name}=0.0")
        self.bits_per_step = bits_per_step
        self.token_type = token_type
        self.grid = (int(grid[0]), int(grid[1]))
        self.seq_len = self.grid[0] * self.grid[1]
        self.num_classes = num_classes
        self.null_class = num_classes
        self.prefix_len = 1 + class_repeat
        self.max_len = self.prefix_len + self.seq_len - 1
        self.cond_dim = cond_dim
        self.width, self.depth, self.heads = width, depth, heads

        self.prefix = ClassPrefix(num_classes, width, class_repeat)
        if token_type == "continuous":
            self.token_embed = ContinuousEmbedding(bits_per_step, width)
        else:
            self.bit_embed = BitEmbedding(bits_per_step, width)
        self.pos = PositionEmbedding(self.seq_len, width, target_aware=target_aware_pos)
        self.timestep = nn.Parameter(torch.zeros(self.max_len, width))
        self.rope = Rope2D(width // heads, self.grid, heads, target_aware=target_aware_rope) if rope else None
        self.blocks = nn.ModuleList(
            Block(width, heads, mlp_ratio, qkv_bias=qkv_bias, dropout=dropout, attn_dropout=attn_dropout)
            for _ in range(depth))
        self.norm = RMSNorm(width)
        self.out = nn.Linear(width, cond_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Linear weights trunc-normal(0.02), biases 0, embeddings/tables normal(0.02), adaLN zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        for table in (self.prefix.cls, self.prefix.pos, self.pos.table, self.pos.target_table, self.timestep):
            if table is not None:
                nn.init.normal_(table, std=0.02)
        for block in self.blocks:
            block.zero_init()

    # ------------------------------------------------------------------ core
    def embed(self, tokens: Tensor) -> Tensor:
        """Token inputs (..., k') -> (..., d): bits by the per-bit embedding, continuous tokens by the projection."""
        if self.token_type == "continuous":
            return self.token_embed(tokens)
        return self.bit_embed(tokens)

    def _run(self, x: Tensor, current: Tensor, target: Tensor, start: int, class_vec: Tensor,
             cache: KVCache | None = None) -> Tensor:
        """Slots [start, start + n): x (B, n, d) inputs with their own position embedding already
        added; current/target (B, n) long in [0, L] (L = none) -> hidden (B, n, d) after the final norm."""
        x = x + self.pos.target(target)
        c = class_vec[:, None, :] + self.timestep[start:start + x.shape[1]]
        rotation = self.rope(current, target) if self.rope is not None else None
        for i, block in enumerate(self.blocks):
            x = block(x, c, rotation, cache, i)
        if cache is not None:
            cache.advance(x.shape[1])
        return self.norm(x)

    def forward(self, bits: Tensor, labels: Tensor, order: Tensor | None = None) -> Tensor:
        """Teacher forcing. bits (B, L, k') raster {0,1} (continuous: real values); labels (B,) long;
        order (B, L) long or None (raster) -> cond (B, L, cond_dim), cond[:, j] conditions token order[:, j]."""
        batch, length = bits.shape[:2]
        if length != self.seq_len or bits.shape[2] != self.bits_per_step:
            raise ValueError(f"bits {tuple(bits.shape)} do not match (B, {self.seq_len}, {self.bits_per_step})")
        if order is None:
            order = torch.arange(length, device=bits.device).expand(batch, length)
        tokens = bits.gather(1, order[:, :-1, None].expand(-1, -1, bits.shape[2]))     # (B, L-1, k')
        prefix, class_vec = self.prefix(labels)
        images = self.embed(tokens) + self.pos.current(order[:, :-1])
        none = order.new_full((batch, self.prefix_len), self.seq_len)
        current = torch.cat([none, order[:, :-1]], dim=1)                               # (B, S)
        target = torch.cat([order[:, :1].expand(-1, self.prefix_len - 1), order], dim=1)  # (B, S)
        h = self._run(torch.cat([prefix.to(images.dtype), images], dim=1), current, target, 0, class_vec)
        return self.out(h[:, self.prefix_len - 1:])

    def drop_labels(self, labels: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
        """Replace each label by ``null_class`` with probability p: labels (B,) -> (B,)."""
        drop = torch.rand(labels.shape, generator=generator, device=labels.device) < p
        return torch.where(drop, torch.full_like(labels, self.null_class), labels)

    # ------------------------------------------------------------ decoding
    def new_cache(self, batch: int, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> KVCache:
        """An empty cache for ``batch`` rows and all ``prefix_len + seq_len - 1`` slots."""
        param = self.out.weight
        return KVCache(self.depth, batch, self.heads, self.max_len, self.width // self.heads,
                       device=param.device if device is None else device,
                       dtype=param.dtype if dtype is None else dtype)

    def prefill(self, labels: Tensor, cache: KVCache) -> Tensor:
        """Run the prefix into an empty cache: labels (B,) -> cond for token 0, (B, cond_dim)."""
        if cache.length:
            raise ValueError(f"prefill needs an empty cache, it holds {cache.length} slots")
        prefix, class_vec = self.prefix(labels)
        cache.class_vec = class_vec
        batch = labels.shape[0]
        current = labels.new_full((batch, self.prefix_len), self.seq_len)
        target = torch.zeros_like(current)                                     # every prefix slot: token 0
        h = self._run(prefix, current, target, 0, class_vec, cache)
        return self.out(h[:, -1])

    def step(self, bits: Tensor, index: int, cache: KVCache) -> Tensor | None:
        """Append raster token ``index``: bits (B, k') -> cond for token index + 1, (B, cond_dim);
        None for the last token (nothing left to predict, nothing is appended)."""
        if cache.length != self.prefix_len + index:
            raise ValueError(f"step({index}) needs {self.prefix_len + index} cached slots, got {cache.length}")
        if index == self.seq_len - 1:
            return None
        pos = torch.full((bits.shape[0], 1), index, dtype=torch.long, device=bits.device)
        x = self.embed(bits[:, None]) + self.pos.current(pos)
        h = self._run(x, pos, pos + 1, cache.length, cache.class_vec, cache)
        return self.out(h[:, 0])
