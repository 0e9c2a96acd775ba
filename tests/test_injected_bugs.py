"""The suite can fail: every bug listed in scripts/inject_bugs.py, injected alone into a copy of the tree, fails
the tests it names. The locator that places a bug finds it by symbol (an ``ast`` line range), not by line."""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "inject_bugs.py"


@functools.cache
def load_script():
    spec = importlib.util.spec_from_file_location("inject_bugs_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module             # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


SOURCE = '''"""A module."""
LIMIT = 3


def helper(x):
    return x + 1


class Thing:
    """return x + 1 in a docstring, outside every method."""

    @property
    def size(self):
        return self.n + 1

    def grow(self, x):
        def inner(y):
            return y + 1

        return inner(x) * 2
'''


def test_locator_replaces_inside_the_named_symbol_only(tmp_path):
    ib = load_script()
    path = tmp_path / "module.py"
    path.write_text(SOURCE)
    text = path.read_text()
    # "+ 1" occurs in helper, Thing.size, Thing.grow.inner and the class docstring: each symbol gets its own
    assert ib.inject(text, "helper", "x + 1", "x - 1").count("return x - 1") == 1
    out = ib.inject(text, "Thing.size", "+ 1", "+ 2")
    assert "return self.n + 2" in out and "return x + 1\n" in out and "return y + 1" in out
    out = ib.inject(text, "Thing.grow.inner", "y + 1", "y + 5")
    assert "return y + 5" in out and out.replace("y + 5", "y + 1") == text
    assert "LIMIT = 4" in ib.inject(text, "LIMIT", "3", "4")
    start, end = ib.symbol_span(text, "Thing.size")
    assert text[start:end].lstrip().startswith("@property") and text[start:end].rstrip().endswith("self.n + 1")


def test_locator_survives_reformatting_elsewhere_in_the_file():
    ib = load_script()
    moved = "import os\n\n\n# a comment\n" + SOURCE.replace("def helper(x):\n", "def helper(\n    x,\n):\n")
    moved += "\n\ndef later():\n    return 1 + 1\n"
    out = ib.inject(moved, "Thing.grow", "* 2", "* 3")
    assert "return inner(x) * 3" in out and out.count("* 3") == 1


def test_locator_refuses_a_pattern_found_zero_or_two_times_and_an_unknown_symbol():
    ib = load_script()
    with pytest.raises(ib.PatternError, match="occurs 0 times in helper"):
        ib.inject(SOURCE, "helper", "x + 2", "x")
    with pytest.raises(ib.PatternError, match="occurs 2 times in Thing.grow"):
        ib.inject(SOURCE, "Thing.grow", "return ", "yield ")       # inner's return is inside grow too
    with pytest.raises(ib.PatternError, match="occurs 3 times in Thing"):
        ib.inject(SOURCE, "Thing", "+ 1", "+ 2")                   # the docstring, size and inner
    with pytest.raises(ib.PatternError, match="0 definitions of 'missing'"):
        ib.inject(SOURCE, "Thing.missing", "x", "y")
    with pytest.raises(ib.PatternError, match="2 definitions of 'f'"):
        ib.inject("def f():\n    return 1\n\n\ndef f():\n    return 1\n", "f", "1", "2")
    with pytest.raises(ib.PatternError, match="breaks the syntax"):
        ib.inject(SOURCE, "helper", "x + 1", "x +")


def test_every_bug_is_placed_once_in_the_working_tree_and_names_existing_tests():
    ib = load_script()
    assert len(ib.BUGS) >= 30 and len({b.name for b in ib.BUGS}) == len(ib.BUGS)
    assert ib.check_patterns(ib.BUGS) == {}
    for item in ib.BUGS:
        assert item.tests and item.old != item.new
        for test in item.tests:
            assert (ROOT / test.split("::")[0]).is_file(), (item.name, test)
    # every area the brief names has at least one bug
    places = {(b.path, b.symbol.split(".")[0]) for b in ib.BUGS}
    g = "barlab/generator/"
    for path, symbol in [(g + "rope.py", "Rope2D"), (g + "attention.py", "Attention"), (g + "kv_cache.py", "KVCache"),
                         (g + "token_shuffle.py", "unshuffle"), (g + "heads/mbm.py", "MBMHead"),
                         (g + "order.py", "random_ratio"), ("barlab/lightning/callbacks/ema.py", "EMA"),
                         ("barlab/utils/lr_schedules.py", "warmup_cosine"),
                         ("barlab/runtime/tokenizer_cache.py", "cache_key"),
                         ("barlab/data/loader_stages.py", "rank_shards"),
                         ("barlab/data/loader_stages.py", "worker_seed"),
                         ("barlab/runtime/distributed.py", "apply_global_batch"),
                         ("barlab/metrics/image_metrics.py", "ImageMetrics"),
                         ("barlab/metrics/precision_recall.py", "knn_radii")]:
        assert (path, symbol) in places, (path, symbol)
    mbm = {b.symbol for b in ib.BUGS if b.path.endswith("mbm.py")}
    assert "MBMHead.mask_tokens" in mbm
    metrics = {b.symbol for b in ib.BUGS if b.path.endswith("image_metrics.py")}
    assert {"ImageMetrics.set_reference", "ImageMetrics.compute"} <= metrics


def test_light_baseline_takes_one_single_test_per_file():
    ib = load_script()
    tests = ("tests/a.py", "tests/a.py::test_x", "tests/b.py::test_y", "tests/b.py::test_z", "tests/c.py")
    assert ib.light_baseline(tests) == ("tests/a.py::test_x", "tests/b.py::test_y", "tests/c.py")


def tree_snapshot() -> dict[Path, bytes]:
    """The files the script could write: every file under barlab/ and the files the bugs target."""
    ib = load_script()
    files = set((ROOT / "barlab").rglob("*.py")) | {ROOT / b.path for b in ib.BUGS}
    return {p: p.read_bytes() for p in sorted(files)}


@pytest.mark.slow
def test_every_injected_bug_is_caught_and_the_tree_is_unchanged():
    """With the light baseline (one named test per test file on a clean copy: the copy works for every file);
    this suite itself runs every named test on the same tree."""
    before = tree_snapshot()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--light-baseline"], cwd=ROOT, capture_output=True, text=True,
                          timeout=2400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    bugs, last = lines[:-1], lines[-1]
    assert len(bugs) >= 30 and last == f"{len(bugs)} of {len(bugs)} injected bugs caught"
    assert all(line.startswith("caught ") for line in bugs), [line for line in bugs if not line.startswith("caught")]
    assert "baseline ok" in proc.stderr
    assert tree_snapshot() == before
    assert not list(ROOT.glob("pytest.log")) and not list((ROOT / "tests").glob("pytest.log"))
