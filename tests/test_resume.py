"""Run identity and auto-resume: a killed run continues where it stopped when the same command is run
again with its ``run_name``; finished stages are reused; another recipe in the same folder is refused;
checkpoints survive a kill in the middle of a save."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SMOKE_RUN_ARGS, call_main, error_lines, read_json, run_module

from barlab.lightning.callbacks.rng_state import collect_rng_states, restore_rng_states
from barlab.runtime.run_state import checkpoint_step, stream_seed

SMOKE = ("experiment=smoke", "metrics.backend=random")


def run_dir(tmp_path: Path, name: str) -> Path:
    return tmp_path / "outputs" / "smoke" / "runs" / name


def start_module(module: str, *args: str, cwd: Path) -> subprocess.Popen:
    """Like helpers.run_module, but in the background, in its own process group."""
    env = dict(os.environ, BARLAB_ROOT=str(cwd), BARLAB_DATA_DIR=str(cwd / "data"), WANDB_MODE="offline",
               PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.slow
def test_sigkill_during_generator_training_then_the_same_command_resumes(tmp_path):
    args = (*SMOKE, "run_name=killed", "generator.max_steps=200", "generator.val_every=100",
            "callbacks.model_checkpoint.every_n_train_steps=20", "logger=wandb")
    folder = run_dir(tmp_path, "killed")
    last = folder / "checkpoints" / "generator" / "last.ckpt"
    proc = start_module("barlab.train", *args, cwd=tmp_path)
    try:
        wait_for(lambda: last.is_file() and checkpoint_step(last) >= 40, 240, "a generator checkpoint at step 40")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = checkpoint_step(last)
    tokenizer_mtime = (folder / "tokenizer.pt").stat().st_mtime_ns
    manifest_mtime = (folder / "tokens" / "manifest.json").stat().st_mtime_ns

    done = run_module("barlab.train", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = read_json(folder / "results.json")
    assert results["status"] == "ok" and results["restarts"] == 1
    assert results["tokenizer"]["reused"] is True                      # not trained again
    assert (folder / "tokenizer.pt").stat().st_mtime_ns == tokenizer_mtime
    assert (folder / "tokens" / "manifest.json").stat().st_mtime_ns == manifest_mtime  # shards not rewritten
    generator = results["generator"]
    assert generator["resumed_from_step"] == killed_at >= 40
    assert generator["train_steps"] == 200
    final = torch.load(last, map_location="cpu", weights_only=False)
    assert final["global_step"] == 200
    # the optimiser and the LR schedule continued: AdamW counted every step of both attempts
    adam_steps = {int(s["step"]) for s in final["optimizer_states"][0]["state"].values()}
    assert adam_steps == {200}
    assert final["lr_schedulers"][0]["last_epoch"] == 200
    assert set(final["rng_states"]) == {0}
    assert "continuing run" in (folder / "train.log").read_text()
    # wandb: one run per stage; the restarted generator stage logged on into its own run id
    ids = read_json(folder / "run.json")["wandb_ids"]
    runs = sorted(p.name.rsplit("-", 1)[1] for p in (folder / "wandb").glob("offline-run-*"))
    assert ids["tokenizer"] != ids["generator"]
    assert runs == sorted([ids["tokenizer"], ids["generator"], ids["generator"]])


@pytest.fixture(scope="module")
def study_sweep(tmp_path_factory):
    """A sweep of two tokenizer jobs with wandb and a run_name but no sweep dir, run twice (the same
    command). What the first run left (wandb runs, run.json ids, results) is read before the second."""
    tmp_path = tmp_path_factory.mktemp("study")
    args = ("-m", *SMOKE, "stage=tokenizer", "metrics.rfid.enabled=false", "tokenizer.bits=4,6",
            "tokenizer.max_steps=4", "tokenizer.val_every=4", "logger=wandb", "run_name=study")
    sweep = tmp_path / "outputs" / "smoke" / "multiruns" / "study"
    first = run_module("barlab.train", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    after_first = {job: {"wandb_runs": sorted(p.name for p in (sweep / job / "wandb").glob("offline-run-*")),
                         "run": read_json(sweep / job / "run.json"), "results": read_json(sweep / job / "results.json")}
                   for job in ("0", "1")}
    second = run_module("barlab.train", *args, cwd=tmp_path)   # the same sweep again
    assert second.returncode == 0, second.stderr[-3000:]
    return sweep, after_first


@pytest.mark.slow
def test_each_job_of_an_in_process_sweep_gets_its_own_wandb_run(study_sweep):
    _, after_first = study_sweep
    ids = []
    for job in ("0", "1"):
        (run,) = after_first[job]["wandb_runs"]       # exactly one run, in its own job folder
        ids.append(run.rsplit("-", 1)[1])
        assert ids[-1] == after_first[job]["run"]["wandb_ids"]["tokenizer"]
    assert ids[0] != ids[1]


@pytest.mark.slow
def test_rerunning_a_finished_run_reuses_both_stages(smoke_run, tmp_path):
    """The session's finished smoke run (conftest.py), copied with its data to a root of its own, and its
    command run again there: both stages are reused, nothing is rewritten, the attempt is recorded."""
    root = tmp_path / "root"
    # copy2: the files keep their mtimes. Only the run and its data: other tests (another xdist worker, too)
    # write their own folders beside them, and files being written atomically (".*.tmp") are skipped
    for part in ("outputs", "data"):
        shutil.copytree(smoke_run.root / part, root / part, symlinks=True,
                        ignore=shutil.ignore_patterns(".*.tmp", "*.lock"))
    folder = run_dir(root, "smoke")
    before = {p: p.stat().st_mtime_ns for p in (folder / "tokenizer.pt", folder / "generator.pt")}
    ema_state = torch.load(folder / "checkpoints" / "tokenizer" / "last.ckpt", weights_only=False)["callbacks"]
    assert any("num_updates" in v for v in ema_state.values())  # the EMA lives in the checkpoint
    first = read_json(folder / "results.json")
    assert first["restarts"] == 0

    again = run_module("barlab.train", *SMOKE_RUN_ARGS, cwd=root)
    assert again.returncode == 0, again.stderr[-3000:]
    results = read_json(folder / "results.json")
    assert results["restarts"] == 1
    assert results["tokenizer"]["reused"] is True and results["generator"]["reused"] is True
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert results["gfid"] == first["gfid"] and results["psnr"] == first["psnr"]   # the finished stages' numbers
    run = read_json(folder / "run.json")
    assert len(run["attempts"]) == 2 and run["run_name"] == "smoke"


@pytest.mark.slow
def test_another_recipe_in_the_same_run_folder_is_refused_and_nothing_is_touched(smoke_tokenizer, tmp_path):
    """A copy of the session's finished smoke tokenizer run (conftest.py: experiment=smoke stage=tokenizer
    tokenizer.bits=6 metrics.rfid.enabled=false) and its command again with another bit width, then with
    resume=false: both refused in one line (in-process), the run's record and results untouched."""
    root = tmp_path / "root"
    shutil.copytree(smoke_tokenizer.parent.parent, root, symlinks=True)
    folder = root / "run"
    base = ("experiment=smoke", "stage=tokenizer", "metrics.rfid.enabled=false", f"hydra.run.dir={folder}")
    kept = {name: (folder / name).read_bytes() for name in ("results.json", "run.json", "tokenizer.pt")}
    proc = call_main("barlab.train", *base, "tokenizer.bits=8", cwd=root)
    assert proc.returncode == 2
    (line,) = error_lines(proc.stderr)
    assert "run_name" in line and "tokenizer.bits (was 6, now 8)" in line and "Traceback" not in proc.stderr
    assert {name: (folder / name).read_bytes() for name in kept} == kept

    proc = call_main("barlab.train", *base, "tokenizer.bits=6", "resume=false", cwd=root)
    assert proc.returncode == 2
    (line,) = error_lines(proc.stderr)
    assert line.startswith("error: resume:") and "run_name=" in line
    assert {name: (folder / name).read_bytes() for name in kept} == kept


