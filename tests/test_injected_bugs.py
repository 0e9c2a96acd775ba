"""The suite can fail: every bug listed in scripts/inject_bugs.py, injected alone, fails its test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_injected_bug_is_caught_and_the_tree_is_restored():
    before = {p: p.read_bytes() for p in (ROOT / "barlab").rglob("*.py")}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "inject_bugs.py")], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[-1] == f"{len(lines) - 1} of {len(lines) - 1} injected bugs caught" and len(lines) - 1 >= 15
    assert all(line.startswith("caught") for line in lines[:-1]), lines
    assert {p: p.read_bytes() for p in (ROOT / "barlab").rglob("*.py")} == before
