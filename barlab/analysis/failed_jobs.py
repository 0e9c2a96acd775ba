"""The end of a sweep: name each failed job in one line, and exit 1 if there is one.

A sweep job that fails returns NaN, so that the other jobs and sweepers such as Optuna carry on; the
sweep itself would then exit 0. :class:`FailedJobsCallback` (``configs/hydra/default.yaml``) reads
every job's results.json once the sweep is over, whichever launcher ran it (local, joblib, SLURM).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from barlab.analysis.collect import job_dirs, job_row


def failed_jobs_report(sweep: Path) -> str | None:
    """One line naming each job of ``sweep`` that is not ok, with its overrides, outcome and reason;
    None when every job is ok."""
    rows = [job_row(job) for job in job_dirs(sweep)] if sweep.is_dir() else []
    failed = [row for row in rows if row["outcome"] != "ok"]
    if not failed:
        return None
    names = "; ".join(
        f"#{row['job']} ({' '.join(f'{k}={row.get(k)}' for k in row['_overrides'])}): {row['outcome']}: "
        + " ".join(str(row["reason"]).split())
        for row in failed)
    return (f"{len(failed)} of {len(rows)} sweep job(s) failed: {names} "
            f"(see python -m barlab.analysis {sweep})")


class FailedJobsCallback(Callback):
    """Hydra callback: once a multirun is over, print ``error: <report>`` and exit 1 if a job failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        report = failed_jobs_report(Path(str(config.hydra.sweep.dir)))
        if report is not None:
            print(f"error: {report}", file=sys.stderr, flush=True)
            sys.exit(1)
