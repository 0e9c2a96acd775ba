"""`hydra/launcher=slurm` against a real SLURM cluster (scripts/slurm_cluster.sh; CI starts one).

Sweeps go through sbatch and come back with their results; a failed job is a row of the analysis
and makes the sweep exit 1; a bad command line is refused in one line before anything is submitted;
a requeued or timed-out job continues in its run folder from its checkpoint. The pre-emption
callback itself is also checked without a cluster. Every sweep runs in a subprocess with an outer
timeout, and a test's jobs are cancelled when it ends.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from helpers import REPO, call_main, error_lines, read_json, run_module

from barlab.lightning.callbacks.preemption import PreemptionCheckpoint
from barlab.runtime.checkpoint_io import AtomicCheckpointIO
from barlab.runtime.run_state import checkpoint_step


def cluster_problem() -> str | None:
    """Why the SLURM tests cannot run here, or None."""
    if shutil.which("sbatch") is None:
        return "sbatch is not installed (CI runs scripts/slurm_cluster.sh install + start)"
    try:
        proc = subprocess.run(["sinfo", "-h"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"sinfo failed: {err}"
    if proc.returncode != 0:
        return f"no SLURM controller answers (sinfo: {proc.stderr.strip()}); run scripts/slurm_cluster.sh start"
    return None


_PROBLEM = cluster_problem()
needs_cluster = pytest.mark.skipif(_PROBLEM is not None, reason=str(_PROBLEM))

# One tiny, cheap job: 16 px synthetic data, a few steps, random feature network for the metrics.
SMOKE = ("experiment=smoke", "metrics.backend=random", "hydra.launcher.cpus_per_task=1")


def sweep(tmp_path: Path, sweep_dir: Path, *overrides: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """``python -m barlab.train -m hydra/launcher=slurm <overrides>`` into ``sweep_dir``."""
    return run_module("barlab.train", "-m", "hydra/launcher=slurm", *overrides, f"hydra.sweep.dir={sweep_dir}",
                      cwd=tmp_path, timeout=timeout)


def refused_sweep(tmp_path: Path, sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """:func:`sweep`'s command line, refused by the pre-flight: barlab.train's main() in-process
    (helpers.call_main); test_preflight_without_multirun_is_one_line runs a refusal as a real process."""
    return call_main("barlab.train", "-m", "hydra/launcher=slurm", *overrides, f"hydra.sweep.dir={sweep_dir}",
                     cwd=tmp_path)


def slurm_jobs(sweep_dir: Path) -> list[str]:
    """The SLURM jobs of a sweep, from submitit's folders: ``<array>_<task>`` for a job array,
    ``<job>`` for a sweep of one job."""
    names = [p.name for p in (sweep_dir / ".submitit").glob("*") if re.fullmatch(r"\d+(_\d+)?", p.name)]
    # an array also has a folder named after the array itself (its submission pickle): not a job
    return sorted(n for n in names if "_" in n or not any(m.startswith(f"{n}_") for m in names))


def wait_for(condition, seconds: float, what: str) -> None:
    """Poll ``condition()`` every 0.5 s; fail the test naming ``what`` after ``seconds``."""
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"timed out after {seconds} s waiting for {what}"
        time.sleep(0.5)


def sacct_states(job: str) -> list[str]:
    """Every recorded attempt's state of ``job`` (``<array>_<task>`` or ``<job>``), oldest first."""
    out = subprocess.run(["sacct", "-a", "-X", "-n", "-P", "--duplicates", "-o", "JobID,State", "-j", job],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return [line.split("|")[1].split()[0] for line in out.splitlines() if line.startswith(f"{job}|")]


def final_states(job: str) -> list[str]:
    """:func:`sacct_states` once the last attempt is over (accounting lags a second or so behind)."""
    wait_for(lambda: sacct_states(job)[-1:] not in ([], ["PENDING"], ["RUNNING"]), 30, f"sacct to record {job} as over")
    return sacct_states(job)


def slurm_job_id(run_dir: Path) -> str:
    """The SLURM job (``<array>_<task>`` or ``<job>``) a run folder was written by: ``hydra.job.id``."""
    match = re.search(r"^\s+id: '?(\d+(?:_\d+)?)'?$", (run_dir / ".hydra" / "hydra.yaml").read_text(), re.M)
    assert match, f"no SLURM job id in {run_dir}/.hydra/hydra.yaml"
    return match.group(1)


def logs(sweep_dir: Path) -> str:
    """All the text the jobs of a sweep logged (train.log of each run, SLURM's stdout/stderr)."""
    files = [*sweep_dir.glob("*/train.log"), *sweep_dir.glob(".submitit/*/*.out"), *sweep_dir.glob(".submitit/*/*.err")]
    return "\n".join(p.read_text(errors="replace") for p in files)


@pytest.fixture
def cancel_jobs(tmp_path):
    """Cancel whatever a test left queued or running (its sweeps live under tmp_path)."""
    yield
    for sweep_dir in {p.parent.parent for p in tmp_path.rglob(".submitit/*")}:
        for job in slurm_jobs(sweep_dir):
            subprocess.run(["scancel", job], capture_output=True, timeout=30)


# --- the pre-emption callback, without a cluster ---------------------------------------------

class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 4)), batch_size=4)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _SignalAt(L.Callback):
    """Sends SIGUSR2 to this process at the start of training batch ``batch_idx``."""

    def __init__(self, batch_idx: int):
        self.batch_idx = batch_idx

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.batch_idx:
            os.kill(os.getpid(), signal.SIGUSR2)


