"""What a run shows people: each log line once, no advertising, the config and the image grids in
the loggers, progress bars only on a terminal."""

from __future__ import annotations

import io
import logging
import re
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from barlab.training.callbacks.image_log import log_image
from barlab.utils.log_routing import LIGHTNING_LOGGERS, route_lightning_logs
from barlab.utils.progress import progress
from tests.helpers import run_module

TIMESTAMP = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One ``experiment=smoke`` CLI run: its process result and run folder."""
    cwd = tmp_path_factory.mktemp("logging")
    run_dir = cwd / "run"
    proc = run_module("barlab.train", "experiment=smoke", f"hydra.run.dir={run_dir}", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, run_dir


@pytest.mark.slow
def test_smoke_run_prints_every_line_once_without_tips(smoke_run):
    proc, run_dir = smoke_run
    for stream in (proc.stdout, proc.stderr):
        lines = [line for line in stream.splitlines() if line.strip()]
        repeats = [a for a, b in zip(lines, lines[1:]) if a == b]
        assert not repeats, repeats
        assert not [line for line in lines if "Tip:" in line]
    # Lightning's lines go through Hydra's handlers: timestamped on stdout, and into train.log, once
    fit_lines = [line for line in proc.stdout.splitlines() if "`Trainer.fit` stopped" in line]
    assert len(fit_lines) == 3 and all(TIMESTAMP.match(line) for line in fit_lines)   # tokenizer, classifier, generator
    assert "`Trainer.fit` stopped" not in proc.stderr
    assert (run_dir / "train.log").read_text().count("`Trainer.fit` stopped") == 3


@pytest.mark.slow
def test_each_stage_sends_the_config_to_its_loggers(smoke_run):
    _, run_dir = smoke_run
    for stage in ("tokenizer", "generator"):
        hparams = yaml.safe_load((run_dir / "csv" / stage / "hparams.yaml").read_text())
        assert hparams["generator"]["optim"]["lr"] == 1e-3 and hparams["tokenizer"]["bits"] == 16, stage


class _ImageLogger:
    """Stands in for WandbLogger: records ``log_image`` calls."""

    def __init__(self):
        self.calls = []

    def log_image(self, key, images, step=None):
        self.calls.append((key, images, step))


def test_grids_go_to_the_loggers_that_show_images(monkeypatch):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    added = []
    tensorboard = TensorBoardLogger.__new__(TensorBoardLogger)           # no tensorboard install needed
    monkeypatch.setattr(TensorBoardLogger, "experiment",
                        property(lambda self: SimpleNamespace(add_image=lambda *a, **k: added.append((a, k)))))
    wandb_like, csv = _ImageLogger(), CSVLogger.__new__(CSVLogger)
    image = np.zeros((6, 9, 3), dtype=np.uint8)
    log_image(SimpleNamespace(global_step=7, loggers=[csv, wandb_like, tensorboard]), "samples/grid", image)
    assert wandb_like.calls == [("samples/grid", [image], 7)]
    assert len(added) == 1 and added[0][0] == ("samples/grid", image)
    assert added[0][1] == {"global_step": 7, "dataformats": "HWC"}


def test_lightning_lines_reach_the_root_handlers_once_and_tips_are_dropped():
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate)
             for name in LIGHTNING_LOGGERS}
    root, out = logging.getLogger(), io.StringIO()
    handler = logging.StreamHandler(out)
    root.addHandler(handler)
    try:
        route_lightning_logs()
        logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
        logger.info("GPU available: False, used: False")
        logger.info("💡 Tip: For seamless cloud uploads and versioning, try installing litmodels")
        assert out.getvalue().splitlines() == ["GPU available: False, used: False"]
    finally:
        root.removeHandler(handler)
        for name, (handlers, propagate) in saved.items():
            logging.getLogger(name).handlers[:] = handlers
            logging.getLogger(name).propagate = propagate


def test_progress_bars_stay_off_when_the_output_is_not_a_terminal(capsys):
    assert list(progress(range(3), "counting")) == [0, 1, 2]        # pytest's stderr is no terminal
    assert list(progress(range(3), "counting", enabled=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""