def test_rng_states_round_trip():
    states = collect_rng_states()
    expected = (torch.rand(3), np.random.rand(3), __import__("random").random())
    torch.manual_seed(123), np.random.seed(123)
    restore_rng_states(states)
    again = (torch.rand(3), np.random.rand(3), __import__("random").random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]


def test_a_resumed_stream_is_a_fresh_one():
    assert stream_seed(7, 0) == 7                  # a first attempt replays the configured stream
    seeds = {stream_seed(7, s) for s in (0, 100, 200)}
    assert len(seeds) == 3 and all(0 <= s < 2**31 for s in seeds)


KILL_DURING_SAVE = textwrap.dedent('''
    import sys, time, torch
    from barlab.runtime.checkpoint_io import AtomicCheckpointIO

    class SlowToPickle:
        def __reduce__(self):
            open(sys.argv[2], "w").close()   # the new checkpoint is being written now
            time.sleep(60)
            return (int, (0,))

    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.ones(1000)}, sys.argv[1])
    io.save_checkpoint({"step": 2, "w": torch.zeros(1000), "slow": SlowToPickle()}, sys.argv[1])
''')


def test_a_kill_during_a_checkpoint_save_keeps_the_previous_checkpoint(tmp_path):
    path, started = tmp_path / "last.ckpt", tmp_path / "saving"
    proc = subprocess.Popen([sys.executable, "-c", KILL_DURING_SAVE, str(path), str(started)])
    try:
        wait_for(started.exists, 60, "the second save to start")
        proc.kill()
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    previous = torch.load(path, weights_only=True)
    assert previous["step"] == 1 and torch.equal(previous["w"], torch.ones(1000))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("last.ckpt", "saving")]
    assert all(name.startswith(".last.ckpt.") and name.endswith(".tmp") for name in leftovers)


