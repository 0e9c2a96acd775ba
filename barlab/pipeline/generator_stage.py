"""Stage ``generator``: pretokenize with a trained tokenizer, train the AR generator, sample, score.

Reads top to bottom: load the tokenizer; write token shards (original + flip) unless they exist;
build backbone + head from the ``generator`` and ``head`` groups; fit; validate; export
``generator.pt``; draw class-balanced samples (``samples.npz``) and score them (gFID, class
accuracy, IS, precision/recall with ``metrics``); return the numbers for results.json.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from barlab.config.instantiate import instantiate_checked, knob_names
from barlab.data.pretokenize import PretokenizeLimits, pretokenize
from barlab.data.token_datamodule import TokenShardDataModule
from barlab.data.token_shards import CONTINUOUS, read_token_manifest, token_type
from barlab.errors import ConfigError
from barlab.generator.image_generator import save_generator
from barlab.generator.token_shuffle import check_shuffle
from barlab.lightning.callbacks.sample_grid import SampleGrid
from barlab.lightning.generator_module import GeneratorModule
from barlab.lightning.optim import count_parameters
from barlab.metrics.evaluation import evaluate_generator, headline
from barlab.pipeline.diagnostics import run_diagnostics
from barlab.pipeline.results import GeneratorResult
from barlab.pipeline.trainer import (
    build_callbacks,
    build_loggers,
    build_optimization,
    build_trainer,
    checkpoint_dir,
    log_config,
    resume_point,
)
from barlab.runtime.distributed import apply_global_batch, launched_ranks, rank_device
from barlab.runtime.run_state import RunState, is_rank_zero, stream_seed, wait_for_manifest
from barlab.runtime.tokenizer_cache import attempt_token
from barlab.tokenizer.checkpoint import TOKENIZER_KNOBS, load_tokenizer
from barlab.utils.io import link_folder

log = logging.getLogger("barlab")


def tokenizer_path(cfg: DictConfig, trained: Path | None) -> Path:
    """The tokenizer to use: the one just trained (stage=all) or ``tokenizer_ckpt``."""
    if trained is not None:
        return trained
    if not cfg.get("tokenizer_ckpt"):
        raise ConfigError("tokenizer_ckpt", "stage=generator needs a trained tokenizer",
                          fix="tokenizer_ckpt=/path/to/run/tokenizer.pt, or stage=all")
    return Path(cfg.tokenizer_ckpt)


PRETOKENIZE = "generator.data.pretokenize"
PRETOKENIZE_KNOBS = {name: f"{PRETOKENIZE}.{name}" for name in ("train_images", "val_images", "flip")}


def pretokenize_limits(cfg: DictConfig) -> PretokenizeLimits:
    """``generator.data.pretokenize`` as :class:`PretokenizeLimits` (absent: encode everything); a bad
    value is one ConfigError naming its knob."""
    node = cfg.generator.data.get("pretokenize")
    node = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    unknown = sorted(set(node) - set(PRETOKENIZE_KNOBS))
    if unknown:
        raise ConfigError(f"{PRETOKENIZE}.{unknown[0]}", "is not a pretokenization setting "
                          f"({', '.join(PRETOKENIZE_KNOBS)})", fix=f"remove {PRETOKENIZE}.{unknown[0]}")
    with knob_names(PRETOKENIZE_KNOBS):
        return PretokenizeLimits(**node)


def _checked(limits: PretokenizeLimits, manifest: dict, tokens_dir: Path) -> dict:
    """``manifest``, if the shards in ``tokens_dir`` were written with ``limits``."""
    with knob_names(limits=PRETOKENIZE):
        limits.check_manifest(manifest, str(tokens_dir))
    return manifest


def token_shards_for(cfg: DictConfig, tokenizer, info: dict, tokens_dir: Path) -> dict:
    """The token shards of ``tokens_dir``, pretokenized first if the folder has no manifest.

    The ranks an external launcher started (SLURM tasks, torchrun) share the encoding, each on its own
    GPU where there is one; rank 0 publishes the folder (once among parallel jobs too: a file lock), and
    a killed run's finished shards are kept for the next. Under Lightning's own launcher the other ranks
    start only with training, so rank 0 encodes alone and they find the manifest. What is encoded
    follows ``generator.data.pretokenize``; shards written with other limits are refused. A finished
    folder is reused as it is, also by a restarted job, without taking the lock.
    """
    limits = pretokenize_limits(cfg)
    finished = read_token_manifest(str(tokens_dir))
    if finished is not None:
        return _checked(limits, finished, tokens_dir)
    rank, world = launched_ranks()
    if world == 1 and not is_rank_zero():
        return _checked(limits, wait_for_manifest(tokens_dir, read_token_manifest), tokens_dir)
    images = instantiate_checked(cfg.data, "data")
    with knob_names(TOKENIZER_KNOBS, out_dir="generator.data.shards_dir", shards_dir="data.shards_dir",
                    shard_size="generator.data.shard_size"):
        manifest = pretokenize(tokenizer, images, str(tokens_dir), meta={"tokenizer": str(info.get("path", ""))},
                               shard_size=cfg.generator.data.shard_size, limits=limits,
                               device=rank_device(cfg.trainer.get("accelerator", "auto")),
                               rank=rank, world=world, attempt=attempt_token() if world > 1 else "")
    return _checked(limits, manifest, tokens_dir)


def shared_tokens_dir(cfg: DictConfig, shared_tokens: Path | None) -> Path | None:
    """The tokenizer cache's shard folder to use instead of ``<run>/tokens``, or None.

    Used when the tokenizer came through the tokenizer cache (``shared_tokens``: its entry's shard
    folder) and ``generator.data.shards_dir`` is left at its default ``<run>/tokens`` with nothing
    there yet: the shards are written once into the entry, and ``<run>/tokens`` becomes a link to it.
    """
    tokens_dir = Path(cfg.generator.data.shards_dir)
    if shared_tokens is None or tokens_dir != Path(cfg.paths.output_dir) / "tokens" or tokens_dir.exists():
        return None
    return Path(shared_tokens)


def sampling_settings(cfg: DictConfig) -> dict[str, Any]:
    """The run's ``sampling`` node as plain Python (an allocation list included), ready for results.json."""
    return OmegaConf.to_container(cfg.sampling, resolve=True)


