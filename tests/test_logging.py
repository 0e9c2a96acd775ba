"""What a run shows people: each log line once, no advertising, the config and the image grids in
the loggers, progress bars only on a terminal."""

from __future__ import annotations

import io
import logging
import re
import sys
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from barlab.errors import ConfigError
from barlab.lightning.callbacks.image_log import log_image
from barlab.lightning.callbacks.progress_log import ProgressLog, format_duration
from barlab.utils.log_routing import LIGHTNING_LOGGERS, route_lightning_logs
from barlab.utils.progress import bars_shown, progress

TIMESTAMP = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]")


@pytest.mark.quick
def test_smoke_run_prints_every_line_once_without_tips(smoke_run):
    proc, run_dir = smoke_run.proc, smoke_run.run     # the session's smoke run (conftest.py)
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


@pytest.mark.quick
def test_each_stage_sends_the_config_to_its_loggers(smoke_run):
    run_dir = smoke_run.run
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


class TinyModule(L.LightningModule):
    """One linear layer on random data; logs ``loss`` to the progress bar, as barlab's modules do."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch).pow(2).mean()
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit_tiny(tmp_path, *, bar: bool, every: int, steps: int = 10) -> None:
    trainer = L.Trainer(max_steps=steps, callbacks=[ProgressLog(every)], enable_progress_bar=bar, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, accelerator="cpu",
                        default_root_dir=tmp_path)
    trainer.fit(TinyModule(), train_dataloaders=torch.utils.data.DataLoader(torch.randn(64, 4), batch_size=4))


def test_progress_log_writes_a_line_every_n_steps_when_no_bar_is_drawn(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="barlab"):
        _fit_tiny(tmp_path, bar=False, every=4)
    lines = [r.getMessage() for r in caplog.records if r.name == "barlab" and " step " in r.getMessage()]
    assert [line.split(":")[0] for line in lines] == ["tiny step 4/10 (40%)", "tiny step 8/10 (80%)"]
    assert all(re.search(r": loss \d\.\d+ \| [\d.]+ steps/s, \d+ s left$", line) for line in lines), lines


def test_progress_log_stays_quiet_beside_a_progress_bar(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="barlab"):
        _fit_tiny(tmp_path, bar=True, every=2)
    assert not [r for r in caplog.records if r.name == "barlab" and " step " in r.getMessage()]


def test_progress_log_line_reports_rate_and_time_left():
    callback = ProgressLog(100)
    line = callback.line("generator", 200, 1200, {"loss": 3.41, "bit_acc": 0.70234, "v_num": 3}, elapsed=100.0)
    assert line == "generator step 200/1200 (17%): loss 3.41, bit_acc 0.7023 | 2 steps/s, 8 min 20 s left"
    assert callback.line("tokenizer", 5, -1, {}, elapsed=2.0) == "tokenizer step 5 | 2.5 steps/s"
    assert [format_duration(s) for s in (41, 369, 3725)] == ["41 s", "6 min 9 s", "1 h 2 min"]
    with pytest.raises(ConfigError, match="callbacks.progress_log.every_n_steps"):
        ProgressLog(0)


def test_lightning_bar_follows_the_terminal_rule(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert bars_shown(True) is False
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert bars_shown(True) is True and bars_shown(False) is False
