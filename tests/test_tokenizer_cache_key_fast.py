"""The tokenizer cache key on a hand-built config (no Hydra compose, so it runs in milliseconds): every setting
that changes the trained tokenizer or its numbers changes the key; the generator's settings, the report-only
callbacks, loader processes, machine paths and where the run writes do not."""

from __future__ import annotations

import copy

import pytest
from omegaconf import OmegaConf

from barlab.runtime.tokenizer_cache import CACHE_FORMAT, KEY_NODES, cache_key

BASE = {
    "paths": {"output_dir": "/runs/a", "data_dir": "/data"},
    "run_name": "a",
    "seed": 0,
    "stage": "all",
    "tokenizer": {"bits": 16, "max_steps": 800, "encoder": {"width": 32}, "optim": {"lr": 1e-3}},
    "data": {"image_size": 32, "batch_size": 64, "num_workers": 4, "shards_dir": "/data/shards/a"},
    "trainer": {"accelerator": "cpu", "precision": "32-true"},
    "callbacks": {"ema": {"decay": 0.999}, "progress_log": {"every_n_steps": 50},
                  "model_checkpoint": {"dirpath": "${paths.output_dir}/checkpoints", "every_n_train_steps": 100}},
    "final_eval": {"max_batches": 2},
    "metrics": {"backend": "classifier", "rfid": {"max_samples": 10000}, "gfid": {"per_class": 50}},
    "generator": {"max_steps": 1200, "backbone": {"width": 192}},
    "head": {"_target_": "barlab.generator.MBMHead", "width": 192},
    "sampling": {"guidance": 3.0},
    "cache": {"dir": "/cache"},
}


def key_with(*edits) -> str:
    """The key after ``edits``: (dotted path, value) pairs; value ``DELETE`` removes the entry."""
    cfg = copy.deepcopy(BASE)
    for path, value in edits:
        *parents, leaf = path.split(".")
        node = cfg
        for part in parents:
            node = node[part]
        if value == "DELETE":
            del node[leaf]
        else:
            node[leaf] = value
    return cache_key(OmegaConf.create(cfg))[0]


CHANGES_THE_TOKENIZER = [
    ("tokenizer.bits", 8), ("tokenizer.max_steps", 801), ("tokenizer.encoder.width", 16), ("tokenizer.optim.lr", 2e-3),
    ("data.image_size", 28), ("data.batch_size", 32), ("seed", 1), ("trainer.precision", "bf16-mixed"),
    ("callbacks.ema.decay", 0.99), ("callbacks.model_checkpoint.every_n_train_steps", 50),
    ("final_eval.max_batches", 3), ("metrics.rfid.max_samples", 500), ("metrics.backend", "inception"),
]
LEAVES_IT = [
    ("generator.max_steps", 7), ("generator.backbone.width", 64), ("head.width", 32), ("sampling.guidance", 1.0),
    ("metrics.gfid.per_class", 9), ("callbacks.progress_log.every_n_steps", 7), ("callbacks.progress_log", "DELETE"),
    ("run_name", "b"), ("data.num_workers", 0), ("data.shards_dir", "/elsewhere"), ("cache.dir", "/other"),
    ("stage", "tokenizer"), ("paths.data_dir", "/mnt/data"),
]


def test_spec_holds_the_key_nodes_and_the_format():
    key, spec = cache_key(OmegaConf.create(BASE))
    assert len(key) == 16 and int(key, 16) >= 0
    assert set(spec) == set(KEY_NODES) | {"format"} and spec["format"] == CACHE_FORMAT
    assert "gfid" not in spec["metrics"] and "rfid" in spec["metrics"]
    assert "progress_log" not in spec["callbacks"] and "ema" in spec["callbacks"]
    assert "num_workers" not in spec["data"] and "shards_dir" not in spec["data"]
    assert spec["callbacks"]["model_checkpoint"] == {"every_n_train_steps": 100}     # the run's own path left out
    assert key_with() == key                                                       # stable


@pytest.mark.parametrize("edit", CHANGES_THE_TOKENIZER, ids=[e[0] for e in CHANGES_THE_TOKENIZER])
def test_a_tokenizer_setting_changes_the_key(edit):
    assert key_with(edit) != key_with()


@pytest.mark.parametrize("edit", LEAVES_IT, ids=[e[0] for e in LEAVES_IT])
def test_a_setting_outside_the_tokenizer_recipe_keeps_the_key(edit):
    assert key_with(edit) == key_with()


def test_another_run_folder_keeps_the_key_but_a_path_outside_it_does_not():
    # the checkpoint folder follows paths.output_dir: it is where this run writes, not a setting
    assert key_with(("paths.output_dir", "/runs/b")) == key_with()
    assert key_with(("callbacks.model_checkpoint.dirpath", "/shared/ckpts")) != key_with()
    keys = {key_with(edit) for edit in CHANGES_THE_TOKENIZER}
    assert len(keys) == len(CHANGES_THE_TOKENIZER)                                 # all different from each other