# The knobs behind the values the wiring hands the backbone and the head (not set in their config nodes):
# an error naming one of these arguments names the knob instead.
GIVEN_KNOBS = {"p": "generator.token_shuffle", "bits_per_step": "tokenizer.bits", "num_classes": "data.num_classes",
               "cond_dim": "generator.backbone.cond_dim", "batch_tokens": "head.batch_tokens"}


def build_backbone_and_head(cfg: DictConfig, bits_per_token: int, grid: tuple[int, int], num_classes: int,
                            token_type: str = "discrete", **head_kwargs):
    """``(backbone, head)`` of ``cfg.generator.backbone`` and ``cfg.head`` over a token grid (h, w) of
    ``bits_per_token``-bit tokens, with ``generator.token_shuffle`` applied (a p that does not divide the
    grid is refused here, in one line). Built on the current default device: the config check builds
    them on ``meta``. ``token_type="continuous"``: tokens of ``bits_per_token`` real channels (C) instead,
    and a backbone with the linear input projection."""
    gen = cfg.generator
    p = gen.token_shuffle
    with knob_names(GIVEN_KNOBS):
        ar_grid = check_shuffle(grid, p)
        bits_per_step = bits_per_token * p * p
        backbone_kwargs = {} if token_type == "discrete" else {"token_type": token_type}
        backbone = instantiate_checked(gen.backbone, "generator.backbone", bits_per_step=bits_per_step,
                                       grid=ar_grid, num_classes=num_classes, **backbone_kwargs)
        head = instantiate_checked(cfg.head, "head", cond_dim=gen.backbone.cond_dim, bits_per_step=bits_per_step,
                                   **head_kwargs)
    return backbone, head