def test_preemption_checkpoint_defers_the_signal_to_the_batch_end(tmp_path):
    calls: list[int] = []

    def submitit_handler(signum, frame):  # what submitit does: requeue, then sys.exit(-1)
        calls.append(signum)
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        ckpt = tmp_path / "checkpoints" / "last.ckpt"
        trainer = L.Trainer(max_steps=10, callbacks=[_SignalAt(3), PreemptionCheckpoint(str(ckpt))],
                            plugins=[AtomicCheckpointIO()], logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
        with pytest.raises(SystemExit):
            trainer.fit(_Tiny())
        assert calls == [signal.SIGUSR2]                   # submitit's handler ran once, after the checkpoint
        assert torch.load(ckpt, weights_only=False)["global_step"] == 4  # batch 3 finished, then stopped
        assert trainer.global_step == 4
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler       # put back
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_preemption_checkpoint_does_nothing_outside_submitit(tmp_path):
    previous = signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    try:
        callback = PreemptionCheckpoint(str(tmp_path / "last.ckpt"))
        trainer = L.Trainer(max_steps=3, callbacks=[callback], logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
        trainer.fit(_Tiny())
        assert not callback.active and signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL
        assert not (tmp_path / "last.ckpt").exists()
    finally:
        signal.signal(signal.SIGUSR2, previous)


# --- the launcher config follows the trainer ----------------------------------------------------

def launcher_request(*overrides: str) -> dict:
    """The resolved SLURM request of ``hydra/launcher=slurm`` with ``overrides`` (composed in-process)."""
    from hydra import compose, initialize_config_dir

    from barlab.config.paths import CONFIG_DIR
    from barlab.config.resolvers import register_resolvers

    register_resolvers()  # as every entry point does
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
        launcher = cfg.hydra.launcher
        keys = ("nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "partition", "max_num_timeout")
        return {key: launcher[key] for key in keys} | {"callback": cfg.hydra.callbacks.failed_jobs._target_}


@pytest.mark.parametrize("overrides, expected", [
    ((), dict(nodes=1, tasks_per_node=1, gpus_per_node=None, cpus_per_task=2)),   # accelerator=auto: no GPU asked
    (("experiment=smoke",), dict(nodes=1, tasks_per_node=1, gpus_per_node=None, cpus_per_task=1)),
    (("trainer=gpu",), dict(nodes=1, tasks_per_node=1, gpus_per_node=1, cpus_per_task=2)),
    (("trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2", "data.num_workers=7"),
     dict(nodes=2, tasks_per_node=8, gpus_per_node=8, cpus_per_task=8)),
    (("trainer=ddp_cpu",), dict(nodes=1, tasks_per_node=2, gpus_per_node=None, cpus_per_task=2)),
])
def test_launcher_request_follows_the_trainer(overrides, expected):
    request = launcher_request(*overrides)
    assert {key: request[key] for key in expected} == expected
    assert request["partition"] is None and request["max_num_timeout"] == 3
    assert request["callback"] == "barlab.analysis.failed_jobs.FailedJobsCallback"


# --- preflight: one line, exit 2, nothing submitted --------------------------------------------

def test_preflight_without_sbatch_is_one_line(tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # the interpreter is started by its full path
    proc = refused_sweep(tmp_path, tmp_path / "sweep", "tokenizer.bits=10,14", *SMOKE)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert error_lines(proc.stderr) == [
        "error: hydra/launcher=slurm: sbatch is not on PATH, so no job can be submitted from this machine "
        "(fix: run on a SLURM login node, or drop hydra/launcher=slurm to run the sweep here)"]
    assert not (tmp_path / "sweep").exists()


def test_preflight_without_controller_is_one_line(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text("#!/bin/sh\necho should not run >&2; exit 1\n")
    (fake / "sinfo").write_text("#!/bin/sh\necho 'slurm_load_partitions: Unable to contact slurm controller "
                                "(connect failure)' >&2; exit 1\n")
    for tool in fake.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:/usr/bin:/bin")
    proc = refused_sweep(tmp_path, tmp_path / "sweep", "tokenizer.bits=10,14", *SMOKE)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert error_lines(proc.stderr) == [
        "error: hydra/launcher=slurm: the SLURM controller does not respond (sinfo: slurm_load_partitions: Unable "
        "to contact slurm controller (connect failure)) (fix: check that `sinfo` works on this machine; for the "
        "local CI cluster run scripts/slurm_cluster.sh start)"]
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slurm
@needs_cluster
def test_preflight_unknown_partition_is_one_line(tmp_path):
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30).stdout
    proc = refused_sweep(tmp_path, tmp_path / "sweep", "tokenizer.bits=10,14", "hydra.launcher.partition=nope", *SMOKE)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "partition 'nope' is unknown to SLURM" in lines[0], proc.stderr[-2000:]
    assert lines[0].startswith("error: hydra/launcher=slurm: ") and "(fix: hydra.launcher.partition=debug)" in lines[0]
    assert not (tmp_path / "sweep").exists()
    after = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30).stdout
    assert after == before


@pytest.mark.quick
def test_preflight_without_multirun_is_one_line(tmp_path):
    """A real process: the check of the command line before Hydra starts (barlab.cli.precheck_command_line)."""
    proc = run_module("barlab.train", "hydra/launcher=slurm", *SMOKE, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert error_lines(proc.stderr) == ["error: hydra/launcher=slurm: only a multirun is submitted to SLURM; "
                                        "without -m the job would run on this machine (fix: add -m)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []          # no run folder: refused before Hydra


# --- sweeps on the cluster ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def user_sweep(tmp_path_factory):
    """The user's command as typed, through sbatch: ``python -m barlab.train -m tokenizer.bits=0,10,14,18
    hydra/launcher=slurm`` (smoke settings, stage=all), without a sweep dir. Job 0 is refused (bits=0), jobs
    1-3 train. ``(process, sweep folder, seconds)``, read by the three tests below; its jobs are cancelled
    at the end of the module."""
    tmp_path = tmp_path_factory.mktemp("user_sweep")
    start = time.time()
    proc = run_module("barlab.train", "-m", "tokenizer.bits=0,10,14,18", "hydra/launcher=slurm", *SMOKE,
                      "tokenizer.max_steps=6", "generator.max_steps=4", cwd=tmp_path, timeout=300)
    folders = list((tmp_path / "outputs" / "smoke" / "multiruns").iterdir())
    try:
        yield proc, folders, time.time() - start
    finally:
        for folder in folders:
            for job in slurm_jobs(folder):
                subprocess.run(["scancel", job], capture_output=True, timeout=30)


@pytest.mark.slurm
@needs_cluster
def test_user_sweep_runs_three_jobs_through_sbatch(user_sweep):
    _, (sweep_dir,), seconds = user_sweep
    print(f"4-job SLURM sweep: {seconds:.1f} s")
    jobs = slurm_jobs(sweep_dir)
    array = jobs[0].split("_")[0]
    assert jobs == [f"{array}_{num}" for num in range(4)]  # one sbatch: a job array of four tasks
    for num, bits in ((1, 10), (2, 14), (3, 18)):
        run_dir = sweep_dir / str(num)
        results = read_json(run_dir / "results.json")
        assert results["status"] == "ok" and results["stage"] == "all"
        assert results["overrides"]["tokenizer.bits"] == bits and results["bits_per_token"] == bits
        assert slurm_job_id(run_dir) == f"{array}_{num}"
        assert final_states(f"{array}_{num}") == ["COMPLETED"]
        assert (sweep_dir / ".submitit" / f"{array}_{num}" / f"{array}_{num}_0_result.pkl").is_file()

    proc = call_main("barlab.analysis", str(sweep_dir), cwd=sweep_dir.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = pd.read_csv(sweep_dir / "results.csv")
    assert table["tokenizer.bits"].tolist() == [0, 10, 14, 18]
    trained = table[table["tokenizer.bits"] > 0]
    assert (trained["outcome"] == "ok").all() and trained["gfid"].notna().all()


@pytest.mark.slurm
@needs_cluster
def test_user_command_without_sweep_dir(user_sweep):
    """The sweep folder is the default outputs/<task>/multiruns/<run_name>: one folder, one job per point."""
    _, folders, _ = user_sweep
    (sweep_dir,) = folders
    assert sweep_dir.parent.parent.name == "smoke" and sorted(p.name for p in sweep_dir.glob("[0-9]")) == \
        ["0", "1", "2", "3"]
    assert read_json(sweep_dir / "1" / "results.json")["status"] == "ok" and len(slurm_jobs(sweep_dir)) == 4


@pytest.mark.slurm
@needs_cluster
def test_failed_job_is_a_row_and_the_sweep_exits_1(user_sweep):
    proc, (sweep_dir,), _ = user_sweep
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr[-3000:]   # the refused job's own line is in its SLURM log
    assert lines[0].startswith("error: 1 of 4 sweep job(s) failed: #0 (tokenizer.bits=0 ")
    assert "refused: tokenizer.bits: must be a positive integer, got 0" in lines[0]
    assert "positive integer, got 0" in logs(sweep_dir)
    array = slurm_jobs(sweep_dir)[0].split("_")[0]
    assert final_states(f"{array}_1") == ["COMPLETED"] and read_json(sweep_dir / "1" / "results.json")["status"] == "ok"
    failed = read_json(sweep_dir / "0" / "results.json")
    assert failed["status"] == "failed" and failed["outcome"] == "refused"

    proc = call_main("barlab.analysis", str(sweep_dir), cwd=sweep_dir.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = pd.read_csv(sweep_dir / "results.csv").set_index("tokenizer.bits")
    assert table.loc[0, "outcome"] == "refused" and "positive integer" in table.loc[0, "reason"]
    assert table.loc[10, "outcome"] == "ok" and table.loc[10, "bits_per_image"] == 16 * 10


@pytest.mark.slurm
@needs_cluster
def test_sweep_file_runs_on_slurm(tmp_path, cancel_jobs):
    """``-cd sweeps -cn bit_budget hydra/launcher=slurm``: the sweep files find the launcher too."""
    sweep_dir = tmp_path / "sweep"
    proc = run_module("barlab.train", "-m", "-cd", str(REPO / "sweeps"), "-cn", "bit_budget", "hydra/launcher=slurm",
                      "point=fsq4,kl1", *SMOKE, "tokenizer.max_steps=6", f"hydra.sweep.dir={sweep_dir}",
                      cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(slurm_jobs(sweep_dir)) == 2
    proc = call_main("barlab.analysis", str(sweep_dir), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = pd.read_csv(sweep_dir / "results.csv")
    assert table["point"].tolist() == ["fsq4", "kl1"] and (table["outcome"] == "ok").all()
    assert table["family"].tolist() == ["discrete", "continuous"]
    assert table["bits_per_image"].tolist() == [16 * 4, 16 * 16]


@pytest.mark.slurm
@needs_cluster
def test_ddp_job_gets_one_slurm_task_per_device(tmp_path, cancel_jobs):
    """trainer=ddp_cpu (2 devices): one job of 2 SLURM tasks, which Lightning joins as ranks 0 and 1."""
    sweep_dir = tmp_path / "sweep"
    proc = sweep(tmp_path, sweep_dir, "tokenizer.bits=8", "trainer=ddp_cpu", "stage=tokenizer", *SMOKE,
                 "tokenizer.max_steps=6", "metrics.rfid.enabled=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (job,) = slurm_jobs(sweep_dir)
    array = job.split("_")[0]
    assert "#SBATCH --ntasks-per-node=2" in (sweep_dir / ".submitit" / array / f"{array}_submission.sh").read_text()
    text = logs(sweep_dir)
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in text and "GLOBAL_RANK: 1, MEMBER: 2/2" in text
    assert read_json(sweep_dir / "0" / "results.json")["status"] == "ok"
    assert final_states(job) == ["COMPLETED"]


# --- requeue and time limit: the job continues from its checkpoint ------------------------------

def sweep_in_background(tmp_path: Path, sweep_dir: Path, *overrides: str,
                        timeout: int) -> tuple[threading.Thread, dict]:
    """Start :func:`sweep` in a thread; the dict gets ``proc`` when it returns."""
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(proc=sweep(tmp_path, sweep_dir, *overrides, timeout=timeout)),
                              daemon=True)
    thread.start()
    return thread, out


@pytest.mark.slurm
@needs_cluster
def test_requeued_generator_job_resumes_from_its_checkpoint(tmp_path, smoke_tokenizer, cancel_jobs):
    sweep_dir = tmp_path / "sweep"
    run_dir = sweep_dir / "0"
    ckpt = run_dir / "checkpoints" / "generator" / "last.ckpt"
    thread, out = sweep_in_background(
        tmp_path, sweep_dir, "stage=generator", f"tokenizer_ckpt={smoke_tokenizer}", *SMOKE,
        "generator.max_steps=300", "generator.val_every=150", "callbacks.model_checkpoint.every_n_train_steps=20",
        timeout=300)
    wait_for(ckpt.is_file, 150, f"{ckpt} (the job training)")
    (job,) = slurm_jobs(sweep_dir)  # a sweep of one job: no array
    requeued_at, step_at_requeue = time.time(), checkpoint_step(ckpt)
    subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True, timeout=30)
    thread.join(300)
    assert not thread.is_alive() and out["proc"].returncode == 0, out.get("proc") and out["proc"].stderr[-3000:]
    print(f"requeue to finished sweep: {time.time() - requeued_at:.1f} s")

    assert final_states(job) == ["REQUEUED", "COMPLETED"]
    assert slurm_job_id(run_dir) == job                      # the same run folder, the same job
    results = read_json(run_dir / "results.json")
    assert results["status"] == "ok" and results["train_steps"] == 300
    assert results["restarts"] == 1
    step = results["resumed_from_step"]
    print(f"requeued with the last checkpoint at step {step_at_requeue}; resumed from step {step}")
    # the job trains on until SLURM kills it (KillWait): it may write one more checkpoint
    assert step_at_requeue <= step < 300 and step % 20 == 0 and step_at_requeue > 0
    assert f"Restoring states from the checkpoint path at {ckpt}" in logs(sweep_dir)
    assert f"generator: resuming from {ckpt} at step {step}" in logs(sweep_dir)


@pytest.mark.slurm
@needs_cluster
def test_time_limit_checkpoints_requeues_and_finishes(tmp_path, smoke_tokenizer, cancel_jobs):
    sweep_dir = tmp_path / "sweep"
    run_dir = sweep_dir / "0"
    start = time.time()
    # A 1-minute limit, one requeue allowed. slurmctld checks limits every 30 s and signals a job
    # whose end is less than signal_delay_s + 30 s away, so with signal_delay_s=10 the signal comes at
    # 20-50 s, while the job is training. Training is bounded by time, not steps (max_time, which
    # Lightning's Timer keeps across the resume), so that no machine speed lets it finish first.
    thread, out = sweep_in_background(
        tmp_path, sweep_dir, "stage=generator", f"tokenizer_ckpt={smoke_tokenizer}", *SMOKE,
        "generator.max_steps=1000000", "generator.val_every=5000",
        "callbacks.model_checkpoint.every_n_train_steps=1000000",
        "+trainer.max_time='00:00:00:48'", "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=10",
        "hydra.launcher.max_num_timeout=1", timeout=300)
    log_file = run_dir / "train.log"
    wait_for(lambda: log_file.is_file() and "pre-empted at step" in log_file.read_text(), 150,
             "the pre-emption checkpoint")
    (job,) = slurm_jobs(sweep_dir)
    wait_for(lambda: "REQUEUED" in sacct_states(job), 60, "the requeue")
    # The second attempt could be signalled as early as the first; give it time to finish instead
    # (submitit keeps counting from max_num_timeout=1, the test is about the first attempt).
    subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=5"], check=True, capture_output=True, timeout=30)
    thread.join(300)
    assert not thread.is_alive() and out["proc"].returncode == 0, out.get("proc") and out["proc"].stderr[-3000:]
    print(f"time-limit sweep: {time.time() - start:.1f} s")

    assert final_states(job) == ["REQUEUED", "COMPLETED"]
    text = logs(sweep_dir)
    assert "this job is timed-out" in text                 # submitit's verdict on SIGUSR2
    match = re.search(r"pre-empted at step (\d+): checkpoint written to (\S+)", text)
    assert match, text[-3000:]
    step = int(match.group(1))
    assert match.group(2) == str(run_dir / "checkpoints" / "generator" / "last.ckpt")
    results = read_json(run_dir / "results.json")
    assert results["status"] == "ok" and results["restarts"] == 1
    print(f"signalled and checkpointed at step {step}; resumed from step {results['resumed_from_step']}; "
          f"finished at step {results['train_steps']}")
    assert results["resumed_from_step"] == step and 0 < step < results["train_steps"]  # from the pre-emption checkpoint
