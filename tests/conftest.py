"""Test session setup."""

import os

# As in barlab/__init__.py, and before anything imports torch: OpenMP threads that sleep instead of
# spinning, so parallel test processes do not slow each other down tenfold.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("WANDB_MODE", "offline")
# The `random` feature network is refused outside tests (its numbers mean nothing).
os.environ.setdefault("BARLAB_ALLOW_RANDOM_FEATURES", "1")


import pytest  # noqa: E402


@pytest.fixture
def compose_train(tmp_path):
    """Compose ``configs/train.yaml`` in-process, as ``@hydra.main`` would hand it to a job.

    Returns ``compose(overrides) -> cfg`` with the run folder at ``tmp_path/run`` and data under
    ``tmp_path/data``; HydraConfig is set, so ``${hydra:...}`` interpolations resolve.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from barlab.config.paths import CONFIG_DIR
    from barlab.config.resolvers import register_resolvers

    register_resolvers()  # as every entry point does

    def _compose(overrides=()):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]  # as inside @hydra.main: the job config has no hydra node
            cfg.paths.output_dir = str(tmp_path / "run")
            cfg.paths.root_dir = str(tmp_path)
            cfg.paths.data_dir = str(tmp_path / "data")
        return cfg

    return _compose


def once_per_run(tmp_path_factory, name: str, make):
    """``make(root)`` run once for the whole test run, in a fresh folder ``root``, and its value.

    With pytest-xdist (``make test`` runs 2 workers) the first worker that asks builds it under a file
    lock in the folder the workers share, and the others wait and read its pickled value: a session
    fixture costs its runs once, not once per worker. The value must pickle (paths, namespaces,
    ``CompletedProcess``). If ``make`` fails, nothing is stored and the next asker tries again.
    """
    import pickle

    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent                       # <basetemp>/popen-gw0 -> the run's base, shared
    stored = base / f"{name}.pkl"
    with FileLock(str(base / f"{name}.lock")):
        if stored.is_file():
            return pickle.loads(stored.read_bytes())
        root = base / name
        if root.exists():                        # a failed attempt's leftovers
            import shutil

            shutil.rmtree(root)
        root.mkdir()
        value = make(root)
        stored.write_bytes(pickle.dumps(value))
        return value


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One whole ``python -m barlab.train experiment=smoke run_name=smoke`` pipeline (tokenizer, evaluation
    classifier, generator, samples, scores), run once per session and read by the tests of evaluation,
    logging, sampling and resume. ``.proc`` is its finished process, ``.root`` its BARLAB_ROOT (data under
    ``root/data``), ``.run`` its run folder. Tests that write go to their own folders next to it, or copy it."""
    from types import SimpleNamespace

    from helpers import SMOKE_RUN_ARGS, run_module

    def make(root):
        proc = run_module("barlab.train", *SMOKE_RUN_ARGS, cwd=root)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return SimpleNamespace(proc=proc, root=root, run=root / "outputs" / "smoke" / "runs" / "smoke")

    return once_per_run(tmp_path_factory, "smoke", make)


@pytest.fixture(scope="session")
def tokenizer_sweep(tmp_path_factory):
    """``(process, sweep folder)`` of one multirun of three smoke tokenizer jobs, ``tokenizer.bits=0,4,8``, the
    first refused, with the tokenizer cache off: read by test_train.py (results per job, a failing point) and
    test_tokenizer_cache.py (the cache off stores nothing). Its root's data is under ``<sweep>/../data``."""
    from helpers import run_module

    def make(root):
        sweep = root / "sweep"
        proc = run_module("barlab.train", "-m", "experiment=smoke", "stage=tokenizer", "tokenizer.bits=0,4,8",
                          "tokenizer.max_steps=6", "tokenizer.val_every=6", "metrics.rfid.enabled=false",
                          "cache.tokenizer=false", f"hydra.sweep.dir={sweep}", cwd=root)
        return proc, sweep

    return once_per_run(tmp_path_factory, "sweep", make)


@pytest.fixture(scope="session")
def ddp_runs(tmp_path_factory):
    """``trainer=ddp_cpu`` smoke pipelines on 2 ranks in one root: run ``a`` (``run_name=a``) trains its
    tokenizer (an empty tokenizer cache); then a sweep of two DDP jobs in one process (``-m head=mbm,bitwise``,
    ``.sweep``) finds that tokenizer in the cache and trains a generator per job. Read by test_ddp.py and
    test_tokenizer_cache.py. ``.procs``: ``{"a": ..., "sweep": ...}``; ``.runs``: the folder holding ``a``."""
    from types import SimpleNamespace

    from helpers import run_module

    def make(root):
        common = ("trainer=ddp_cpu", "experiment=smoke", "metrics.backend=random")
        procs = {"a": run_module("barlab.train", *common, "run_name=a", cwd=root, timeout=240)}
        assert procs["a"].returncode == 0, procs["a"].stderr[-3000:]
        procs["sweep"] = run_module("barlab.train", "-m", *common, "head=mbm,bitwise", "metrics.gfid.batch_size=8",
                                    f"hydra.sweep.dir={root / 'sweep'}", cwd=root, timeout=300)
        assert procs["sweep"].returncode == 0, procs["sweep"].stderr[-3000:]
        return SimpleNamespace(root=root, procs=procs, runs=root / "outputs" / "smoke" / "runs", sweep=root / "sweep")

    return once_per_run(tmp_path_factory, "ddp", make)