def build_generator_module(cfg: DictConfig, tokenizer, info: dict, num_classes: int) -> GeneratorModule:
    """The LightningModule for ``cfg.generator`` + ``cfg.head`` over ``tokenizer``'s token grid."""
    gen = cfg.generator
    grid = tuple(info["grid"])
    if info.get("is_discrete", True):
        backbone, head = build_backbone_and_head(cfg, info["bits_per_token"], grid, num_classes)
    else:  # continuous tokens: C channels per token (info's token_channels, else the tokenizer's)
        channels = int(info.get("token_channels") or tokenizer.quantizer.channels)
        backbone, head = build_backbone_and_head(cfg, channels, grid, num_classes, token_type="continuous")
    return GeneratorModule(
        backbone=backbone, head=head, tokenizer=tokenizer, grid=grid, token_shuffle=gen.token_shuffle,
        label_drop=gen.label_drop, rar_start=gen.rar.start, rar_end=gen.rar.end, sampling=sampling_settings(cfg),
        **build_optimization(gen, "generator"),
    )


def head_token_type(cfg: DictConfig) -> str:
    """What the ``head`` option models, read from its class without building it: ``"discrete"`` (bits)
    or ``"continuous"`` (the ``token_type`` class attribute of :class:`barlab.generator.heads.Head`)."""
    from hydra.utils import get_class

    target = cfg.head.get("_target_") if cfg.get("head") is not None else None
    if not target:
        return "discrete"
    try:
        return str(getattr(get_class(target), "token_type", "discrete"))
    except (ImportError, ValueError):  # an unknown class is reported where the head is built
        return "discrete"


def check_token_types(tokenizer, head_type: str, where: str) -> None:
    """Refuse, in one line naming the knob and the fix, a head that models the other kind of token than
    ``tokenizer`` gives (bits vs continuous latents), and a continuous tokenizer file without its latent scale."""
    quantizer = type(tokenizer.quantizer).__name__
    if tokenizer.is_discrete and head_type == "continuous":
        raise ConfigError("tokenizer/quantizer", f"the head models continuous tokens but the tokenizer in {where} "
                          f"({quantizer}) gives bits", fix="tokenizer/quantizer=kl, or a discrete head")
    if not tokenizer.is_discrete and head_type != "continuous":
        raise ConfigError("head", f"the tokenizer in {where} ({quantizer}) gives continuous tokens, which a bit "
                          "head cannot model", fix="head=diffusion, or a discrete tokenizer/quantizer")
    if not tokenizer.is_discrete and tokenizer.latent_scale is None:
        raise ConfigError("tokenizer_ckpt", f"{where} holds a continuous tokenizer without its latent_scale",
                          fix="export the tokenizer again with `python -m barlab.train stage=tokenizer`")


def load_generator_tokenizer(cfg: DictConfig, trained: Path | None) -> tuple[Path, Any, dict]:
    """``(tokenizer file, tokenizer, its info)`` of the tokenizer the generator models: a discrete one
    (bits) for a discrete head, a continuous one (KL latents, with its ``latent_scale``) for a continuous
    head (``token_type = "continuous"``); a mismatch is refused (:func:`check_token_types`)."""
    tokenizer_file = tokenizer_path(cfg, trained)
    tokenizer, info = load_tokenizer(tokenizer_file)
    if info.get("is_discrete", True) and tokenizer.is_discrete and tokenizer.quantizer.bits_per_token < 1:
        raise ConfigError("tokenizer/quantizer", "the generator needs tokens of at least one bit",
                          fix="tokenizer/quantizer=binary_fsq")
    check_token_types(tokenizer, head_token_type(cfg), str(tokenizer_file))
    return tokenizer_file, tokenizer, info


