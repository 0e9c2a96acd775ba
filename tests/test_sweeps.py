"""The sweeps in sweeps/ compose, run (tiny), and gather into tables, figures and notebooks;
failed and refused jobs stay in the table with their reason; Optuna runs against optuna >= 4."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.helpers import REPO, SMOKE_CLASSIFIER, SMOKE_DATA, call_main, error_lines, read_json, run_module

SWEEPS = REPO / "sweeps"


def test_bit_budget_points_interleave_discrete_and_continuous():
    spec = yaml.safe_load((SWEEPS / "bit_budget.yaml").read_text())
    tokens = (32 // 4) ** 2  # default sizes: 32x32 images, f = 4
    budgets = {name: tokens * p["bits"] if p["family"] == "binary_fsq" else tokens * p["channels"] * 16
               for name, p in spec["points"].items()}
    swept = spec["hydra"]["sweeper"]["params"]["point"].split(",")
    assert sorted(swept) == sorted(budgets)
    discrete = sorted(b for n, b in budgets.items() if spec["points"][n]["family"] == "binary_fsq")
    continuous = sorted(b for n, b in budgets.items() if spec["points"][n]["family"] == "kl")
    between = [c for c in continuous if discrete[0] < c < discrete[-1] and c not in discrete]
    assert between, (discrete, continuous)  # a continuous budget falls between two discrete ones
    assert any(discrete[0] < d < continuous[-1] for d in discrete if d not in continuous)


@pytest.mark.parametrize("point, target, bits_per_image",
                         [("fsq48", "BinaryFSQ", 64 * 48), ("kl2", "KLLatent", 64 * 2 * 16)])
def test_bit_budget_points_resolve_to_their_quantizer(tmp_path, point, target, bits_per_image):
    proc = call_main("barlab.train", "-cd", str(SWEEPS), "-cn", "bit_budget", f"point={point}", "--cfg", "job",
                     "--resolve", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = yaml.safe_load(proc.stdout)
    quantizer = cfg["tokenizer"]["quantizer"]
    assert quantizer["_target_"].endswith(target) and cfg["stage"] == "tokenizer"
    tokens = (cfg["data"]["image_size"] // cfg["tokenizer"]["encoder"]["downsample"]) ** 2
    per_token = quantizer.get("bits") or quantizer["channels"] * 16
    assert tokens * per_token == bits_per_image


def execute_notebook(name: str, sweep: Path, **env: str) -> str:
    """Run notebooks/<name> on ``sweep`` (``$BARLAB_SWEEP``, and ``env``'s variables) with nbclient; return the
    text of all its outputs."""
    import nbclient
    import nbformat

    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "stored with outputs"
    env = {"BARLAB_SWEEP": str(sweep), **env}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.update({k: v})
    text, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", out
            text.append(out.get("text", "") + str(out.get("data", {}).get("text/plain", "")))
            images += "image/png" in out.get("data", {})
    assert images >= 1, "the notebook shows no figure"
    return "\n".join(text)


@pytest.mark.slow
def test_bit_budget_sweep_table_figure_and_notebook(tmp_path):
    sweep = tmp_path / "bb"
    proc = run_module("barlab.train", "-m", "-cd", str(SWEEPS), "-cn", "bit_budget", "experiment=smoke",
                      "point=fsq4,kl1,fsq8", "metrics.backend=random", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = call_main("barlab.analysis", str(sweep), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = pd.read_csv(sweep / "results.csv")
    assert table["point"].tolist() == ["fsq4", "kl1", "fsq8"]
    assert table["bits_per_image"].tolist() == [16 * 4, 16 * 16, 16 * 8]  # 16x16 smoke images: 16 tokens
    assert table["family"].tolist() == ["discrete", "continuous", "discrete"]
    assert table["rfid"].notna().all() and (table["outcome"] == "ok").all()
    assert (sweep / "bit_budget.png").stat().st_size > 10_000
    text = execute_notebook("bit_budget_study.ipynb", sweep)
    assert "3 jobs" in text and "RANDOM features" in text


@pytest.mark.slow
def test_head_sweep_keeps_refused_points_and_the_notebook_marks_them(tmp_path):
    sweep = tmp_path / "heads"
    proc = run_module("barlab.train", "-m", "-cd", str(SWEEPS), "-cn", "head_type", "experiment=smoke",
                      "head=linear,mbm", "tokenizer.bits=4,32", "metrics.backend=random",
                      f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 1  # one job refused: the sweep goes on, then says so
    report = [line for line in proc.stderr.splitlines() if line.startswith("error: 1 of 4 sweep job(s) failed: #1 (")]
    assert len(report) == 1, proc.stderr[-2000:]  # the failed-jobs report: job 1, its overrides, outcome, reason
    overrides, _, reason = report[0].partition("): ")
    swept = overrides.partition(" (")[2].split()
    assert "head=linear" in swept and "tokenizer.bits=32" in swept, swept
    assert reason.startswith("refused: head: linear softmax over 2^32 codes"), reason
    refused = read_json(sweep / "1" / "results.json")  # head=linear, bits=32
    assert refused["status"] == "failed" and refused["outcome"] == "refused"
    assert "head.max_memory_gb" in refused["error"]
    proc = call_main("barlab.analysis", str(sweep), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = pd.read_csv(sweep / "results.csv")
    assert len(table) == 4
    row = table[(table["head"] == "linear") & (table["tokenizer.bits"] == 32)].iloc[0]
    assert row["outcome"] == "refused" and "max_memory_gb" in row["reason"]
    assert (table[table["outcome"] == "ok"]["gfid"].notna()).sum() == 3
    assert (sweep / "heads.png").is_file()
    text = execute_notebook("head_comparison.ipynb", sweep)
    assert "refused" in text
    # one tokenizer per bit width: the mbm job at 4 bits reused the linear job's
    cached = {job: read_json(sweep / job / "results.json").get("tokenizer_cached") for job in ("0", "2", "3")}
    assert cached == {"0": False, "2": True, "3": False}

    # a sampling grid on the trained mbm generator, sampled and scored in one multirun, then tabulated
    grid = ("sampling.guidance=1.5,3", "sampling.temperature=0.5,1")
    proc = call_main("barlab.sample", "-m", f"ckpt={sweep / '2'}", "score=true", "per_class=2", "png=false",
                     "metrics.backend=random", "data=synthetic", "data.image_size=16", *grid, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    points = sorted(p for p in (sweep / "2" / "sampling_grid").iterdir() if p.is_dir())
    assert len(points) == 4 and all((p / "metrics.json").is_file() for p in points)
    proc = call_main("barlab.analysis", str(sweep), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = pd.read_csv(sweep / "sampling_grid.csv")
    assert sorted(zip(table["guidance"], table["temperature"])) == [(1.5, 0.5), (1.5, 1.0), (3.0, 0.5), (3.0, 1.0)]
    assert set(table["head"]) == {"mbm"} and set(table["tokenizer.bits"]) == {4}
    for point in points:  # each row is that point's own metrics.json
        metrics, info = read_json(point / "metrics.json"), read_json(point / "sample_info.json")
        row = table[(table["guidance"] == info["sampling"]["guidance"])
                    & (table["temperature"] == info["sampling"]["temperature"])].iloc[0]
        assert row["fid"] == pytest.approx(metrics["fid"]) and info["num_samples"] == 2 * info["num_classes"]
    best = pd.read_csv(sweep / "sampling_grid_best.csv")
    assert len(best) == 1 and best["fid"].iloc[0] == pytest.approx(table["fid"].min())
    assert (sweep / "sampling_grid.png").is_file()


def test_a_killed_job_is_a_missing_row_not_a_silent_gap(tmp_path):
    from barlab.analysis import load_sweep

    job = tmp_path / "sweep" / "0" / ".hydra"
    job.mkdir(parents=True)
    (job / "overrides.yaml").write_text("- tokenizer.bits=12\n")
    frame = load_sweep(tmp_path / "sweep")
    assert frame["outcome"].tolist() == ["missing"] and frame["tokenizer.bits"].tolist() == [12]
    assert "killed" in frame["reason"][0]


@pytest.mark.quick
def test_analysis_refuses_a_folder_that_is_not_there_as_a_real_process(tmp_path):
    proc = run_module("barlab.analysis", str(tmp_path / "nothing"), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert error_lines(proc.stderr) == [f"error: {tmp_path / 'nothing'} is not a folder (fix: pass a sweep folder "
                                        "such as outputs/bit_budget/multiruns/<date_time>)"]
    (tmp_path / "empty").mkdir()
    proc = call_main("barlab.analysis", str(tmp_path / "empty"), cwd=tmp_path)
    assert proc.returncode == 2 and error_lines(proc.stderr)[0].startswith(f"error: no jobs under {tmp_path / 'empty'}")


@pytest.mark.slow
def test_optuna_search_runs_on_optuna_4_or_later_with_shared_storage(tmp_path, smoke_tokenizer):
    import optuna

    assert int(optuna.__version__.split(".")[0]) >= 4
    db = tmp_path / "study.db"
    sweep = tmp_path / "optuna"
    env_args = ["-m", "-cd", str(SWEEPS), "-cn", "optuna_generator", "experiment=smoke", "metrics.backend=random",
                f"tokenizer_ckpt={smoke_tokenizer}", "hydra.sweeper.n_trials=2",
                f"hydra.sweeper.storage=sqlite:///{db}", f"hydra.sweep.dir={sweep}"]
    proc = run_module("barlab.train", *env_args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="generator_lr_wd", storage=f"sqlite:///{db}")
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 2
    for trial in trials:
        assert 1e-4 <= trial.params["generator.optim.lr"] <= 3e-3
        job = read_json(sweep / str(trial.number) / "results.json")
        assert trial.values[0] == pytest.approx(job["gfid"])  # the objective is results.json's gfid
    assert (sweep / "optimization_results.yaml").is_file()


@pytest.mark.slow
def test_mbm_ablation_study_in_two_parts_table_figure_and_notebook(tmp_path):
    parts = tmp_path / "part1", tmp_path / "part2"
    common = ("-m", "-cd", str(SWEEPS), "-cn", "mbm_ablations", "experiment=smoke", "tokenizer.bits=4",
              "diagnostics.sequences=32", "diagnostics.splice_samples=8")
    # part 1 as the real command; part 2 (one job) in this process, which saves a start-up
    for run, folder, points in zip((run_module, call_main), parts,
                                   (("ablation=bitwise,mbm", "generator.token_shuffle=1"),
                                    ("ablation=mbm_full_mask_10", "generator.token_shuffle=2"))):
        proc = run("barlab.train", *common, *points, f"hydra.sweep.dir={folder}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    full = read_json(parts[1] / "0" / "results.json")
    assert full["generator"]["bits_per_step"] == 16 and full["tokenizer_cached"] is True
    # a g x tau grid on the MBM job of part 1
    proc = call_main("barlab.sample", "-m", f"ckpt={parts[0] / '1'}", "score=true", "per_class=2", "png=false",
                     *SMOKE_DATA, *SMOKE_CLASSIFIER, "sampling.guidance=1.5,3", "sampling.temperature=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = call_main("barlab.analysis", str(parts[0]), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = pd.read_csv(parts[0] / "mbm_ablations.csv")
    assert table["ablation"].tolist() == ["bitwise", "mbm"]          # the study's order, the reference first
    grid = pd.read_csv(parts[0] / "sampling_grid.csv")
    mbm = table[table["ablation"] == "mbm"].iloc[0]
    assert mbm["best_fid"] == pytest.approx(grid["fid"].min()) and pd.isna(table["best_fid"].iloc[0])
    assert mbm["best_guidance"] == grid.loc[grid["fid"].idxmin(), "guidance"]
    splices = sorted(c for c in table if c.startswith("diag_splice"))
    assert len(splices) == 9 and table[splices].notna().all().all()   # 16 AR steps at p = 1: j = 0, 2, ..., 16
    assert (parts[0] / "mbm_ablations.png").stat().st_size > 10_000
    proc = call_main("barlab.analysis", *map(str, parts), "--out", str(tmp_path / "both"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    both = pd.read_csv(tmp_path / "both" / "mbm_ablations.csv")           # the two parts as one table
    assert list(zip(both["ablation"], both["generator.token_shuffle"])) == [
        ("bitwise", 1), ("mbm", 1), ("mbm_full_mask_10", 2)]
    text = execute_notebook("mbm_ablations.ipynb", os.pathsep.join(map(str, parts)))
    assert "2 folder(s): 3 jobs" in text and "mbm_full_mask_10" in text and "diag_first_step_acc_null" in text


@pytest.mark.slow
def test_generation_budget_study_matches_bits_and_reports_speed(tmp_path):
    sweep = tmp_path / "gb"
    proc = run_module("barlab.train", "-m", "-cd", str(SWEEPS), "-cn", "generation_budget", "experiment=smoke",
                      "token_head=fsq_bitwise,kl_diffusion", "channels_per_token=1", "diagnostics.splice_samples=0",
                      f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = {read_json(p)["overrides"]["token_head"]: read_json(p) for p in sweep.glob("*/results.json")}
    assert sorted(jobs) == ["fsq_bitwise", "kl_diffusion"]
    assert {j["bits_per_image"] for j in jobs.values()} == {16 * 16}      # 16 tokens x (16 bits | 1 channel x 16)
    assert jobs["fsq_bitwise"]["family"] == "discrete" and jobs["kl_diffusion"]["family"] == "continuous"
    assert jobs["kl_diffusion"]["head"] == "DiffusionHead" and jobs["fsq_bitwise"]["head"] == "BitwiseHead"
    assert all(j["sampling_images_per_s"] > 0 and j["generator_train_time_s"] > 0 for j in jobs.values())
    # the continuous job end to end: KL tokenizer with its latent scale, fp16 token shards, the diffusion head
    # trained, sampled and scored; its generator.pt rebuilds a continuous generator that samples again
    job = next(p.parent for p in sweep.glob("*/results.json")
               if read_json(p)["overrides"]["token_head"] == "kl_diffusion")
    gen = jobs["kl_diffusion"]["generator"]
    assert gen["bits_per_step"] == 1 and gen["ar_steps"] == 16 and gen["gfid_eval"]["num_samples"] == 16
    manifest = read_json(job / "tokens" / "manifest.json")
    assert manifest["token_type"] == "continuous" and manifest["token_channels"] == 1 and manifest["bits"] == 16
    assert not any(k.startswith(("diag_first_step", "diag_unmask")) for k in gen)   # no bits to diagnose
    from barlab.generator.image_generator import load_generator

    model, info = load_generator(job)
    assert info["token_type"] == "continuous" and model.tokenizer.latent_scale > 0
    images = model.generate(torch.arange(4), generator=torch.Generator().manual_seed(0))
    assert images.shape == (4, 3, 16, 16) and images.abs().max() <= 1.0
    # the side-by-side speeds of `barlab.bench bench=generation_budget` (a bench.json of its rows) join the table
    speed = tmp_path / "bench.json"
    speed.write_text(json.dumps({"benchmarks": {"generation_budget": {"rows": [
        {"token_head": "kl_diffusion", "channels_per_token": 1, "sample_images_per_s": 7.5, "train_steps_per_s": 2.0},
        {"token_head": "fsq_bitwise", "channels_per_token": 1, "sample_images_per_s": 30.0, "train_steps_per_s": 3.0},
        {"token_head": "fsq_bitwise", "channels_per_token": 2, "sample_images_per_s": 1.0, "train_steps_per_s": 1.0},
    ]}}}))
    proc = call_main("barlab.analysis", str(sweep), "--speed", str(speed), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = pd.read_csv(sweep / "generation_budget.csv")
    assert table["token_head"].tolist() == ["fsq_bitwise", "kl_diffusion"]
    assert table["gfid"].notna().all() and (table["sampling_images_per_s"] > 0).all()
    assert table["bench_sample_images_per_s"].tolist() == [30.0, 7.5]
    assert table["bench_train_steps_per_s"].tolist() == [3.0, 2.0]
    assert (sweep / "generation_budget.png").stat().st_size > 10_000
    proc = call_main("barlab.analysis", str(sweep), "--speed", str(tmp_path / "results.json"), cwd=tmp_path)
    assert proc.returncode == 2 and error_lines(proc.stderr)[0].startswith("error: --speed: ")
    text = execute_notebook("generation_budget.ipynb", sweep, BARLAB_SPEED=str(speed))
    assert "1 folder(s): 2 jobs" in text and "kl_diffusion" in text and f"side by side from {speed}" in text
