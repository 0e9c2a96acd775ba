"""Console logging of the Hydra entry points: every line once, in Hydra's format, without ads.

Lightning puts console handlers of its own on its loggers: always on ``lightning`` (which
propagates to the root logger), and on ``lightning.pytorch`` / ``lightning.fabric`` (which then stop
propagating) when it is imported before logging is configured, as it is under ``@hydra.main``. Its
lines then bypass Hydra's handlers (no timestamp, not in ``train.log``); imported after, they print
twice (Lightning's handler and Hydra's). :func:`route_lightning_logs` hands them to Hydra's
handlers only, and drops Lightning's advertising tips.
"""

from __future__ import annotations

import logging

# ``lightning`` itself always has a console handler ("INFO: ..." on stderr) and propagates: whenever
# ``lightning.pytorch`` propagates too (imported after logging was set up), every line prints twice
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")


class DropTips(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing litlogger / litmodels" lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage().lstrip("💡 \t")
        return not message.startswith("Tip:")


TIP_FILTER = DropTips()


def add_tip_filter(handler: logging.Handler) -> None:
    """Put the tip filter on ``handler`` (once)."""
    if TIP_FILTER not in handler.filters:
        handler.addFilter(TIP_FILTER)


def route_lightning_logs() -> None:
    """Send Lightning's log records through the root logger's handlers (Hydra's console and
    ``train.log``), each once, tips dropped. Without root handlers (``hydra/job_logging=disabled``)
    Lightning keeps its own handler, with the tips dropped there."""
    root = logging.getLogger()
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if root.handlers:
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.propagate = True
        for handler in logger.handlers:
            add_tip_filter(handler)
    for handler in root.handlers:
        add_tip_filter(handler)
