"""The RunIf-style helper skips a test exactly when the machine lacks what it needs."""

from __future__ import annotations

import tests.helpers as helpers


def test_run_if_skips_exactly_when_gpus_are_missing(monkeypatch):
    monkeypatch.setattr(helpers, "gpu_count", lambda: 0)
    skip = helpers.run_if(min_gpus=1)
    assert skip.name == "skipif" and skip.args == (True,) and "needs 1 GPU" in skip.kwargs["reason"]
    monkeypatch.setattr(helpers, "gpu_count", lambda: 2)
    assert helpers.run_if(min_gpus=2).args == (False,)
    assert helpers.run_if().args == (False,)
