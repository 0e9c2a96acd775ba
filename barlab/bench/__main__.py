"""``python -m barlab.bench bench=all size=ci``: run benchmarks, write bench.json, bench.md and one
PNG per benchmark into the run folder (``out_dir``, default ``outputs/bench/<date>_<time>/``).

    python -m barlab.bench                          # every benchmark, CI size (seconds)
    python -m barlab.bench bench=heads size=real    # one benchmark at its real size
    python -m barlab.bench 'bench=[sampling,mfu]' repeats=20 out_dir=bench/today
"""

from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig

from barlab.bench import BENCHMARKS
from barlab.bench.context import SIZES, BenchContext
from barlab.bench.machine import machine_info
from barlab.bench.report import write_report
from barlab.cli import hydra_tool
from barlab.errors import ConfigError
from barlab.utils.devices import pick_device

log = logging.getLogger("barlab")
TIMING = {"ci": (1, 3), "real": (3, 10)}  # (warm-up calls, timed repeats) when the config leaves them null


def selected(value) -> list[str]:
    """``bench=all``, ``bench=<name>`` or ``bench=[a,b]`` -> benchmark names in run order."""
    names = list(value) if isinstance(value, (list, tuple, ListConfig)) else [str(value)]
    if names == ["all"]:
        return list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ConfigError("bench", f"unknown benchmark {unknown[0]!r}; choose all or one of {', '.join(BENCHMARKS)}",
                          fix="bench=all")
    return [n for n in BENCHMARKS if n in names]


def run(cfg: DictConfig) -> dict:
    if cfg.size not in SIZES:
        raise ConfigError("size", f"must be one of {', '.join(SIZES)}, got {cfg.size!r}", fix="size=ci")
    warmup, repeats = TIMING[cfg.size]
    ctx = BenchContext(size=str(cfg.size), device=pick_device(str(cfg.device)),
                       warmup=int(cfg.warmup if cfg.warmup is not None else warmup),
                       repeats=int(cfg.repeats if cfg.repeats is not None else repeats), seed=int(cfg.seed))
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    out_dir = Path(str(cfg.out_dir))
    report = {"size": ctx.size, "device": str(ctx.device), "warmup": ctx.warmup, "repeats": ctx.repeats,
              "machine": machine_info(), "benchmarks": ctx.results}
    figures = {}
    for name in selected(cfg.bench):
        module = importlib.import_module(f"barlab.bench.{name}")
        start = time.perf_counter()
        log.info("bench %s (size=%s, %s)", name, ctx.size, ctx.device)
        ctx.results[name] = module.run(ctx)
        ctx.results[name]["wall_s"] = time.perf_counter() - start
        figures[name] = None if ctx.results[name].get("skipped") else module.plot(ctx.results[name])
    write_report(out_dir, report, figures)
    log.info("wrote %s", out_dir / "bench.json")
    print(out_dir / "bench.md")
    return report


main = hydra_tool("bench", run)

if __name__ == "__main__":
    main()
