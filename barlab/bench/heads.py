"""``bench=heads``: the three heads against the bits per AR step k.

Per head and k: one training step of the head alone (loss forward + backward on N random
conditions (N, cond_dim) and bits (N, k)) and one CFG sampling call (N conditional + N unconditional
rows), both as seconds per token; and the training step's peak memory. The linear head is built
with ``batch_tokens = N``, so its own guard (``head.max_memory_gb``) decides where it stops: a
refusal (ConfigError) or running out of memory is recorded with its text, not raised.
"""

from __future__ import annotations

import math

import torch

from barlab.bench.context import BenchContext, ratio
from barlab.bench.memory import peak_memory
from barlab.bench.models import build_head, compose_generator, count_params
from barlab.bench.timing import measure, per_item
from barlab.errors import ConfigError

HEADS = ("linear", "bitwise", "mbm")
SIZES = {
    "ci": dict(preset="tiny", bits=(8, 16, 32), cond_dim=32, mbm_width=32, mbm_depth=1, tokens=64,
               max_memory_gb=16),
    # bar_b's head widths; 256 tokens per call on a CPU (one call of the MBM head at k = 256 is
    # already ~1 s of training there), 1024 on a GPU
    "real": dict(preset="bar_b", bits=(8, 16, 32, 64, 128, 256), cond_dim=2048, mbm_width=2048, mbm_depth=3,
                 tokens=256, max_memory_gb=16),
    "real_cuda": dict(preset="bar_b", bits=(8, 16, 32, 64, 128, 256), cond_dim=2048, mbm_width=2048, mbm_depth=3,
                      tokens=1024, max_memory_gb=16),
}
GUIDANCE = 3.0


def head_configs(s: dict) -> dict:
    """Composed configs per head, with the size's widths (the MBM allocation: cosine over 4 steps)."""
    common = [f"generator.backbone.cond_dim={s['cond_dim']}"]
    extra = {"linear": [f"head.max_memory_gb={s['max_memory_gb']}"], "bitwise": [],
             "mbm": [f"head.width={s['mbm_width']}", f"head.depth={s['mbm_depth']}", "head.allocation=null"]}
    return {h: compose_generator(s["preset"], h, common + extra[h]) for h in HEADS}


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in str(err).lower()


def measure_head(head: torch.nn.Module, k: int, tokens: int, ctx: BenchContext) -> dict:
    """Train / sample seconds per token and the training step's peak memory of one head."""
    gen = torch.Generator(device="cpu").manual_seed(ctx.seed)
    cond = torch.randn(tokens, head.cond_dim, generator=gen).to(ctx.device).requires_grad_(True)
    uncond = torch.randn(tokens, head.cond_dim, generator=gen).to(ctx.device)
    bits = torch.randint(0, 2, (tokens, k), generator=gen).float().to(ctx.device)

    def train_step():
        head.zero_grad(set_to_none=True)
        cond.grad = None
        head.loss(cond, bits).loss.backward()

    def sample():
        head.sample(cond.detach(), uncond, GUIDANCE, temperature=1.0)

    train = per_item(measure(train_step, ctx.device, ctx.warmup, ctx.repeats), tokens)
    samp = per_item(measure(sample, ctx.device, ctx.warmup, ctx.repeats), tokens)
    mem = peak_memory(train_step, ctx.device)
    return {"train_s_per_token": train["median_s"], "train_min": train["min_s"], "train_max": train["max_s"],
            "sample_s_per_token": samp["median_s"], "sample_min": samp["min_s"], "sample_max": samp["max_s"],
            "peak_mb": mem["peak_mb"], "rss_delta_mb": mem["rss_delta_mb"]}


def run(ctx: BenchContext) -> dict:
    s = ctx.pick(SIZES)
    configs = head_configs(s)
    rows = []
    for name in HEADS:
        stopped = None
        for k in s["bits"]:
            row = {"head": name, "k": k, "tokens": s["tokens"], "status": "ok"}
            if stopped:
                rows.append({**row, "status": "skipped", "reason": stopped})
                continue
            try:
                extra = {"batch_tokens": s["tokens"]} if name == "linear" else {}
                head = build_head(configs[name], k, **extra).to(ctx.device)
                row["params"] = count_params(head)
                row.update(measure_head(head, k, s["tokens"], ctx))
            except ConfigError as err:
                row.update(status="refused", reason=str(err))
            except (RuntimeError, MemoryError) as err:
                if not is_out_of_memory(err):
                    raise
                row.update(status="out of memory", reason=str(err).splitlines()[0])
                stopped = f"out of memory at k={k}"
            finally:
                head = None
                if ctx.device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
    return {"rows": rows, "ratios": head_ratios(rows, s["bits"]), "kmax": max(s["bits"]),
            "notes": [f"{s['tokens']} tokens per call, cond_dim {s['cond_dim']}, MBM {s['mbm_width']} x "
                      f"{s['mbm_depth']}; sampling with CFG (g = {GUIDANCE}): 2 x tokens rows; memory: "
                      "the training step's peak beyond the weights"]}


def lookup(rows: list[dict], head: str, k: int, key: str) -> float | None:
    return next((r.get(key) for r in rows if r["head"] == head and r["k"] == k and r["status"] == "ok"), None)


def head_ratios(rows: list[dict], bits: tuple[int, ...]) -> dict:
    """MBM time per token at the largest k over k = 8; linear over MBM at k = 16 (train and sample);
    the linear head's memory growth as log2(peak ratio) per added bit between its smallest and
    largest measured k (1.0: memory grows as 2^k)."""
    kmax = max(bits)
    out = {}
    for phase in ("train", "sample"):
        key = f"{phase}_s_per_token"
        out[f"mbm_{phase}_k{kmax}_over_k8"] = ratio(lookup(rows, "mbm", kmax, key), lookup(rows, "mbm", 8, key))
        out[f"linear_over_mbm_{phase}_k16"] = ratio(lookup(rows, "linear", 16, key), lookup(rows, "mbm", 16, key))
    linear = [(r["k"], r["peak_mb"]) for r in rows
              if r["head"] == "linear" and r["status"] == "ok" and r.get("peak_mb")]
    if len(linear) >= 2:
        (k0, m0), (k1, m1) = linear[0], linear[-1]
        out["linear_memory_log2_per_bit"] = math.log2(m1 / m0) / (k1 - k0)
    return out


def plot(result: dict):
    """Train time, sample time and peak memory per token against k (log-log), one line per head;
    refused / out-of-memory points as crosses on the x axis."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4))
    axes = fig.subplots(1, 3)
    panels = (("train_s_per_token", "train step s / token"), ("sample_s_per_token", "sampling s / token (CFG)"),
              ("peak_mb", "train step peak memory (MB)"))
    for ax, (key, label) in zip(axes, panels):
        for head, marker in zip(HEADS, "o^s"):
            ok = [r for r in result["rows"] if r["head"] == head and r["status"] == "ok" and r.get(key)]
            ax.plot([r["k"] for r in ok], [r[key] for r in ok], marker=marker, label=head)
            failed = [r["k"] for r in result["rows"] if r["head"] == head and r["status"] != "ok"]
            if failed:
                ax.plot(failed, [0.02] * len(failed), "x", color="red", transform=ax.get_xaxis_transform(),
                        label=f"{head}: refused / OOM")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("bits per AR step k")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle("Heads vs bits per AR step (" + ", ".join(
        f"{k} = {v:.3g}" for k, v in result["ratios"].items() if v is not None and math.isfinite(v)) + ")",
        fontsize=8)
    fig.tight_layout()
    return fig