def token_data(cfg: DictConfig, tokenizer, info: dict,
               shared_tokens: Path | None) -> tuple[TokenShardDataModule, dict, Path]:
    """``(datamodule, manifest, tokens folder)`` over the token shards of ``tokenizer``, pretokenized
    first where missing (into the tokenizer cache's entry when it has one, see :func:`shared_tokens_dir`).
    Shards of another tokenizer are refused."""
    tokens_dir, shared = Path(cfg.generator.data.shards_dir), shared_tokens_dir(cfg, shared_tokens)
    manifest = token_shards_for(cfg, tokenizer, info, shared or tokens_dir)
    if shared is not None and is_rank_zero():
        link_folder(shared, tokens_dir)
    wanted_type = "discrete" if tokenizer.is_discrete else CONTINUOUS
    if (manifest["bits"] != info["bits_per_token"] or list(manifest["grid"]) != list(info["grid"])
            or token_type(manifest) != wanted_type):
        raise ConfigError("generator.data.shards_dir", f"token shards in {tokens_dir} were made by another tokenizer "
                          f"({manifest['bits']} bits, grid {manifest['grid']}, {token_type(manifest)} tokens)",
                          fix="point it to a new folder")
    with knob_names({name: f"generator.data.{name}" for name in ("shards_dir", "max_val_samples")}):
        datamodule = TokenShardDataModule(str(shared or tokens_dir), batch_size=cfg.generator.data.batch_size,
                                          num_workers=cfg.generator.data.num_workers,
                                          epoch_length=cfg.generator.data.epoch_length,
                                          max_val_samples=cfg.generator.data.max_val_samples, seed=cfg.seed)
    return datamodule, manifest, tokens_dir


def log_generator_size(module: GeneratorModule) -> None:
    """One line: head, bits per AR step, AR steps and parameter counts."""
    backbone, head = count_parameters(module.backbone), count_parameters(module.head)
    log.info("generator: %s head, %d bits per AR step, %d AR steps, %.2fM parameters (backbone %.2fM, head %.2fM)",
             type(module.head).__name__, module.head.bits_per_step, module.backbone.seq_len,
             (backbone + head) / 1e6, backbone / 1e6, head / 1e6)


def generator_trainer(cfg: DictConfig, state: RunState,
                      datamodule: TokenShardDataModule) -> tuple[L.Trainer, SampleGrid]:
    """The generator's trainer (checkpoints, LR monitor, sample grids, loggers that got the config)
    with the global batch applied to ``datamodule``; and its sample-grid callback."""
    run_dir = Path(cfg.paths.output_dir)
    grid_cb = SampleGrid(dirpath=str(run_dir / "samples"), latest=str(run_dir / "sample_grid.png"),
                         per_class=cfg.sampling.per_class, seed=cfg.seed)
    callbacks = build_callbacks(cfg, "generator", names=("model_checkpoint", "lr_monitor", "progress_log")) + [grid_cb]
    trainer = build_trainer(cfg, cfg.generator, callbacks, build_loggers(cfg, "generator", state))
    apply_global_batch(trainer, datamodule, cfg.generator.get("global_batch_size"), "generator.global_batch_size")
    log_config(trainer, cfg)
    return trainer, grid_cb


def fit_and_validate(cfg: DictConfig, trainer: L.Trainer, module: GeneratorModule,
                     datamodule: TokenShardDataModule) -> tuple[dict[str, float], int]:
    """Train (continuing from the run's checkpoint if any), then validate on the final-eval batches.
    Returns ``(validation numbers, step resumed from)``."""
    ckpt_path, resumed_from = resume_point(cfg, "generator", module)
    datamodule.seed = stream_seed(cfg.seed, resumed_from)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    trainer.limit_val_batches = cfg.final_eval.max_batches or 1.0
    final = {k: float(v) for k, v in trainer.validate(module, datamodule=datamodule, verbose=False)[0].items()}
    return final, resumed_from


