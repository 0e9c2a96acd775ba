"""Test session setup."""

import os

# As in barlab/__init__.py, and before anything imports torch: OpenMP threads that sleep instead of
# spinning, so parallel test processes do not slow each other down tenfold.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("WANDB_MODE", "offline")
# The `random` feature network is refused outside tests (its numbers mean nothing).
os.environ.setdefault("BARLAB_ALLOW_RANDOM_FEATURES", "1")


import pytest  # noqa: E402


@pytest.fixture
def compose_train(tmp_path):
    """Compose ``configs/train.yaml`` in-process, as ``@hydra.main`` would hand it to a job.

    Returns ``compose(overrides) -> cfg`` with the run folder at ``tmp_path/run`` and data under
    ``tmp_path/data``; HydraConfig is set, so ``${hydra:...}`` interpolations resolve.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from barlab.config.paths import CONFIG_DIR

    def _compose(overrides=()):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]  # as inside @hydra.main: the job config has no hydra node
            cfg.paths.output_dir = str(tmp_path / "run")
            cfg.paths.root_dir = str(tmp_path)
            cfg.paths.data_dir = str(tmp_path / "data")
        return cfg

    return _compose
