"""``bench=data``: samples per second of the image loader and the token loader, each over synthetic
shards written to a temporary folder by barlab's own writers (:func:`write_shards` of a
:class:`SyntheticSource`; :func:`write_token_shards` of random bits), read by the training
DataModules' ``train_dataloader``; each against what the generator consumes per second (the bare
training loop's step rate x batch, from ``train_loop`` when it ran in this run, else measured here).
A ratio above 1: the loader keeps up."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from barlab.bench.context import BenchContext, ratio
from barlab.bench.timing import timing_summary
from barlab.data.image_datamodule import ImageShardDataModule
from barlab.data.image_shards import write_shards
from barlab.data.synthetic import SyntheticSource
from barlab.data.token_datamodule import TokenShardDataModule
from barlab.data.token_shards import write_token_shards

SIZES = {
    "ci": dict(image=dict(image_size=16, channels=3, batch=8, workers=0, count=64),
               tokens=dict(grid=(4, 4), bits=4, batch=4, workers=0, count=64)),
    # data=fashion_mnist's loader settings (32 px, batch 64, 1 worker) on synthetic 1-channel images;
    # generator=tiny's token loader (8x8 grid of 16-bit tokens, batch 32, 1 worker)
    "real": dict(image=dict(image_size=32, channels=1, batch=64, workers=1, count=4096),
                 tokens=dict(grid=(8, 8), bits=16, batch=32, workers=1, count=8192)),
}


def batch_times(loader, batches: int) -> list[float]:
    """Seconds between consecutive batches of ``loader`` (re-entered at epoch ends): (batches,)."""
    times, last = [], time.perf_counter()
    while len(times) < batches:
        for _ in loader:
            now = time.perf_counter()
            times.append(now - last)
            last = now
            if len(times) >= batches:
                break
    return times


def image_loader(folder: Path, s: dict) -> ImageShardDataModule:
    source = SyntheticSource(num_train=s["count"], num_val=8, image_size=s["image_size"], channels=s["channels"])
    write_shards(source, str(folder), maxcount=max(1, s["count"] // 4))
    return ImageShardDataModule(str(folder), image_size=s["image_size"], channels=s["channels"],
                                batch_size=s["batch"], num_workers=s["workers"], epoch_length=s["count"],
                                shuffle_buffer=min(2000, s["count"]))


def token_loader(folder: Path, s: dict, seed: int) -> TokenShardDataModule:
    rng = np.random.default_rng(seed)
    seq_len = s["grid"][0] * s["grid"][1]

    def samples(split, n):
        for i in range(n):
            yield f"{split}-{i:06d}", rng.integers(0, 2, (seq_len, s["bits"]), dtype=np.uint8), i % 10

    meta = {"seq_len": seq_len, "bits": s["bits"], "grid": list(s["grid"]), "num_classes": 10}
    write_token_shards({"train": samples("train", s["count"]), "val": samples("val", 8)}, str(folder), meta,
                       maxcount=max(1, s["count"] // 4))
    return TokenShardDataModule(str(folder), batch_size=s["batch"], num_workers=s["workers"],
                                epoch_length=s["count"], shuffle_buffer=min(5000, s["count"]), seed=seed)


def model_rate(ctx: BenchContext) -> float:
    """Sequences per second the generator trains on: train_loop's bare loop, or measured now."""
    done = ctx.results.get("train_loop")
    if done and done.get("model_samples_per_s"):
        return float(done["model_samples_per_s"])
    from barlab.bench.train_loop import measure_bare

    return float(measure_bare(ctx)["samples_per_s"])


def run(ctx: BenchContext) -> dict:
    s = ctx.pick(SIZES)
    consumed = model_rate(ctx)
    rows = []
    with tempfile.TemporaryDirectory(prefix="barlab-bench-data-") as tmp:
        loaders = (("image", image_loader(Path(tmp) / "images", s["image"]), s["image"]),
                   ("token", token_loader(Path(tmp) / "tokens", s["tokens"], ctx.seed), s["tokens"]))
        for name, module, spec in loaders:
            timed = max(4 * ctx.repeats, 8)
            stats = timing_summary(batch_times(module.train_dataloader(), ctx.warmup + 1 + timed)[ctx.warmup + 1:])
            rows.append({"loader": name, "batch": spec["batch"], "workers": spec["workers"],
                         "batch_s": stats["median_s"], "min_s": stats["min_s"], "max_s": stats["max_s"],
                         "iqr_s": stats["iqr_s"], "samples_per_s": spec["batch"] / stats["median_s"],
                         "model_samples_per_s": consumed})
    return {"rows": rows, "model_samples_per_s": consumed,
            "ratios": {f"{r['loader']}_loader_over_model": ratio(r["samples_per_s"], consumed) for r in rows},
            "notes": ["model: the generator's training consumption (train_loop's bare loop, sequences / s); the "
                      "image loader feeds the tokenizer and pretokenization, compared against the same rate"]}


def plot(result: dict):
    """Samples per second of each loader beside the model's consumption."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    names = [f"{r['loader']} loader" for r in result["rows"]] + ["model consumes"]
    values = [r["samples_per_s"] for r in result["rows"]] + [result["model_samples_per_s"]]
    ax.bar(names, values, color=["C0", "C1", "C2"])
    ax.set_yscale("log")
    ax.set_ylabel("samples / s")
    ax.set_title(", ".join(f"{k} = {v:.3g}" for k, v in result["ratios"].items() if v is not None), fontsize=8)
    fig.tight_layout()
    return fig