@pytest.mark.parametrize("global_batch, world, per_rank, expected", [
    (2048, 8, 256, (256, 1)), (2048, 1, 256, (256, 8)), (96, 2, 20, (16, 3)), (64, 4, 16, (16, 1)),
])
def test_global_batch_splits_into_per_rank_batch_and_accumulation(global_batch, world, per_rank, expected):
    from barlab.runtime.distributed import split_global_batch

    batch, accumulation = split_global_batch(global_batch, world, per_rank, "generator.global_batch_size")
    assert (batch, accumulation) == expected and batch * accumulation * world == global_batch


@pytest.mark.parametrize("override, text", [
    ("generator.global_batch_size=33", "cannot be split over 2 processes"),
    ("tokenizer.global_batch_size=64", "needs gradient accumulation"),
])
def test_a_global_batch_the_world_cannot_take_is_refused_before_anything_runs(tmp_path, override, text):
    proc = call_main("barlab.train", *SMOKE, "trainer=ddp_cpu", override, "run_name=gb", cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = error_lines(proc.stderr)
    assert line.startswith(f"error: {override.split('=')[0]}:") and text in line
    assert not (run_dir(tmp_path, "gb") / "checkpoints").exists()


@pytest.mark.slow
def test_a_sweep_without_sweep_dir_lands_in_its_run_name_and_resumes_there(study_sweep):
    sweep, after_first = study_sweep
    assert [after_first[j]["results"]["restarts"] for j in ("0", "1")] == [0, 0]
    assert [after_first[j]["results"]["bits_per_token"] for j in ("0", "1")] == [4, 6]
    rows = [read_json(sweep / j / "results.json") for j in ("0", "1")]
    assert [r["restarts"] for r in rows] == [1, 1] and all(r["reused"] for r in rows)
    assert [r["psnr"] for r in rows] == [after_first[j]["results"]["psnr"] for j in ("0", "1")]