@pytest.fixture(scope="session")
def smoke_tokenizer(tmp_path_factory):
    """``<root>/run/tokenizer.pt`` of ``python -m barlab.train experiment=smoke stage=tokenizer tokenizer.bits=6
    metrics.rfid.enabled=false`` (data under ``<root>/data``): checked by test_train.py, and the tokenizer of
    the generator jobs of the Optuna search and of the SLURM tests. Trained once per session."""
    from helpers import run_module

    def make(root):
        proc = run_module("barlab.train", "experiment=smoke", "stage=tokenizer", "tokenizer.bits=6",
                          "metrics.rfid.enabled=false", f"hydra.run.dir={root / 'run'}", cwd=root, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return root / "run" / "tokenizer.pt"

    return once_per_run(tmp_path_factory, "tokenizer", make)


# ------------------------------------------------------------------------------------------------
# Tiers. A test that starts a process (a barlab entry point through helpers.run_module, a background
# run, `python -c`, a notebook kernel) costs a Python start-up of 5-6 s and is marked `process` here,
# automatically: its code, the helpers of its module it calls, or one of its fixtures names run_module,
# run_modules, start_module, subprocess or Popen (helpers.call_main, in-process, is none of them).
# `make test-quick` runs `-m "(not process and not slow) or quick"`: every in-process test but the
# few marked `slow`, plus the few process tests marked `quick` (one smoke pipeline, one refusal per
# entry point). A test that starts a Python process
# without being marked `process` fails, so the quick tier cannot grow a process start unnoticed. The
# count of started Python processes is printed at the end of every run.

import inspect  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

PROCESS_NAMES = {"run_module", "run_modules", "start_module", "subprocess", "Popen"}
_STARTS: dict[str, list[str]] = {}        # test id -> Python command lines it started
_CURRENT: list[str | None] = [None]


def _names(code: types.CodeType) -> set[str]:
    """The global and attribute names a code object and the functions nested in it use."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def starts_processes(func, seen: set | None = None) -> bool:
    """Whether ``func``, or a function of its own module that it calls, names a process starter."""
    seen = set() if seen is None else seen
    func = inspect.unwrap(func)
    code = getattr(func, "__code__", None)
    if code is None or code in seen:
        return False
    seen.add(code)
    names = _names(code)
    if names & PROCESS_NAMES:
        return True
    module_globals = getattr(func, "__globals__", {})
    return any(starts_processes(module_globals[name], seen) for name in names
               if inspect.isfunction(module_globals.get(name))
               and module_globals[name].__module__ == func.__module__)


# the two files with the longest tests (a study end to end; every injected bug), started right after SLURM's
LONGEST_FILES = ("test_sweeps.py", "test_injected_bugs.py")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    # The SLURM tests first, then the other files with a `slow` test, then the rest: `make test` runs two
    # pytest-xdist workers with `--dist loadfile` (a file's tests on one worker, in order), so
    # test_slurm.py, the longest file and mostly waiting on the cluster, starts at once; the long files
    # start next, and the many short ones fill the end, where they even out the two workers.
    rank: dict[str, int] = {}
    for item in items:
        here = (0 if item.get_closest_marker("slurm") else 1 if item.path.name in LONGEST_FILES
                else 2 if item.get_closest_marker("slow") else 3)
        rank[item.fspath] = min(rank.get(item.fspath, 3), here)
    items.sort(key=lambda item: rank[item.fspath])                        # stable: the order otherwise kept
    for item in items:
        if item.get_closest_marker("process") or not isinstance(item, pytest.Function):
            continue
        defs = [d for name in item.fixturenames for d in item._fixtureinfo.name2fixturedefs.get(name, ())]
        if any(starts_processes(func) for func in [item.function, *(d.func for d in defs)]):
            item.add_marker(pytest.mark.process)


def _is_python(argv) -> bool:
    first = argv if isinstance(argv, (str, bytes, os.PathLike)) else (list(argv) or [""])[0]
    name = os.path.basename(os.fsdecode(first)).split()[0] if first else ""
    return first == sys.executable or name.startswith("python")


def _audit(event: str, args) -> None:
    if event == "subprocess.Popen" and _CURRENT[0] is not None and _is_python(args[1]):
        argv = args[1] if not isinstance(args[1], (str, bytes)) else [args[1]]
        _STARTS.setdefault(_CURRENT[0], []).append(" ".join(os.fsdecode(a) for a in argv)[:200])


sys.addaudithook(_audit)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _CURRENT[0] = item.nodeid
    try:
        return (yield)
    finally:
        _CURRENT[0] = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    started = _STARTS.get(item.nodeid)
    if call.when == "teardown" and started:
        report.user_properties.append(("python_starts", len(started)))   # for the summary, also from xdist workers
    if call.when == "teardown" and started and not item.get_closest_marker("process") and report.passed:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} started {len(started)} Python process(es) but is not marked `process` "
                           f"(tests/conftest.py finds run_module(s)/start_module/subprocess/Popen in the test, its "
                           f"module's helpers or its fixtures; else add @pytest.mark.process): {started}")
    return report


_COUNTED: dict[str, int] = {}             # test id -> Python processes it started, from the reports


def pytest_runtest_logreport(report):
    if report.when == "teardown":
        for key, value in report.user_properties:
            if key == "python_starts":
                _COUNTED[report.nodeid] = value


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    total = sum(_COUNTED.values())
    terminalreporter.write_line(f"Python processes started by tests: {total}, by {len(_COUNTED)} tests "
                                "(their own children, e.g. DDP ranks or SLURM jobs, not counted)")
