"""``python -m barlab.train``: the one entry point for training, single runs and sweeps.

    python -m barlab.train                                # the main job on Fashion-MNIST
    python -m barlab.train -m tokenizer.bits=10,14,18     # a sweep: one run folder each
    python -m barlab.train experiment=smoke               # tiny, for checks

Every run writes ``results.json`` into its run folder, also when it fails (``status: failed``
with the reason), so a sweep's table never silently loses a point. A bad config exits non-zero
with a one-line message that names the knob. A sweep with a failed job names it once the sweep is
over and exits 1 (:mod:`barlab.analysis.failed_jobs`).
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from barlab.cli import precheck_command_line, report_error
from barlab.config.paths import CONFIG_DIR
from barlab.config.resolvers import register_resolvers
from barlab.errors import BarlabError
from barlab.pipeline.results import hydra_context
from barlab.pipeline.run import run
from barlab.utils.log_routing import route_lightning_logs

log = logging.getLogger("barlab")

# On import, not in main(): a SLURM job process unpickles hydra_main without calling main(), and
# resolves the launcher's and the paths' interpolations before it runs.
register_resolvers()


def objective_value(cfg: DictConfig, body: dict) -> float:
    """The number handed back to a sweeper (Optuna): results.json's ``objective`` key, NaN if absent."""
    value = body.get(str(cfg.get("objective") or "psnr"))
    return float(value) if isinstance(value, (int, float)) else float("nan")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    route_lightning_logs()  # Hydra has configured logging by now
    multirun = hydra_context()["mode"] == "multirun"
    try:
        body = run(cfg)
    except BarlabError as err:
        report_error(err)
        if multirun:
            return float("nan")  # keep the sweep going; the failed-jobs report exits 1 at its end
        sys.exit(2)
    except Exception:  # a crash in one sweep job (its results.json says so) must not end the sweep
        if not multirun:
            raise
        log.exception("job crashed")
        return float("nan")
    return objective_value(cfg, body)


def main() -> None:
    precheck_command_line()
    hydra_main()


if __name__ == "__main__":
    main()