def export_and_score(cfg: DictConfig, trainer: L.Trainer, module: GeneratorModule,
                     tokenizer_file: Path) -> tuple[Path | None, dict[str, Any]]:
    """Rank 0 writes ``generator.pt``; with ``metrics.gfid.enabled`` every rank draws its share of the
    class-balanced samples and rank 0 scores them. Returns ``(generator.pt or None on other ranks,
    scores or {})``."""
    run_dir = Path(cfg.paths.output_dir)
    generator_file = None
    if trainer.is_global_zero:
        generator_file = save_generator(run_dir / "generator.pt", cfg.generator.backbone, cfg.head, module.backbone,
                                        module.head, tokenizer_file, grid=module.grid, token_shuffle=module.p,
                                        num_classes=module.num_classes, sampling=sampling_settings(cfg))
    if not cfg.metrics.gfid.enabled:
        return generator_file, {}
    scores = evaluate_generator(cfg, module.generate, module.num_classes, run_dir, rank=trainer.global_rank,
                                world=trainer.world_size)
    return generator_file, scores


def diagnostics_of(cfg: DictConfig, trainer: L.Trainer, module: GeneratorModule,
                   datamodule: TokenShardDataModule) -> dict[str, Any]:
    """Rank 0: the generator's diagnostics (:mod:`barlab.pipeline.diagnostics`) on validation tokens, sent to
    the loggers; {} on other ranks or with ``diagnostics.enabled=false``."""
    node = cfg.get("diagnostics")
    if not trainer.is_global_zero or node is None or not node.get("enabled", True):
        return {}
    out = run_diagnostics(cfg, module.backbone, module.head, module.tokenizer, module.grid, module.p,
                          datamodule.val_dataloader(), sampling_settings(cfg))
    numbers = {f"diagnostics/{k}": float(v) for k, v in out.items() if isinstance(v, (int, float))}
    for logger in trainer.loggers:
        logger.log_metrics(numbers, step=trainer.global_step)
        logger.save()
    return out


def run_generator_stage(cfg: DictConfig, state: RunState, trained_tokenizer: Path | None = None,
                        shared_tokens: Path | None = None) -> GeneratorResult:
    """Pretokenize (if needed), train, validate, export and score a generator. Returns the results.json body."""
    L.seed_everything(cfg.seed, workers=True)
    tokenizer_file, tokenizer, info = load_generator_tokenizer(cfg, trained_tokenizer)
    datamodule, manifest, tokens_dir = token_data(cfg, tokenizer, info, shared_tokens)
    module = build_generator_module(cfg, tokenizer, info, manifest["num_classes"])
    log_generator_size(module)
    trainer, grid_cb = generator_trainer(cfg, state, datamodule)
    start = time.time()
    final, resumed_from = fit_and_validate(cfg, trainer, module, datamodule)
    train_time_s = round(time.time() - start, 1)
    train = module.recent_train_metrics()
    generator_file, scores = export_and_score(cfg, trainer, module, tokenizer_file)
    diagnostics = diagnostics_of(cfg, trainer, module, datamodule)
    return {
        "head": type(module.head).__name__,
        "bits_per_step": module.head.bits_per_step,
        "ar_steps": module.backbone.seq_len,
        "token_shuffle": cfg.generator.token_shuffle,
        "params_backbone": count_parameters(module.backbone),
        "params_head": count_parameters(module.head),
        "train_loss": train.get("loss"),            # mean over the last 50 training steps
        "train_bit_accuracy": train.get("bit_accuracy"),
        "val_loss": final.get("val/loss"),
        "val_bit_accuracy": final.get("val/bit_accuracy"),
        "train_steps": trainer.global_step,
        "resumed_from_step": resumed_from,
        "train_time_s": train_time_s,                # fit + final validation, this attempt
        "sampling_time_s": scores.get("sampling_s"),  # the scored class-balanced samples
        "sampling_images_per_s": scores.get("images_per_s"),
        "sampling": sampling_settings(cfg),
        **(headline("g", scores) if scores else {}),
        "gfid_eval": scores or None,
        **diagnostics,
        "artifacts": {"sample_grid": str(grid_cb.latest), "tokens": str(tokens_dir),
                      "generator": str(generator_file) if generator_file else None,
                      "samples": scores.get("samples"),
                      "checkpoint": str(checkpoint_dir(cfg, "generator") / "last.ckpt")},
    }
