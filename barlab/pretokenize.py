"""``python -m barlab.pretokenize``: a trained tokenizer's token shards of a dataset, over any number of ranks.

    python -m barlab.pretokenize tokenizer_ckpt=<run>/tokenizer.pt out_dir=/data/tokens_fsq16
    srun --ntasks=8 --gpus-per-task=1 python -m barlab.pretokenize data=webdataset ... out_dir=...
    torchrun --standalone --nproc_per_node=8 -m barlab.pretokenize data=imagefolder ... out_dir=...

The processes a launcher started (SLURM tasks, torchrun ranks) share the token shards, each on its own
GPU where there is one; the shards are the same for any number of processes. A killed run keeps its
finished shards, and the same command again encodes only the rest (:mod:`barlab.data.pretokenize`).
The folder is what ``stage=generator generator.data.shards_dir=<out_dir>`` trains on.
"""

from __future__ import annotations

import json
import logging
import time

from omegaconf import DictConfig, OmegaConf

from barlab.cli import hydra_tool, require
from barlab.config.instantiate import instantiate_checked, knob_names

log = logging.getLogger("barlab")


def run(cfg: DictConfig) -> dict:
    from barlab.data.pretokenize import PretokenizeLimits, pretokenize
    from barlab.errors import ConfigError
    from barlab.runtime.distributed import launched_ranks, rank_device
    from barlab.runtime.tokenizer_cache import attempt_token
    from barlab.tokenizer.checkpoint import load_tokenizer

    require(cfg, "tokenizer_ckpt", "tokenizer_ckpt=/path/to/run/tokenizer.pt")
    require(cfg, "out_dir", "out_dir=/path/to/tokens")
    if str(cfg.device) not in ("auto", "cpu", "cuda"):
        raise ConfigError("device", f"unknown device {cfg.device!r}", fix="device=auto")
    rank, world = launched_ranks()
    device = rank_device("cpu" if cfg.device == "cpu" else "auto")
    if cfg.device == "cuda" and device.type != "cuda":
        raise ConfigError("device", "CUDA is not available on this machine", fix="device=cpu (or auto)")
    with knob_names({name: f"limits.{name}" for name in ("train_images", "val_images", "flip")}):
        limits = PretokenizeLimits(**OmegaConf.to_container(cfg.limits, resolve=True))
    tokenizer, info = load_tokenizer(str(cfg.tokenizer_ckpt))
    if not info.get("is_discrete", True) or tokenizer.quantizer.bits_per_token < 1:
        raise ConfigError("tokenizer_ckpt", f"{cfg.tokenizer_ckpt} is a continuous tokenizer; token shards "
                          "hold bits", fix="a binary_fsq or fsq tokenizer")
    images = instantiate_checked(cfg.data, "data")
    start = time.time()
    log.info("rank %d/%d: pretokenizing %s with %s on %s", rank, world, images.shards_dir, cfg.tokenizer_ckpt, device)
    with knob_names(batch_size="batch_size", shard_size="shard_size", stall_timeout_s="stall_timeout_s"):
        manifest = pretokenize(tokenizer, images, str(cfg.out_dir), meta={"tokenizer": str(cfg.tokenizer_ckpt)},
                               batch_size=int(cfg.batch_size), device=device, shard_size=cfg.shard_size,
                               limits=limits, rank=rank, world=world, attempt=attempt_token() if world > 1 else "",
                               stall_timeout_s=float(cfg.stall_timeout_s))
    summary = {"out_dir": str(cfg.out_dir), "rank": rank, "world": world, "device": str(device),
               "wall_time_s": round(time.time() - start, 1),
               "sequences": {split: entry["num_samples"] for split, entry in manifest["splits"].items()},
               "shards": {split: len(entry["shards"]) for split, entry in manifest["splits"].items()}}
    if rank == 0:
        print(json.dumps(summary, indent=2))
    return summary


main = hydra_tool("pretokenize", run)

if __name__ == "__main__":
    main()
