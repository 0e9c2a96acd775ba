"""``python -m barlab.train``: the one entry point for training, single runs and sweeps.

    python -m barlab.train                                # default tokenizer on Fashion-MNIST
    python -m barlab.train -m tokenizer.bits=10,14,18     # a sweep: one run folder each
    python -m barlab.train experiment=smoke               # tiny, for checks

Every run writes ``results.json`` into its run folder, also when it fails (``status: failed``
with the reason), so a sweep's table never silently loses a point. A bad config exits non-zero
with a one-line message that names the knob.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import hydra
from omegaconf import DictConfig

import barlab.slurm  # noqa: F401  (the launcher config's resolvers)
from barlab.cli import CONFIG_DIR, precheck_command_line, report_error
from barlab.config_checks import check_config
from barlab.errors import BarlabError
from barlab.generator.image_generator import load_generator
from barlab.tokenizer.checkpoint import load_tokenizer
from barlab.training.build import finish_wandb
from barlab.training.classifier_stage import run_classifier_stage
from barlab.training.distributed import JobProcesses
from barlab.training.generator_stage import run_generator_stage
from barlab.training.results import hydra_context, write_results
from barlab.training.run_state import RUN_FILE, RunState
from barlab.training.tokenizer_cache import TokenizerCache, run_cached_tokenizer_stage
from barlab.training.tokenizer_stage import run_tokenizer_stage
from barlab.utils.log_routing import route_lightning_logs

log = logging.getLogger("barlab")

_FAILED_JOBS: list[str] = []


def tokenizer_stage(cfg: DictConfig, state: RunState) -> dict[str, Any]:
    """The tokenizer stage, through the tokenizer cache unless ``cache.tokenizer=false``."""
    if cfg.cache.tokenizer:
        return run_cached_tokenizer_stage(cfg, state, run_tokenizer_stage)
    return run_tokenizer_stage(cfg, state)


def run_all(cfg: DictConfig, state: RunState) -> dict[str, Any]:
    """Tokenizer → pretokenization → generator → samples, in one run folder."""
    tokenizer = finished_or_run("tokenizer", tokenizer_stage, cfg, state)
    cache = tokenizer.get("cache")
    shared_tokens = (TokenizerCache.tokens_dir_of(cache["entry"], cfg.generator.data.shard_size)
                     if cache and cfg.cache.tokenizer else None)
    generator = finished_or_run("generator", run_generator_stage, cfg, state,
                                trained_tokenizer=Path(tokenizer["artifacts"]["tokenizer"]),
                                shared_tokens=shared_tokens)
    flat = {k: v for k, v in tokenizer.items()
            if k not in ("artifacts", "metrics", "bit_stats", "train_steps", "rfid_eval", "kid", "precision", "recall",
                         "resumed_from_step", "reused", "cache")}
    return {
        **flat,
        "stage": "all",
        "head": generator["head"],
        "generator_train_loss": generator["train_loss"],
        "generator_train_bit_accuracy": generator["train_bit_accuracy"],
        "generator_val_loss": generator["val_loss"],
        "generator_val_bit_accuracy": generator["val_bit_accuracy"],
        "generator_train_time_s": generator.get("train_time_s"),
        "sampling_time_s": generator.get("sampling_time_s"),
        **{k: generator[k] for k in ("gfid", "class_accuracy", "inception_score", "precision", "recall", "kid")
           if k in generator},
        "tokenizer_cached": bool(cache and cache.get("hit")),
        "tokenizer": tokenizer,
        "generator": generator,
    }


def finished_or_run(stage: str, body: Callable[..., dict[str, Any]], cfg: DictConfig, state: RunState,
                    **kwargs) -> dict[str, Any]:
    """Run ``stage`` unless an earlier attempt of this run finished it and its artifact still loads.

    A finished stage's result is reused as it was (``reused: true``); otherwise the stage runs,
    continuing from its last checkpoint if it has one, and is recorded as finished.
    """
    done = state.finished_stage(stage)
    if done is not None and artifact_loads(done):
        log.info("%s stage: finished in an earlier attempt, reusing it", stage)
        return {**done, "reused": True}
    try:
        result = body(cfg, state, **kwargs)
    finally:
        finish_wandb()  # one wandb run per stage: the next stage (or sweep job) starts its own
    state.mark_finished(stage, result)
    return result


def artifact_loads(result: dict[str, Any]) -> bool:
    """The file a finished stage exported (generator.pt, else tokenizer.pt) is there and readable."""
    artifacts = result.get("artifacts") or {}
    try:
        if artifacts.get("generator"):
            load_generator(artifacts["generator"])
        elif artifacts.get("tokenizer"):
            load_tokenizer(artifacts["tokenizer"])
        else:
            return False
    except BarlabError as err:
        log.warning("a finished stage's artifact is unusable (%s); running the stage again", err)
        return False
    return True


STAGES: dict[str, Callable[[DictConfig, RunState], dict[str, Any]]] = {
    "tokenizer": lambda cfg, state: finished_or_run("tokenizer", tokenizer_stage, cfg, state),
    "generator": lambda cfg, state: finished_or_run("generator", run_generator_stage, cfg, state),
    "all": run_all,
    "classifier": lambda cfg, state: run_classifier_stage(cfg),
}


def quiet_known_warnings() -> None:
    """Silence warnings that are expected in barlab's setup and say nothing to act on."""
    for pattern in (
        r".*no pre-optimization state was saved.*",       # manual optimisation + step checkpoints
        r".*`IterableDataset` has `__len__` defined.*",   # WebDataset epochs are sized on purpose
        r".*isinstance\(treespec, LeafSpec\).*",          # Lightning vs torch 2.13 deprecation
        r".*module\(s\) in eval mode at the start of training.*",  # the frozen tokenizer
    ):
        warnings.filterwarnings("ignore", message=pattern)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the configured stage and write results.json. Raises BarlabError on user errors."""
    quiet_known_warnings()
    start = time.time()
    run_dir = Path(cfg.paths.output_dir)
    state: RunState | None = None
    try:
        check_config(cfg)
        state = RunState.open(cfg)
        with JobProcesses():
            body = STAGES[cfg.stage](cfg, state)
    except BarlabError as err:
        if state is not None or not (run_dir / RUN_FILE).is_file():  # never overwrite an earlier run's results
            write_results(run_dir, {"status": "failed", "error": str(err), "stage": cfg.get("stage"),
                                    "wall_time_s": round(time.time() - start, 1)})
        raise
    except Exception as err:  # a crash (out of memory, a bug): still leave a row for the sweep table
        write_results(run_dir, {"status": "crashed", "error": f"{type(err).__name__}: {err}",
                                "stage": cfg.get("stage"), "wall_time_s": round(time.time() - start, 1)})
        raise
    except BaseException as err:  # Ctrl-C, SIGTERM (pre-emption): say so, then stop
        write_results(run_dir, {"status": "interrupted", "error": type(err).__name__,
                                "stage": cfg.get("stage"), "wall_time_s": round(time.time() - start, 1)})
        raise
    body["restarts"] = state.restarts
    body["wall_time_s"] = round(time.time() - start, 1)
    path = write_results(run_dir, body)
    log.info("results: %s", path)
    return body


def objective_value(cfg: DictConfig, body: dict[str, Any]) -> float:
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
            _FAILED_JOBS.append(str(err))  # keep the sweep going; exit non-zero at the end
            return float("nan")
        sys.exit(2)
    except Exception as err:  # a crash in one sweep job (its results.json says so) must not end the sweep
        if not multirun:
            raise
        log.exception("job crashed")
        _FAILED_JOBS.append(f"{type(err).__name__}: {err}")
        return float("nan")
    return objective_value(cfg, body)


def main() -> None:
    precheck_command_line()
    hydra_main()
    if _FAILED_JOBS:
        print(f"error: {len(_FAILED_JOBS)} sweep job(s) failed; see status=failed/crashed in their results.json",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
