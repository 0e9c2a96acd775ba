"""Shared test helpers: run barlab's entry points in a subprocess, read their results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The session's shared smoke pipeline (the ``smoke_run`` fixture of conftest.py): its command line.
SMOKE_RUN_ARGS = ("experiment=smoke", "run_name=smoke")
# barlab.sample / barlab.evaluate on experiment=smoke's data and metrics sizes (its cached classifier, no new one)
SMOKE_DATA = ["data=synthetic", "data.image_size=16"]
SMOKE_CLASSIFIER = ["metrics.classifier.width=8", "metrics.classifier.max_steps=20"]   # names its cached file
SMOKE_METRICS = [*SMOKE_CLASSIFIER, "metrics.classifier.batch_size=32", "metrics.reference.max_samples=256",
                 "metrics.batch_size=64", "metrics.kid_subset_size=32",
                 "trainer.enable_progress_bar=false"]


def run_module(module: str, *args: str, cwd: Path, timeout: int = 600,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` with outputs and data under ``cwd`` (never the repo); ``env``: more
    environment variables."""
    env = {**os.environ, **(env or {})}
    env.update({
        "BARLAB_ROOT": str(cwd),
        "BARLAB_DATA_DIR": str(cwd / "data"),
        "WANDB_MODE": "offline",
        "PYTHONUNBUFFERED": "1",
    })
    # its own process group: a timeout kills every process it started (DDP ranks too), not only itself
    with subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run_modules(*commands: tuple[str, ...], cwd: Path, timeout: int = 600) -> list[subprocess.CompletedProcess]:
    """Several independent ``run_module(module, *args)`` commands at once, results in order: on 2 cores the
    start-ups of short processes (refusals) overlap instead of adding up."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(commands)) as pool:
        futures = [pool.submit(run_module, *command, cwd=cwd, timeout=timeout) for command in commands]
        return [future.result() for future in futures]


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def error_lines(stderr: str) -> list[str]:
    """The lines barlab prints for a user error."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def gpu_count() -> int:
    """CUDA devices this process sees (0 without a CUDA build of torch)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_if(min_gpus: int = 0) -> pytest.MarkDecorator:
    """A ``skipif`` mark, RunIf-style: skip unless the machine has what the test needs.

    Use it with the ``gpu`` marker (so ``-m "not gpu"`` deselects the test everywhere)::

        @pytest.mark.gpu
        @run_if(min_gpus=1)
        def test_on_cuda(): ...
    """
    reasons = []
    if min_gpus and gpu_count() < min_gpus:
        reasons.append(f"needs {min_gpus} GPU(s), has {gpu_count()}")
    return pytest.mark.skipif(bool(reasons), reason="; ".join(reasons) or "requirements met")


def call_main(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``module``'s ``main()`` called in this process, as :func:`run_module` would run it in a child.

    The same environment variables, working folder and ``sys.argv``; stdout and stderr captured; the
    exit status taken from ``SystemExit`` (or ``main``'s return value for the argparse tools, shard and
    analysis). An uncaught exception is printed as a traceback on stderr with status 1, as Python does.
    Everything global a run may change is put back afterwards: environment, working folder, argv,
    logging handlers and levels, warning filters, signal handlers, torch threads and the RNG states.
    For a refused command (exit 2 with one line) this saves a process start-up of 5-6 s; runs that
    train keep :func:`run_module`, which also checks the real command line.
    """
    import contextlib
    import gc
    import importlib
    import importlib.util
    import io
    import logging
    import random
    import traceback
    import warnings

    import numpy as np
    import torch

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv[:]
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)}
    saved_rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    saved_threads = torch.get_num_threads()
    loggers = [logging.getLogger()] + [lg for lg in logging.root.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    saved_logs = {lg: (lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers}
    os.environ.update({"BARLAB_ROOT": str(cwd), "BARLAB_DATA_DIR": str(cwd / "data"), "WANDB_MODE": "offline"})
    if importlib.util.find_spec(module).submodule_search_locations is not None:
        module_main = f"{module}.__main__"            # a package: `python -m` runs its __main__
    else:
        module_main = module
    sys.argv = [importlib.util.find_spec(module_main).origin, *args]   # as `python -m` sets it
    os.chdir(cwd)
    code = 0
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main = importlib.import_module(module_main).main
            try:
                returned = main(list(args)) if module in ("barlab.shard", "barlab.analysis") else main()
                code = int(returned or 0)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
                if isinstance(exit_.code, str):
                    print(exit_.code, file=sys.stderr)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        gc.collect()    # frames of a caught exception may still hold files open (a process would have exited)
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        for sig, handler in saved_signals.items():
            signal.signal(sig, handler)
        torch.set_rng_state(saved_rng[0])
        np.random.set_state(saved_rng[1])
        random.setstate(saved_rng[2])
        torch.set_num_threads(saved_threads)
        for lg in [logging.getLogger()] + [lg for lg in logging.root.manager.loggerDict.values()
                                           if isinstance(lg, logging.Logger)]:
            handlers, level, propagate, disabled = saved_logs.get(lg, ([], logging.NOTSET, True, False))
            for handler in lg.handlers:
                if handler not in handlers:
                    handler.close()
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate, lg.disabled = propagate, disabled
    return subprocess.CompletedProcess([sys.executable, "-m", module, *args], code, out.getvalue(), err.getvalue())
