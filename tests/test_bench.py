"""``python -m barlab.bench bench=all size=ci``: every benchmark runs in seconds and writes bench.json
(finite numbers, ratios), bench.md and a PNG each; ``gpu`` is skipped without CUDA and its
measurement runs on the CPU at toy size."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import call_main, error_lines, read_json, run_module

from barlab.bench import BENCHMARKS

# tiny widths and a 4x4 grid: the CPU path of the gpu benchmark in well under a second
TOY = ["generator.backbone.width=32", "generator.backbone.depth=1", "generator.backbone.heads=2",
       "generator.backbone.cond_dim=32", "generator.backbone.class_repeat=2", "head.width=32", "head.depth=1",
       "head.allocation=[1,1,1,1]"]


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
    # in-process (barlab.bench's main() with this argv; torch's thread count is put back afterwards);
    # test_bench_refuses_an_unknown_benchmark runs the command line as a real process
    proc = call_main("barlab.bench", "bench=all", "size=ci", "threads=1", "device=cpu", f"out_dir={tmp / 'run'}",
                     cwd=tmp)
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


@pytest.mark.slow
def test_bench_sampling_train_loop_and_peaks_report_what_the_targets_need(bench_run):
    report = bench_run[1]["benchmarks"]
    sampling, heads = report["sampling"], report["heads"]
    batch = [r for r in sampling["rows"] if r["sweep"] == "batch"]
    assert [r["batch"] for r in batch] == [1, 4] and all(0 < r["peak_fraction"] < 2 and r["flops"] > 0 for r in batch)
    fuse = {(r["batch"], r["fuse_cfg"]) for r in sampling["rows"] if r["sweep"] == "fuse_cfg"}
    assert fuse == {(2, False), (2, True), (4, False), (4, True)}
    assert set(sampling["ratios"]) >= {"fused_cfg_speedup_b2", "fused_cfg_speedup_b4", "peak_fraction_b4",
                                       "cache_over_recompute_L8_b2", "cache_over_recompute_L16_b2",
                                       "cache_over_recompute_L8_b4", "p4_over_p1"}
    # no-CFG recompute only at the shorter length
    assert {r["ar_steps"] for r in sampling["rows"] if r["sweep"] == "cache" and not r["kv_cache"] and not r["cfg"]} \
        == {8}
    # the linear head's memory per token grows as 2^k: 8 -> 16 bits multiplies it by 2^8
    assert heads["ratios"]["linear_memory_log2_per_bit"] == pytest.approx(1.0, abs=0.05)
    rounds = report["train_loop"]["overhead_pct_rounds"]
    assert len(rounds) == 2 and report["train_loop"]["ratios"]["lightning_overhead_pct"] == pytest.approx(
        sum(rounds) / 2)
    assert sum(r["steps"] for r in report["train_loop"]["rows"]) == 2 * 2 * 3  # rounds x loops x repeats
    mfu = report["mfu"]
    assert [r["precision"] for r in mfu["rows"] if r["model"] == "tokenizer"][0] == "32-true"
    assert 0 < mfu["ratios"]["mfu_tokenizer"] < 2 and mfu["rows"][-1]["flops_counted"] > 0
    flags = bench_run[1]["machine"]["cpu_flags"]
    native_bf16 = flags["avx512_bf16"] or flags["amx_bf16"]
    assert ("bf16_speedup_tokenizer" in mfu["ratios"]) == native_bf16
    assert ("bf16_speedup_tiny" in mfu["ratios"]) == native_bf16
    # one peak per run: mfu and sampling divide by the same figure
    peak = report["mfu"]["peaks_tflops"]["fp32"]
    assert report["mfu"]["rows"][0]["peak_tflops"] == pytest.approx(peak)
    assert f"fp32 {peak:.3g} TFLOP/s" in " ".join(sampling["notes"])


def test_peaks_are_measured_once_per_run(monkeypatch):
    from barlab.bench import peak as peak_module
    from barlab.bench.context import BenchContext

    calls = []
    monkeypatch.setattr(peak_module, "matmul_peak", lambda n, dtype, ctx: calls.append((n, dtype)) or 1e12)
    monkeypatch.setattr(peak_module, "bf16_supported", lambda device: True)
    ctx = BenchContext("ci", torch.device("cpu"), warmup=0, repeats=1)
    assert peak_module.peak_for(ctx, "32-true") == 1e12 and peak_module.peak_for(ctx, "bf16-mixed") == 1e12
    assert calls == [(256, torch.float32), (256, torch.bfloat16)]
    assert peak_module.matmul_n(BenchContext("real", torch.device("cuda"), 0, 1)) == 8192


def test_bench_gpu_measurement_runs_on_cpu_at_toy_size():
    from barlab.bench.context import BenchContext
    from barlab.bench.gpu import measure_preset

    ctx = BenchContext("ci", torch.device("cpu"), warmup=0, repeats=1)
    row = measure_preset("bar_b", ctx, {"sample_batch": 2, "train_batch": 2}, TOY, grid=(4, 4), bits=4)
    assert row["ar_steps"] == 16 and row["guidance"] == 5.0 and row["allocation"] == [1, 1, 1, 1]
    assert row["paper_img_per_s"] == 24.3 and row["sample_img_per_s"] > 0 and row["train_img_per_s"] > 0


@pytest.mark.quick
def test_bench_refuses_an_unknown_benchmark(tmp_path):
    proc = run_module("barlab.bench", "bench=nope", f"out_dir={tmp_path / 'run'}", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert error_lines(proc.stderr) == [f"error: bench: unknown benchmark 'nope'; choose all or one of "
                                        f"{', '.join(BENCHMARKS)} (fix: bench=all)"]


@pytest.mark.slow
def test_bench_paper_tokenizer_counts_both_gan_phases_and_labels_the_estimate(bench_run):
    result = bench_run[1]["benchmarks"]["paper_tokenizer"]
    off, on = result["rows"]
    assert (off["phase"], on["phase"]) == ("GAN off", "GAN on")
    assert 0 < off["flops_per_image"] < on["flops_per_image"]      # the discriminator's forward and backward
    assert off["flops_per_step"] == pytest.approx(off["flops_per_image"] * 32 * 8)
    assert 0 < off["trainable"] < off["params"]                       # frozen teacher, loss nets, DINO
    assert off["step_s"] > 0 and on["batch"] == 8
    assert set(result["ratios"]) == {"gpu_hours_estimate"}           # no GPU: an estimate, and said so
    assert "ESTIMATE, not measured" in result["notes"][0]


@pytest.mark.slow
def test_bench_generation_budget_times_every_study_point_at_matched_bits(bench_run):
    result = bench_run[1]["benchmarks"]["generation_budget"]
    rows = {(r["token_head"], r["channels_per_token"]): r for r in result["rows"]}
    assert sorted(rows) == sorted((t, c) for t in ("fsq_mbm", "fsq_bitwise", "kl_diffusion") for c in (1, 2))
    for (token_head, c), row in rows.items():
        # 16 tokens (16 px, 4x downsampling) of 16·c bits: a KL channel counts 16 bits, as the study counts it
        assert row["bits_per_token"] == 16 * c and row["bits_per_image"] == 16 * 16 * c and row["ar_steps"] == 16
        assert row["head"] == {"fsq_mbm": "MBMHead", "fsq_bitwise": "BitwiseHead",
                               "kl_diffusion": "DiffusionHead"}[token_head]
        assert row["rounds"] == 2 and row["sample_images_per_s"] == pytest.approx(row["sample_batch"] / row["sample_s"])
        assert row["sample_images_per_s_min"] <= row["sample_images_per_s"] <= row["sample_images_per_s_max"]
        assert row["train_steps_per_s"] == pytest.approx(1 / row["train_step_s"]) and row["batch"] == 4
    ratios = result["ratios"]
    assert ratios["sample_fsq_mbm_over_kl_diffusion_c2"] == pytest.approx(
        rows["fsq_mbm", 2]["sample_images_per_s"] / rows["kl_diffusion", 2]["sample_images_per_s"])
    assert len(ratios) == 8
