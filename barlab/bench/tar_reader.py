"""``bench=tar_reader``: the two tar readers of :class:`barlab.data.tar_samples.TarSamples` side by
side, ``tarstream`` (barlab's own, the default) against ``webdataset`` (WebDataset's
``tar_file_expander``), on the same shards in this one process, the readers alternating.

Three cases over synthetic shards written by barlab's own writers: a training epoch of the image
loader and of the token loader (``ImageShardDataModule`` / ``TokenShardDataModule``: read, shuffle,
decode, batch; no loader workers), and reading the token shards alone. The ratio
``<case>_webdataset_over_tarstream`` is the time of WebDataset's reader over barlab's.

This benchmark is why ``tarstream`` exists: the data layer keeps a hand-written reader only while
it is at least 2x faster end to end. Measured on 2 busy cores (webdataset 1.0.2): token
loader 2.9x and 3.4x, image loader 1.6-1.8x, token reading alone 4.2-4.6x, as ``tarfile``'s
per-member cost dominates the small token samples; for large images PNG decoding dominates and the
image ratio tends to 1.
"""

from __future__ import annotations

import tempfile
import time
from functools import partial
from pathlib import Path
from unittest import mock

import numpy as np

from barlab.bench.context import BenchContext, ratio
from barlab.bench.timing import timing_summary
from barlab.data import loaders
from barlab.data.image_datamodule import ImageShardDataModule
from barlab.data.image_shards import write_shards
from barlab.data.loader_stages import SkipCounter
from barlab.data.synthetic import SyntheticSource
from barlab.data.tar_samples import READERS, TarSamples
from barlab.data.token_datamodule import TokenShardDataModule
from barlab.data.token_shards import write_token_shards

SIZES = {
    "ci": dict(images=64, image_size=8, sequences=128, grid=4, bits=8, epoch=128),
    # the sizes the ratios in docs/benchmarks.md come from: smoke-sized samples, many of them
    "real": dict(images=512, image_size=16, sequences=1024, grid=4, bits=16, epoch=8192),
}


def make_shards(folder: Path, s: dict) -> tuple[str, str]:
    """``(image folder, token folder)``: 4 image shards and 4 token shards under ``folder``."""
    images, tokens = str(folder / "images"), str(folder / "tokens")
    write_shards(SyntheticSource(num_train=s["images"], num_val=8, image_size=s["image_size"]), images,
                 maxcount=max(1, s["images"] // 4))
    rng = np.random.default_rng(0)
    seq_len = s["grid"] ** 2
    splits = {split: [(f"{split}_{i:07d}", rng.integers(0, 2, (seq_len, s["bits"]), dtype=np.uint8), i % 4)
                      for i in range(n)] for split, n in (("train", s["sequences"]), ("val", 8))}
    write_token_shards(splits, tokens, {"seq_len": seq_len, "bits": s["bits"], "grid": [s["grid"]] * 2},
                       maxcount=max(1, s["sequences"] // 4))
    return images, tokens


def cases(images: str, tokens: str, s: dict) -> dict:
    """case name -> ``pass(reader) -> samples seen``: one timed pass with that reader."""
    def image_loader(reader: str) -> int:
        dm = ImageShardDataModule(images, image_size=s["image_size"], batch_size=16, num_workers=0,
                                  epoch_length=s["epoch"] // 4, shuffle_buffer=256)
        with mock.patch.object(loaders, "TarSamples", partial(TarSamples, reader=reader)):
            return sum(len(b["label"]) for b in dm.train_dataloader())

    def token_loader(reader: str) -> int:
        dm = TokenShardDataModule(tokens, batch_size=16, num_workers=0, epoch_length=s["epoch"], shuffle_buffer=256)
        with mock.patch.object(loaders, "TarSamples", partial(TarSamples, reader=reader)):
            return sum(len(b["label"]) for b in dm.train_dataloader())

    def token_read_only(reader: str) -> int:
        urls = [{"url": f"{tokens}/train-{i:06d}.tar"} for i in range(4)] * 8
        return sum(1 for _ in TarSamples(SkipCounter(shared=False), reader=reader)(urls))

    return {"image_loader": image_loader, "token_loader": token_loader, "token_read_only": token_read_only}


def run(ctx: BenchContext) -> dict:
    s = ctx.pick(SIZES)
    rows, ratios = [], {}
    with tempfile.TemporaryDirectory(prefix="barlab-bench-tar-") as tmp:
        for name, one_pass in cases(*make_shards(Path(tmp), s), s).items():
            for _ in range(ctx.warmup):
                for reader in READERS:
                    one_pass(reader)
            times: dict[str, list[float]] = {reader: [] for reader in READERS}
            seen: dict[str, int] = {}
            for _ in range(ctx.repeats):
                for reader in READERS:          # alternating: drift on a busy machine hits both alike
                    start = time.perf_counter()
                    seen[reader] = one_pass(reader)
                    times[reader].append(time.perf_counter() - start)
            if len(set(seen.values())) != 1:
                raise RuntimeError(f"tar readers disagree on {name}: {seen} samples")
            stats = {reader: timing_summary(t) for reader, t in times.items()}
            for reader in READERS:
                rows.append({"case": name, "reader": reader, "samples": seen[reader], **stats[reader],
                             "samples_per_s": seen[reader] / stats[reader]["median_s"]})
            ratios[f"{name}_webdataset_over_tarstream"] = ratio(stats["webdataset"]["median_s"],
                                                               stats["tarstream"]["median_s"])
    return {"rows": rows, "ratios": ratios,
            "notes": ["same shards, one process, the readers alternating; a ratio above 1: tarstream is faster"]}


def plot(result: dict):
    """Samples per second of each reader, per case."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    names = list(dict.fromkeys(r["case"] for r in result["rows"]))
    width = 0.38
    for i, reader in enumerate(READERS):
        values = [next(r["samples_per_s"] for r in result["rows"] if r["case"] == c and r["reader"] == reader)
                  for c in names]
        ax.bar(np.arange(len(names)) + (i - 0.5) * width, values, width, label=reader)
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names])
    ax.set_yscale("log")
    ax.set_ylabel("samples / s")
    ax.legend()
    ax.set_title(", ".join(f"{k.split('_webdataset')[0]} {v:.2f}x" for k, v in result["ratios"].items()), fontsize=8)
    fig.tight_layout()
    return fig
