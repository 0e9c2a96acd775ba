"""``python -m barlab.bench bench=all size=ci``: every benchmark runs in seconds and writes bench.json
(finite numbers, ratios), bench.md and a PNG each; ``gpu`` is skipped without CUDA and its
measurement runs on the CPU at toy size."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import read_json, run_module

from barlab.bench import BENCHMARKS

# tiny widths and a 4x4 grid: the CPU path of the gpu benchmark in well under a second
TOY = ["generator.backbone.width=32", "generator.backbone.depth=1", "generator.backbone.heads=2",
       "generator.backbone.cond_dim=32", "generator.backbone.class_repeat=2", "generator.head_width=32",
       "generator.head_depth=1", "generator.sampling.allocation=[1,1,1,1]"]


def numbers(value):
    """Every int / float inside a JSON value."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from numbers(v)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    # one thread: ci-size tensors gain nothing from intra-op threads, and on busy cores spinning
    # OpenMP workers would slow them down
    proc = run_module("barlab.bench", "bench=all", "size=ci", "threads=1", "device=cpu", f"out_dir={tmp / 'run'}",
                      cwd=tmp, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run", read_json(tmp / "run" / "bench.json")


@pytest.mark.slow
def test_bench_writes_every_benchmark_with_finite_numbers_and_ratios(bench_run):
    out, report = bench_run
    assert list(report["benchmarks"]) == list(BENCHMARKS)
    assert report["machine"]["cpu_model"] and report["machine"]["torch_num_threads"] == 1
    assert "avx512_bf16" in report["machine"]["cpu_flags"]
    assert report["machine"]["cpu_id"].startswith("family ") and " model " in report["machine"]["cpu_id"]
    for name, result in report["benchmarks"].items():
        if name == "gpu" and not torch.cuda.is_available():
            assert result["skipped"] == "skipped: no CUDA"
            continue
        assert result["rows"], name
        assert all(math.isfinite(x) for x in numbers(result)), name
        assert result["ratios"] and all(v is not None and math.isfinite(v) for v in result["ratios"].values()), \
            (name, result["ratios"])
        assert all(v > 0 for k, v in result["ratios"].items() if not k.endswith("_pct")), (name, result["ratios"])
        assert (out / f"{name}.png").stat().st_size > 1000 and result["figure"] == f"{name}.png"
    md = (out / "bench.md").read_text()
    assert all(f"## {name}" in md for name in BENCHMARKS) and "| head | k |" in md


@pytest.mark.slow
def test_bench_heads_records_where_the_linear_head_is_refused(bench_run):
    rows = bench_run[1]["benchmarks"]["heads"]["rows"]
    linear = {r["k"]: r for r in rows if r["head"] == "linear"}
    assert linear[16]["status"] == "ok" and linear[32]["status"] == "refused"
    assert "head.max_memory_gb" in linear[32]["reason"]
    assert all(r["status"] == "ok" for r in rows if r["head"] != "linear")


def test_bench_gpu_measurement_runs_on_cpu_at_toy_size():
    from barlab.bench.context import BenchContext
    from barlab.bench.gpu import measure_preset

    ctx = BenchContext("ci", torch.device("cpu"), warmup=0, repeats=1)
    row = measure_preset("bar_b", ctx, {"sample_batch": 2, "train_batch": 2}, TOY, grid=(4, 4), bits=4)
    assert row["ar_steps"] == 16 and row["guidance"] == 5.0 and row["allocation"] == [1, 1, 1, 1]
    assert row["paper_img_per_s"] == 24.3 and row["sample_img_per_s"] > 0 and row["train_img_per_s"] > 0


def test_bench_refuses_an_unknown_benchmark(tmp_path):
    proc = run_module("barlab.bench", "bench=nope", f"out_dir={tmp_path / 'run'}", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "unknown benchmark 'nope'" in proc.stderr
