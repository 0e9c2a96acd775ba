"""One run of ``python -m barlab.train``: the configured stage(s) in one run folder, and its results.json.

- :data:`STAGES`: what ``stage=`` can name; ``all`` is tokenizer → pretokenization → generator → samples.
- A stage that an earlier attempt of this run finished, and whose artifact still loads, is reused.
- :func:`run` writes results.json whatever happens, so that a sweep's table never silently loses a point.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from barlab.config.instantiate import knob_names
from barlab.errors import BarlabError, ConfigError
from barlab.generator.image_generator import load_generator
from barlab.metrics.classifier_training import run_classifier_stage
from barlab.pipeline.generator_stage import pretokenize_limits, run_generator_stage
from barlab.pipeline.preflight import check_config
from barlab.pipeline.results import all_stages_summary, failure_body, write_results
from barlab.pipeline.tokenizer_stage import run_tokenizer_stage
from barlab.pipeline.trainer import finish_wandb
from barlab.runtime.distributed import JobProcesses
from barlab.runtime.run_state import RUN_FILE, RunState
from barlab.runtime.tokenizer_cache import TokenizerCache, run_cached_tokenizer_stage
from barlab.tokenizer.checkpoint import load_tokenizer

log = logging.getLogger("barlab")


def tokenizer_stage(cfg: DictConfig, state: RunState) -> dict[str, Any]:
    """The tokenizer stage, through the tokenizer cache unless ``cache.tokenizer=false``."""
    if cfg.cache.tokenizer:
        return run_cached_tokenizer_stage(cfg, state, run_tokenizer_stage)
    return run_tokenizer_stage(cfg, state)


def run_all(cfg: DictConfig, state: RunState) -> dict[str, Any]:
    """Tokenizer → pretokenization → generator → samples, in one run folder."""
    tokenizer = finished_or_run("tokenizer", tokenizer_stage, cfg, state)
    cache = tokenizer.get("cache")
    limits = pretokenize_limits(cfg)
    shared_tokens = (TokenizerCache.tokens_dir_of(cache["entry"], cfg.generator.data.shard_size,
                                                  limits.folder_suffix())
                     if cache and cfg.cache.tokenizer else None)
    generator = finished_or_run("generator", run_generator_stage, cfg, state,
                                trained_tokenizer=Path(tokenizer["artifacts"]["tokenizer"]),
                                shared_tokens=shared_tokens)
    return all_stages_summary(tokenizer, generator)


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
"""``stage=`` -> what runs: the one list of stage names."""


def check_stage(stage: str) -> None:
    """``stage=`` names one of :data:`STAGES`."""
    if stage not in STAGES:
        raise ConfigError("stage", f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}",
                          fix=f"stage={next(iter(STAGES))}")


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
    """Run the configured stage and write results.json. Raises BarlabError on user errors.

    Whatever stops the run, results.json says so (:func:`barlab.pipeline.results.failure_body`), except
    that a refused command never overwrites the results of an earlier run in the same folder.
    """
    quiet_known_warnings()
    start = time.time()
    run_dir = Path(cfg.paths.output_dir)
    state: RunState | None = None
    try:
        check_stage(cfg.stage)
        check_config(cfg)
        state = RunState.open(cfg)
        with JobProcesses(), knob_names(shards_dir="data.shards_dir"):  # the image data, read lazily by the stages
            body = STAGES[cfg.stage](cfg, state)
    except BaseException as err:
        refused_before_start = isinstance(err, BarlabError) and state is None and (run_dir / RUN_FILE).is_file()
        if not refused_before_start:
            write_results(run_dir, failure_body(err, cfg.get("stage"), time.time() - start))
        raise
    body["restarts"] = state.restarts
    body["wall_time_s"] = round(time.time() - start, 1)
    path = write_results(run_dir, body)
    log.info("results: %s", path)
    return body
