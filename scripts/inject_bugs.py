"""Check that the tests can fail: inject one known bug at a time into a copy of barlab, run the tests meant to
catch it, and print ``caught`` or ``MISSED`` per bug.

    .venv/bin/python scripts/inject_bugs.py             # every bug, 2 at a time; a few minutes on 2 cores
    .venv/bin/python scripts/inject_bugs.py --list      # the bugs and their tests, nothing run
    .venv/bin/python scripts/inject_bugs.py --only rope --jobs 1
    .venv/bin/python scripts/inject_bugs.py --light-baseline   # as the test suite runs it

A bug is located by symbol, not by line: ``(file, qualified name, old, new)`` replaces ``old`` by ``new``
where ``old`` occurs exactly once inside that symbol's source (its ``ast`` line range: a function, method,
class, nested function or module-level assignment such as ``KEY_NODES``). Edits elsewhere in the file do not
move it; a pattern found 0 or 2+ times inside its symbol is an error, not a skip.

The working tree is never written. Each bug gets its own temporary copy of ``barlab/``, ``configs/``,
``tests/``, ``scripts/``, ``sweeps/`` and ``pyproject.toml``; pytest runs there with ``PYTHONPATH=<copy>``
and first asserts that the ``barlab`` it imports is the copy's (not the editable install). A baseline run of
every named test on an unmodified copy must pass, or the verdicts mean nothing.

A bug is ``caught`` when its tests fail (pytest exit status 1); ``MISSED`` when they pass; ``ERROR`` for any
other status (no such test, collection error). Output: one line per bug, then ``N of M injected bugs caught``;
the exit status is 0 only when every bug is caught and every pattern was found exactly once.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("barlab", "configs", "tests", "scripts", "sweeps", "pyproject.toml")
RUN_TIMEOUT_S = 900


@dataclass(frozen=True)
class Bug:
    """``old`` -> ``new`` inside ``symbol`` of ``path`` (relative to the repository root); ``tests`` catch it."""

    name: str
    path: str
    symbol: str
    old: str
    new: str
    tests: tuple[str, ...]


def bug(name: str, path: str, symbol: str, old: str, new: str, *tests: str) -> Bug:
    return Bug(name, path, symbol, old, new, tuple(tests))


T = "tests/"
RELOAD = T + ("test_token_shuffle_export.py::"
              "test_generator_file_with_token_shuffle_reloads_and_samples_the_same_token_grid")
COMPOSITION = T + ("test_tokenizer_loss_composition.py::"
                   "test_generator_loss_is_the_weighted_sum_and_the_gan_term_joins_at_its_start_step")
DETACHED = T + ("test_tokenizer_loss_composition.py::"
                "test_discriminator_step_is_fed_the_real_images_and_a_detached_reconstruction")
PAPER_SUM = T + "test_paper_tokenizer_smoke.py::test_the_loss_is_the_official_weighted_sum_of_its_terms"
CONVERTED = T + "test_convert.py::test_tiny_official_generators_give_the_official_conditions_and_logits"
LIMITS = T + ("test_generator_pipeline.py::"
              "test_pretokenization_limits_encode_the_first_images_and_refuse_other_shards")
PRETOK = T + "test_pretokenize_ranks.py::"
BUGS = [
    # ------------------------------------------------------------------ the first fifteen
    bug("binary FSQ STE gradient doubled", "barlab/tokenizer/quantizers/binary_fsq.py", "BinaryFSQ.quantize",
        "return hard + (soft - soft.detach())", "return hard + 2 * (soft - soft.detach())",
        T + "test_quantizers.py::test_binary_fsq_ste_gradient_is_tanh_derivative"),
    bug("FSQ STE gradient halved", "barlab/tokenizer/quantizers/fsq.py", "FSQ.quantize",
        "torch.round(bounded).detach() + (bounded - bounded.detach())",
        "torch.round(bounded).detach() + 0.5 * (bounded - bounded.detach())",
        T + "test_quantizers.py::test_fsq_ste_gradient_is_the_bound_derivative_over_the_half_width"),
    bug("CFG sign flipped", "barlab/generator/heads/base.py", "apply_cfg",
        "uncond_logits + g * (cond_logits - uncond_logits)", "uncond_logits - g * (cond_logits - uncond_logits)",
        T + "test_heads.py::test_apply_cfg_scalar_and_per_row_by_hand"),
    bug("linear CFG schedule off by a factor", "barlab/generator/guidance.py", "guidance_scale",
        "return 1.0 + (g - 1.0) * frac", "return 1.0 + (g - 1.0) * frac * 0.5",
        T + "test_sampling.py::test_sampler_hands_the_head_the_scheduled_guidance_and_null_class_rows"),
    bug("MBM temperature not annealed", "barlab/generator/heads/mbm.py", "MBMHead.sample",
        "tau = temperature * (1 - s / num_steps)", "tau = temperature",
        T + "test_sampling.py::test_mbm_sampler_keeps_the_most_confident_bits_with_decaying_temperature"),
    bug("flipped copy flips vertically", "barlab/data/pretokenize.py", "_encoded",
        "x.flip(-1)", "x.flip(-2)",
        T + "test_generator_pipeline.py::test_pretokenization_stores_original_and_flip_and_reads_back"),
    bug("pretokenization limit ignored", "barlab/data/pretokenize.py", "_encoded",
        "images.eval_dataset(shard.split, shard.limit,", "images.eval_dataset(shard.split, None,",
        LIMITS),
    bug("token shards sized without the flips", "barlab/data/pretokenize.py", "plan_token_shards",
        "shard_size // (views * max(sizes[0], 1))", "shard_size // max(sizes[0], 1)",
        PRETOK + "test_plan_groups_whole_image_shards_to_fill_shard_size",
        PRETOK + "test_the_layout_and_keys"),
    bug("a resumed pretokenization encodes finished shards again", "barlab/data/pretokenize.py",
        "pretokenize.encode_mine", "if not os.path.isfile(os.path.join(folder, s.name))", "if True",
        PRETOK + "test_a_killed_run_resumes_with_only_the_missing_shards"),
    bug("rank 0 publishes the token folder before the other ranks finish", "barlab/data/pretokenize.py",
        "pretokenize.fill", "wait_until(lambda: all(", "wait_until(lambda: any(",
        PRETOK + "test_ranks_share_the_work_and_write_the_shards_of_one_process"),
    bug("pretokenization limits not recorded", "barlab/data/pretokenize.py", "pretokenize",
        '**({"pretokenize": limits.as_dict()}', '**({"pretokenize_limits": limits.as_dict()}',
        LIMITS),
    bug("pretokenization knobs named by their argument", "barlab/pipeline/generator_stage.py",
        "pretokenize_limits", "with knob_names(PRETOKENIZE_KNOBS):", "with knob_names({}):",
        T + "test_generator_pipeline.py::test_pretokenize_knob_errors_name_the_knob"),
    bug("PSNR data range 2", "barlab/lightning/tokenizer_module.py", "TokenizerModule.__init__",
        "PeakSignalNoiseRatio(data_range=1.0", "PeakSignalNoiseRatio(data_range=2.0",
        T + "test_training_parts.py::test_tokenizer_validation_ssim_psnr_and_bit_usage_by_hand"),
    bug("label drop at twice p", "barlab/lightning/generator_module.py", "GeneratorModule.training_step",
        "self.backbone.drop_labels(batch[\"label\"], self.label_drop)",
        "self.backbone.drop_labels(batch[\"label\"], 2 * self.label_drop)",
        T + "test_rar_orders.py::test_training_step_drops_labels_to_the_null_class_at_rate_p"),
    bug("targets in raster order", "barlab/lightning/generator_module.py", "GeneratorModule._loss",
        "targets = bits if order is None else bits.gather(1, order[..., None].expand_as(bits))", "targets = bits",
        T + "test_training_parts.py::test_generator_targets_are_the_bits_in_the_sampled_order"),
    bug("perceptual distance summed over pixels, not averaged", "barlab/tokenizer/perceptual.py",
        "VGGPerceptualLoss.forward", ".sum(dim=1).mean(dim=(1, 2))", ".sum(dim=1).sum(dim=(1, 2))",
        T + "test_tokenizer_components.py::test_vgg_perceptual_loss_exact_value_with_hand_built_weights"),
    bug("skip counted twice across workers", "barlab/data/loader_stages.py", "SkipCounter.skip",
        "self._shared.value += 1", "self._shared.value += 2",
        T + "test_data.py::test_skip_count_is_exact_with_two_loader_workers"),
    bug("bit statistics never reset", "barlab/lightning/tokenizer_module.py",
        "TokenizerModule.on_validation_epoch_start", "self.val_bits.reset()", "pass",
        T + "test_training_parts.py::test_tokenizer_bit_statistics_cover_only_the_latest_validation"),
    bug("skip counter pickled with its shared Value", "barlab/data/loader_stages.py", "SkipCounter.__getstate__",
        "state[\"_shared\"] = None", "pass",
        T + "test_data.py::test_skip_counter_pickles_without_its_shared_total_outside_worker_start"),
    bug("grid best point across allocations", "barlab/analysis/grid.py", "surface_keys",
        "GENERATOR_KEYS + PLAN_KEYS", "GENERATOR_KEYS",
        T + "test_grid_table.py::test_allocation_overrides_never_join_the_default_grid"),
    bug("progress line every step", "barlab/lightning/callbacks/progress_log.py", "ProgressLog.on_train_batch_end",
        "if not self.active or step == self.start_step or step % self.every_n_steps:", "if not self.active:",
        T + "test_logging.py::test_progress_log_writes_a_line_every_n_steps_when_no_bar_is_drawn"),
    # ------------------------------------------------------------------ RoPE
    bug("RoPE rows and columns swapped", "barlab/generator/rope.py", "Rope2D.__init__",
        "[rows[:, None] * freqs, cols[:, None] * freqs]", "[cols[:, None] * freqs, rows[:, None] * freqs]",
        T + "test_rope.py"),
    bug("RoPE frequencies over the half head dim", "barlab/generator/rope.py", "Rope2D.__init__",
        "dtype=torch.float64) / quarter)", "dtype=torch.float64) / (2 * quarter))",
        T + "test_rope.py::test_table_is_cos_and_sin_of_row_then_column_angles"),
    bug("RoPE pairs (2i, 2i+1) instead of (i, i + D/2)", "barlab/generator/rope.py", "rotate",
        "x1, x2 = x.chunk(2, dim=-1)", "x1, x2 = x[..., 0::2], x[..., 1::2]",
        T + "test_rope.py::test_rotate_turns_each_pair_i_and_i_plus_half_by_its_angle"),
    bug("RoPE target-aware queries on a quarter of the heads", "barlab/generator/rope.py", "Rope2D.__init__",
        "heads // 2 if target_aware", "heads // 4 if target_aware",
        T + "test_rope.py::test_target_aware_queries_turn_the_last_half_of_the_heads_by_the_target"),
    bug("RoPE turns the second half of each pair by a reflection", "barlab/generator/rope.py", "rotate",
        "x1 * sin + x2 * cos", "x1 * sin - x2 * cos",
        T + "test_rope.py::test_scores_depend_only_on_the_row_and_column_offsets"),
    # ------------------------------------------------------------------ attention mask, KV cache
    bug("chunk mask hides each slot from itself", "barlab/generator/attention.py", "Attention.forward",
        "keys[None, :] <= (offset", "keys[None, :] < (offset",
        T + "test_attention_masks.py"),
    bug("chunk mask ignores the cached slots", "barlab/generator/attention.py", "Attention.forward",
        "(offset + torch.arange(n, device=x.device))", "(torch.arange(n, device=x.device))",
        T + "test_attention_masks.py"),
    bug("teacher-forced attention not causal", "barlab/generator/attention.py", "Attention.forward",
        "causal = n > 1", "causal = False",
        T + "test_attention_masks.py::test_full_sequence_is_causal",
        T + "test_attention_masks.py::test_full_sequence_with_rope_is_causal"),
    bug("KV cache stores keys as values", "barlab/generator/kv_cache.py", "KVCache.append",
        "self.values[layer][:, :, self.length:end] = v", "self.values[layer][:, :, self.length:end] = k",
        T + "test_attention_masks.py"),
    bug("KV cache advances one slot per call", "barlab/generator/kv_cache.py", "KVCache.advance",
        "self.length += n", "self.length += 1",
        T + "test_attention_masks.py"),
    # ------------------------------------------------------------------ token shuffling
    bug("unshuffle reads sub-tokens column-major", "barlab/generator/token_shuffle.py", "unshuffle",
        "(sh sw k) -> b (h sh w sw) k", "(sw sh k) -> b (h sh w sw) k",
        T + "test_token_shuffle_export.py"),
    bug("shuffle writes sub-tokens column-major", "barlab/generator/token_shuffle.py", "shuffle",
        "-> b (h w) (sh sw k)", "-> b (h w) (sw sh k)",
        T + "test_token_shuffle_export.py::test_shuffle_is_a_pixel_unshuffle_with_the_bits_innermost"),
    bug("decoding unshuffles on the transposed grid", "barlab/generator/image_generator.py", "decode_steps",
        "unshuffle(steps, grid, token_shuffle)", "unshuffle(steps, grid[::-1], token_shuffle)",
        RELOAD),
    bug("generator.pt reloads a transposed AR grid", "barlab/generator/image_generator.py", "load_generator",
        "grid=(grid[0] // p, grid[1] // p)", "grid=(grid[1] // p, grid[0] // p)",
        RELOAD),
    # ------------------------------------------------------------------ MBM masking
    bug("MBM mask ratio without the 1/k floor", "barlab/generator/heads/mask_ratio.py", "draw_mask_ratio",
        "clamp(min=1 / k, max=1.0)", "clamp(min=0.0, max=1.0)",
        T + "test_mbm_masking.py::test_extreme_draws_clamp_the_ratio_and_the_mask_count"),
    bug("MBM cosine mask ratio over a third of the circle", "barlab/generator/heads/mask_ratio.py", "draw_mask_ratio",
        "torch.cos(math.pi / 2 *", "torch.cos(math.pi / 3 *",
        T + "test_mbm_ablations.py::test_mask_statistics_match_the_rule[cosine-0.0-16-200000]"),
    bug("MBM full-mask draw taken at share 0 too", "barlab/generator/heads/mask_ratio.py", "draw_mask_ratio",
        "if full_mask_share > 0:", "if full_mask_share >= 0:",
        T + "test_mbm_ablations.py::test_default_mask_tokens_is_bit_identical_to_the_recorded_official_draw"),
    bug("MBM random fill sampled with [M]", "barlab/generator/heads/mbm.py", "MBMHead.sample",
        'fed = b if self.masked_fill == "mask" else', 'fed = b if True else',
        T + "test_mbm_ablations.py::test_random_fill_samples_with_random_bits_in_the_still_masked_positions"),
    bug("MBM mask count floored", "barlab/generator/heads/mbm.py", "MBMHead.mask_tokens",
        "torch.round(k * ratio)", "torch.floor(k * ratio)",
        T + "test_mbm_masking.py"),
    bug("MBM loss weights swapped", "barlab/generator/heads/mbm.py", "MBMHead.loss",
        "torch.where(mask, 1.0, self.unmasked_weight)", "torch.where(mask, self.unmasked_weight, 1.0)",
        T + "test_heads.py::test_mbm_loss_weight_values_exact"),
    # ------------------------------------------------------------------ generator diagnostics
    bug("MBM first step with half the bits known", "barlab/generator/heads/mbm.py", "MBMHead.first_step_bits",
        "allocation=(self.bits_per_step,)", "allocation=None",
        T + "test_diagnostics.py::test_mbm_first_step_is_one_argmax_from_all_masked"),
    bug("unmasking steps recorded one step late", "barlab/generator/heads/mbm.py", "MBMHead.sample_with_steps",
        "(step < 0) & (b != MASK), s)", "(step < 0) & (b != MASK), s + 1)",
        T + "test_diagnostics.py::test_unmasking_step_accuracy_follows_the_confidence_order"),
    bug("splice takes the last j steps", "barlab/generator/diagnostics.py", "splice",
        "out[:, :j] = generated[:, :j]", "out[:, real.shape[1] - j:] = generated[:, real.shape[1] - j:]",
        T + "test_diagnostics.py::test_splice_class_accuracy_locates_the_step_that_loses_the_class"),
    bug("first-step accuracy under the null label", "barlab/pipeline/diagnostics.py", "bit_diagnostics",
        '"diag_first_step_acc_label": first_step_accuracy(head, cond,',
        '"diag_first_step_acc_label": first_step_accuracy(head, uncond,',
        T + "test_diagnostics.py::test_diagnose_a_tiny_generator"),
    # ------------------------------------------------------------------ diffusion head, continuous tokens
    bug("diffusion forward noising with alpha_bar, not its square root", "barlab/generator/heads/diffusion_schedule.py",
        "GaussianSchedule.q_sample", 'self.coef("sqrt_alphas_cumprod", t) * x0', 'self.coef("alphas_cumprod", t) * x0',
        T + "test_diffusion_head.py::test_q_sample_is_sqrt_alpha_bar_x0_plus_sqrt_one_minus_alpha_bar_eps"),
    bug("diffusion loss tiles the tokens and the conditions in different orders", "barlab/generator/heads/diffusion.py",
        "DiffusionHead.loss", 'repeat(bits.float(), "n d -> (m n) d"', 'repeat(bits.float(), "n d -> (n m) d"',
        T + "test_diffusion_head.py::test_loss_on_fixed_t_and_noise_by_hand"),
    bug("diffusion at g = 1 follows the unconditional path", "barlab/generator/heads/diffusion.py",
        "DiffusionHead.guided", "return self(x_t, t, cond)\n",
        "return self(x_t, t, cond if uncond is None else uncond)\n",
        T + "test_diffusion_head.py::test_unit_guidance_is_the_conditional_path"),
    bug("diffusion x0 clamp applied after the posterior mean", "barlab/generator/heads/diffusion_schedule.py",
        "GaussianSchedule.p_mean_variance", "mean, _ = self.q_posterior(x0, x_t, t)",
        "mean, _ = self.q_posterior(self.predict_x0(x_t, t, eps), x_t, t)",
        T + "test_diffusion_head.py::test_clip_x0_clamps_the_predicted_x0_and_none_is_mar_s_path"),
    bug("the cached step rounds continuous tokens to bits", "barlab/generator/backbone.py", "ARBackbone.step",
        "x = self.embed(bits[:, None])", "x = self.embed(bits[:, None].round())",
        T + "test_continuous_tokens.py::test_the_sampler_draws_continuous_tokens_the_same_with_and_without_the_cache"),
    bug("diffusion CFG takes the variance from the unconditional half", "barlab/generator/heads/diffusion.py",
        "DiffusionHead.guided", "var_values.chunk(2)[0]", "var_values.chunk(2)[1]",
        T + "test_diffusion_head.py::test_cfg_mixes_eps_only_and_takes_the_variance_from_the_conditional_half"),
    bug("diffusion VLB term trains the eps output", "barlab/generator/heads/diffusion.py", "DiffusionHead.loss",
        "schedule.p_mean_variance(eps.detach(), var_values, x_t, t)",
        "schedule.p_mean_variance(eps, var_values, x_t, t)",
        T + "test_diffusion_head.py::test_vb_term_does_not_train_the_eps_output"),
    bug("diffusion sampler shows the network the respaced step", "barlab/generator/heads/diffusion.py",
        "DiffusionHead.sample", "self.guided(x, schedule.timestep_map[t], cond, uncond, guidance)",
        "self.guided(x, t, cond, uncond, guidance)",
        T + "test_diffusion_head.py::test_sampler_recovers_a_gaussian_target"),
    bug("diffusion respacing truncates", "barlab/generator/heads/diffusion_schedule.py", "space_timesteps",
        "steps.append(round(position))", "steps.append(int(position))",
        T + "test_diffusion_head.py::test_respacing_keeps_every_step_and_spaces_100_evenly"),
    bug("continuous decode multiplies by the latent scale", "barlab/tokenizer/tokenizer.py", "Tokenizer.decode_tokens",
        "tokens.float() / self.checked_latent_scale()", "tokens.float() * self.checked_latent_scale()",
        T + "test_continuous_tokens.py::test_latent_scale_gives_unit_std_and_decode_tokens_inverts_it"),
    bug("continuous token shards big-endian", "barlab/data/token_shards.py", "pack_f16", "dtype=F16", 'dtype=">f2"',
        T + "test_continuous_tokens.py::test_write_token_shards_round_trips_continuous_values"),
    bug("generator.pt reloads a continuous backbone as discrete", "barlab/generator/image_generator.py",
        "load_generator", '**({"token_type": payload["token_type"]} if "token_type" in payload else {})', "",
        T + "test_continuous_tokens.py::test_the_generator_stage_pieces_train_sample_save_and_load_continuous_tokens"),
    bug("stage=all lets a bit head model a KL tokenizer", "barlab/pipeline/preflight.py", "check_generator",
        'is_a(cfg.tokenizer.quantizer, "tokenizer.quantizer", KLLatent) != continuous_head',
        'is_a(cfg.tokenizer.quantizer, "tokenizer.quantizer", KLLatent) and continuous_head',
        T + "test_generator_pipeline.py::test_stage_all_refuses_a_head_of_the_other_token_type_before_training"),
    # ------------------------------------------------------------------ RAR orders
    bug("RAR ratio rises instead of falling", "barlab/generator/order.py", "random_ratio",
        "return 1.0 - (step - begin) / (finish - begin)", "return (step - begin) / (finish - begin)",
        T + "test_rar_orders.py::test_random_ratio_is_one_then_linear_then_zero"),
    bug("RAR start and end swapped in the training step", "barlab/lightning/generator_module.py",
        "GeneratorModule.training_step", "self.rar_start, self.rar_end)", "self.rar_end, self.rar_start)",
        T + "test_rar_orders.py::test_training_step_draws_orders_with_the_ratio_of_its_step"),
    bug("RAR keeps raster order where it should permute", "barlab/generator/order.py", "sample_orders",
        "torch.where(pick[:, None], perms, raster)", "torch.where(pick[:, None], raster, perms)",
        T + "test_rar_orders.py"),
    # ------------------------------------------------------------------ EMA
    bug("EMA weights the new value by the decay", "barlab/lightning/callbacks/ema.py", "EMA.on_train_batch_end",
        "1.0 - decay)", "decay)",
        T + "test_ema_callback.py::test_average_follows_the_formula_every_n_steps"),
    bug("EMA update period off by one", "barlab/lightning/callbacks/ema.py", "EMA.on_train_batch_end",
        "trainer.global_step % self.every_n_steps", "(trainer.global_step + 1) % self.every_n_steps",
        T + "test_ema_callback.py::test_average_follows_the_formula_every_n_steps"),
    bug("EMA not swapped in for validation", "barlab/lightning/callbacks/ema.py", "EMA.on_validation_start",
        "self.swap_in(pl_module)", "pass",
        T + "test_ema_callback.py::test_validation_runs_on_the_average_and_training_resumes_on_the_raw_weights"),
    bug("EMA warm-up decay (1 + n) / (11 + n)", "barlab/lightning/callbacks/ema.py", "EMA.current_decay",
        "(10.0 + self.num_updates)", "(11.0 + self.num_updates)",
        T + "test_ema_callback.py::test_warmup_decay_values"),
    # ------------------------------------------------------------------ LR schedule
    bug("LR warm-up starts at 0", "barlab/utils/lr_schedules.py", "warmup_cosine",
        "return (step + 1) / (warmup_steps + 1)", "return step / warmup_steps",
        T + "test_lr_schedule_steps.py::test_schedule_values_at_chosen_steps"),
    bug("LR cosine decays to 0, not min_ratio", "barlab/utils/lr_schedules.py", "warmup_cosine",
        "return min_ratio + (1.0 - min_ratio)", "return (1.0 - min_ratio)",
        T + "test_lr_schedule_steps.py::test_schedule_values_at_chosen_steps"),
    bug("generator LR schedule stepped per epoch", "barlab/lightning/generator_module.py",
        "GeneratorModule.configure_optimizers", "\"interval\": \"step\"", "\"interval\": \"epoch\"",
        T + "test_lr_schedule_steps.py::test_generator_uses_the_scheduled_rate_at_every_step"),
    bug("discriminator step advances the autoencoder's schedule", "barlab/lightning/tokenizer_module.py",
        "TokenizerModule.training_step", "schedulers[1].step()", "schedulers[0].step()",
        T + "test_lr_schedule_steps.py::test_tokenizer_and_discriminator_each_follow_their_own_schedule"),
    bug("schedules ignore max_steps", "barlab/utils/lr_schedules.py", "planned_steps",
        "return max_steps if max_steps and max_steps > 0 else DEFAULT_TOTAL_STEPS", "return DEFAULT_TOTAL_STEPS",
        T + "test_lr_schedule_steps.py::test_planned_steps_is_max_steps_or_the_default"),
    # ------------------------------------------------------------------ tokenizer cache key
    bug("cache key ignores the rFID settings", "barlab/runtime/tokenizer_cache.py", "cache_key",
        "if k != \"gfid\"", "if k not in (\"gfid\", \"rfid\")",
        T + "test_tokenizer_cache_key_fast.py"),
    bug("cache key without the seed", "barlab/runtime/tokenizer_cache.py", "KEY_NODES",
        "\"seed\", ", "",
        T + "test_tokenizer_cache_key_fast.py"),
    bug("cache key keeps the run folder's paths", "barlab/runtime/tokenizer_cache.py", "cache_key.without_run_paths",
        "v.startswith(run_dir)", "v == run_dir",
        T + "test_tokenizer_cache_key_fast.py"),
    bug("cache key counts the report-only progress log", "barlab/runtime/tokenizer_cache.py",
        "REPORT_ONLY_CALLBACKS", "(\"progress_log\",)", "()",
        T + "test_tokenizer_cache_key_fast.py::test_spec_holds_the_key_nodes_and_the_format"),
    # ------------------------------------------------------------------ DDP / worker sharding, accumulation
    bug("ranks read overlapping shard windows", "barlab/data/loader_stages.py", "rank_shards",
        "list(urls[rank::world])", "list(urls[rank:rank + world])",
        T + "test_shard_sharding.py::test_training_shards_are_split_between_ranks"),
    bug("with fewer shards than ranks each rank reads one", "barlab/data/loader_stages.py", "rank_shards",
        "else list(urls)", "else list(urls[rank % len(urls):][:1])",
        T + "test_shard_sharding.py::test_too_few_training_shards_give_every_rank_all_of_them"),
    bug("worker seeds collide across ranks", "barlab/data/loader_stages.py", "worker_seed",
        "rank_and_world()[0] * 1000 + worker_and_count()[0]", "rank_and_world()[0] + worker_and_count()[0]",
        T + "test_shard_sharding.py::test_every_rank_and_worker_draws_its_own_seed"),
    bug("every rank validates rank 0's share", "barlab/data/loader_stages.py", "RankSlice.__call__",
        "index % world == rank", "index % world == 0",
        T + "test_shard_sharding.py::test_each_sample_is_read_once_across_ranks_and_workers"),
    bug("global batch applied without accumulation", "barlab/runtime/distributed.py", "apply_global_batch",
        "= per_rank, accumulation", "= per_rank, 1",
        T + "test_generator_accumulation_clipping.py"),
    bug("generator gradient clipped by value", "barlab/lightning/generator_module.py",
        "GeneratorModule.configure_gradient_clipping", "gradient_clip_algorithm=\"norm\"",
        "gradient_clip_algorithm=\"value\"",
        T + "test_generator_accumulation_clipping.py::test_the_update_is_clipped_to_the_gradient_norm_limit"),
    bug("biases and norms left out of the optimiser", "barlab/lightning/optim.py", "decay_groups",
        "(decay if is_matrix else no_decay).append(param)", "(decay if is_matrix else []).append(param)",
        T + "test_generator_accumulation_clipping.py::test_without_accumulation_each_micro_batch_is_its_own_update"),
    # ------------------------------------------------------------------ the tokenizer's training step
    bug("tokenizer loss drops the quantizer loss", "barlab/lightning/tokenizer_module.py",
        "TokenizerModule.autoencoder_loss", "loss = terms[\"loss\"] + q.loss", "loss = terms[\"loss\"]",
        COMPOSITION),
    bug("perceptual loss unweighted", "barlab/lightning/tokenizer_module.py", "TokenizerModule.autoencoder_loss",
        "loss + self.perceptual_weight * perceptual", "loss + perceptual",
        COMPOSITION),
    bug("GAN term unweighted", "barlab/lightning/tokenizer_module.py", "TokenizerModule.autoencoder_loss",
        "loss + self.gan_weight * g_loss", "loss + g_loss",
        COMPOSITION),
    bug("GAN starts one step late", "barlab/lightning/tokenizer_module.py", "TokenizerModule.gan_active",
        "self.global_step >= self.gan_start_step", "self.global_step > self.gan_start_step",
        COMPOSITION),
    bug("discriminator fed the live reconstruction", "barlab/lightning/tokenizer_module.py",
        "TokenizerModule.discriminator_loss", "else recon.detach()", "else recon",
        DETACHED),
    bug("tokenizer gradient clipped by value", "barlab/lightning/tokenizer_module.py", "TokenizerModule.training_step",
        "self.clip_gradients(opt_g, gradient_clip_val=self.grad_clip, gradient_clip_algorithm=\"norm\")",
        "self.clip_gradients(opt_g, gradient_clip_val=self.grad_clip, gradient_clip_algorithm=\"value\")",
        T + "test_tokenizer_loss_composition.py::test_gradient_norm_clipping_is_applied_to_both_optimisers"),
    # ------------------------------------------------------------------ the paper tokenizer (bar_fsq_paper)
    bug("distillation term unweighted", "barlab/lightning/tokenizer_module.py", "TokenizerModule.autoencoder_loss",
        "loss + self.distill_weight * distill", "loss + distill", PAPER_SUM),
    bug("Gram term unweighted", "barlab/lightning/tokenizer_module.py", "TokenizerModule.autoencoder_loss",
        "loss + self.gram_weight * gram", "loss + gram", PAPER_SUM),
    bug("encoder at the full learning rate", "barlab/lightning/tokenizer_module.py", "TokenizerModule.build_optimizers",
        "[\"lr\"] *= self.encoder_lr_mult", "[\"lr\"] *= 1.0",
        T + "test_paper_tokenizer_smoke.py::test_encoder_starts_from_the_file_and_gets_a_tenth_of_the_learning_rate"),
    bug("frozen loss networks saved in checkpoints", "barlab/lightning/tokenizer_module.py", "_drop_frozen_loss_nets",
        "        del state_dict[key]", "        pass",
        T + "test_paper_tokenizer_smoke.py::test_paper_tokenizer_trains_end_to_end_with_every_loss_term"),
    bug("the alternating GAN phase starts with the discriminator", "barlab/lightning/tokenizer_module.py",
        "TokenizerModule.training_step", "(self.global_step - self.gan_start_step) % 2",
        "(self.global_step - self.gan_start_step + 1) % 2",
        T + "test_gan_steps.py::test_official_alternating_gan_phase_gives_each_batch_to_one_network"),
    # ------------------------------------------------------------------ released official checkpoints
    bug("official RoPE pairs not permuted", "barlab/generator/official_checkpoint.py", "rope_permutation",
        "return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])",
        "return torch.arange(head_dim)", CONVERTED),
    bug("official final adaLN halves not swapped", "barlab/generator/official_checkpoint.py",
        "convert_official_state", "torch.cat([shift, scale])", "torch.cat([scale, shift])", CONVERTED),
    bug("official class ids read without their offset", "barlab/generator/official_checkpoint.py",
        "convert_official_state", "state[\"embeddings.weight\"][CLASS_OFFSET:]",
        "state[\"embeddings.weight\"][CLASS_OFFSET - 1:-1]", CONVERTED),
    bug("official tokenizer's quantizer projection not reshaped", "barlab/tokenizer/official_checkpoint.py",
        "official_tokenizer_to_barlab", "value = value[:, :, None, None]", "value = value",
        T + "test_convert.py::test_full_size_official_tokenizer_converts_and_loads_strictly"),
    bug("a missing pretrained file is not refused", "barlab/pipeline/preflight.py", "check_pretrained_files",
        "if location is None or not os.path.exists(str(location)):", "if location is None:",
        T + "test_paper_tokenizer_smoke.py::test_a_missing_pretrained_file_is_refused_before_anything_is_built"),
    bug("discriminator sees unrounded fakes", "barlab/tokenizer/dino_discriminator.py", "discriminator_fake_input",
        "return torch.round((x + 1.0) * 127.5) / 127.5 - 1.0", "return x",
        T + "test_paper_losses.py::test_official_discriminator_step_hand_case"),
    bug("L2 term weighted by the L1 weight", "barlab/tokenizer/losses.py", "ReconstructionLoss.forward",
        "self.l2_weight * l2", "self.l1_weight * l2",
        COMPOSITION),
    # ------------------------------------------------------------------ FID, KID, IS, precision/recall
    bug("FID reference covariance scaled by n", "barlab/metrics/image_metrics.py", "ImageMetrics.set_reference",
        "sigma * (n - 1)", "sigma * n",
        T + "test_metric_math.py::test_fid_of_non_commuting_covariances_matches_scipy_sqrtm"),
    bug("real statistics with the biased covariance", "barlab/metrics/image_metrics.py",
        "ImageMetrics.real_statistics", "/ (n - 1)", "/ n",
        T + "test_metric_math.py::test_fid_of_non_commuting_covariances_matches_scipy_sqrtm"),
    bug("KID on random subsets one short of the sets", "barlab/metrics/image_metrics.py", "ImageMetrics.compute",
        "subset = min(self.kid_subset_size, real.shape[0], fake.shape[0])",
        "subset = min(self.kid_subset_size, real.shape[0], fake.shape[0]) - 1",
        T + "test_metric_math.py::test_kid_is_the_unbiased_polynomial_mmd_over_the_whole_sets"),
    bug("IS on the softmax of the softmax", "barlab/metrics/image_metrics.py", "ImageMetrics.compute",
        "score.update(logits)", "score.update(logits.softmax(dim=1))",
        T + "test_metric_math.py::test_inception_score_is_the_mean_over_splits_of_exp_mean_kl"),
    bug("IS in one split", "barlab/metrics/image_metrics.py", "ImageMetrics.compute",
        "max(1, min(self.is_splits, logits.shape[0] // 2))", "1",
        T + "test_metric_math.py::test_inception_score_is_the_mean_over_splits_of_exp_mean_kl"),
    bug("precision/recall radius counts the point itself", "barlab/metrics/precision_recall.py", "knn_radii",
        "dist.kthvalue(k + 1, dim=1)", "dist.kthvalue(k, dim=1)",
        T + "test_metric_math.py::test_precision_recall_by_hand_with_points_on_the_ball_surfaces",
        T + "test_metric_math.py::test_precision_recall_matches_brute_force_knn_balls"),
    bug("precision/recall balls open", "barlab/metrics/precision_recall.py", "coverage_share",
        "dist <= radii[None, :]", "dist < radii[None, :]",
        T + "test_metric_math.py::test_precision_recall_by_hand_with_points_on_the_ball_surfaces"),
]


# ---------------------------------------------------------------------- locating a symbol
class PatternError(ValueError):
    """The symbol or the pattern inside it cannot be found exactly once."""


def _defined_name(node: ast.AST) -> str | None:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id
    return None


def symbol_span(source: str, symbol: str) -> tuple[int, int]:
    """Character offsets ``(start, end)`` of the lines holding ``symbol`` (decorators included).

    ``symbol`` is a dotted path through classes and functions (``Class.method``, ``function.inner``) ending at
    a def, a class or a single-target assignment; each part must be defined exactly once at its level."""
    body: list[ast.stmt] = ast.parse(source).body
    node: ast.AST | None = None
    for part in symbol.split("."):
        found = [n for n in body if _defined_name(n) == part]
        if len(found) != 1:
            raise PatternError(f"{symbol}: {len(found)} definitions of {part!r} where one was expected")
        node = found[0]
        body = getattr(node, "body", [])
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    lines = source.splitlines(keepends=True)
    return sum(map(len, lines[:first - 1])), sum(map(len, lines[:node.end_lineno]))


def inject(source: str, symbol: str, old: str, new: str) -> str:
    """``source`` with ``old`` replaced by ``new`` inside ``symbol``; ``old`` must occur there exactly once."""
    start, end = symbol_span(source, symbol)
    count = source[start:end].count(old)
    if count != 1:
        raise PatternError(f"{old!r} occurs {count} times in {symbol}, not once")
    mutated = source[:start] + source[start:end].replace(old, new) + source[end:]
    try:
        ast.parse(mutated)
    except SyntaxError as err:
        raise PatternError(f"replacing {old!r} by {new!r} in {symbol} breaks the syntax: {err}") from None
    return mutated


# ---------------------------------------------------------------------- running the tests in a copy
PYTEST_ARGS = ("-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--timeout=600",
               "-W", "ignore::pytest.PytestAssertRewriteWarning")

# The plain way (--no-fork): one fresh interpreter per run, which refuses to go on unless ``barlab`` comes from
# the copy.
BOOT = ("import os, sys; root = os.path.realpath(sys.argv[1]); import barlab; "
        "where = os.path.realpath(barlab.__file__); "
        "assert where.startswith(root + os.sep), f'barlab imported from {where}, not from the copy {root}'; "
        "import pytest; sys.exit(pytest.main(sys.argv[2:]))")

# The default way: a server per worker imports the third-party packages once (torch, Lightning, ... take
# 5-15 s to import on a busy 2-core machine, longer than most of the tests) and forks a child per run. The
# server never imports barlab; each child puts its copy first on sys.path and in PYTHONPATH (for the processes
# a test starts), checks that ``barlab`` comes from there, and runs pytest with its output in a log file.
SERVER = r"""
import json, os, sys, traceback
for name in ("torch", "numpy", "scipy.linalg", "lightning", "lightning.pytorch", "torchmetrics",
             "torchmetrics.image.fid", "torchmetrics.image.kid", "torchmetrics.image.inception", "hydra",
             "hydra.utils", "omegaconf", "einops", "webdataset", "PIL.Image", "pytest"):
    try:
        __import__(name)
    except Exception:
        pass
assert not [m for m in sys.modules if m == "barlab" or m.startswith(("barlab.", "tests"))], "barlab pre-imported"
sys.stdout.flush()
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            root = os.path.realpath(job["copy"])
            os.chdir(root)
            sys.path.insert(0, root)
            os.environ["PYTHONPATH"] = root
            import barlab
            where = os.path.realpath(barlab.__file__)
            assert where.startswith(root + os.sep), f"barlab imported from {where}, not from the copy {root}"
            import pytest
            code = int(pytest.main(job["args"]))
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Runner:
    """Runs pytest on a copy: through a fork server (default) or in a fresh interpreter each time."""

    def __init__(self, fork: bool):
        self.fork = fork and hasattr(os, "fork")
        self._server: subprocess.Popen | None = None

    def close(self) -> None:
        if self._server is not None:
            self._server.stdin.close()
            self._server.wait(timeout=60)
            self._server = None

    def run(self, copy: Path, tests: tuple[str, ...]) -> tuple[int, str]:
        """``(pytest exit status, its output)``."""
        args = [*PYTEST_ARGS, *tests]
        if not self.fork:
            env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
            try:
                proc = subprocess.run([sys.executable, "-c", BOOT, str(copy), *args], cwd=copy, env=env,
                                      capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                return -9, "timed out"
            return proc.returncode, proc.stdout + proc.stderr
        if self._server is None:
            env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
            env.pop("PYTHONPATH", None)
            self._server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, text=True, env=env, cwd=tempfile.gettempdir(),
                                            start_new_session=True)
        log = copy / "pytest.log"
        self._server.stdin.write(json.dumps({"copy": str(copy), "log": str(log), "args": args}) + "\n")
        self._server.stdin.flush()
        # the import warm-up happens before the first answer: allow for it on top of the run's own limit
        ready, _, _ = select.select([self._server.stdout], [], [], RUN_TIMEOUT_S + 300)
        if not ready:                       # a run that hangs outside any test: stop the server and its child
            os.killpg(self._server.pid, signal.SIGKILL)
            self._server.wait()
            self._server = None
            return -9, "timed out"
        answer = self._server.stdout.readline()
        if not answer:
            raise RuntimeError(f"the test server stopped (exit {self._server.poll()})")
        return json.loads(answer)["rc"], log.read_text(errors="replace") if log.is_file() else ""


_local = threading.local()
_runners: list[Runner] = []
_runners_lock = threading.Lock()


def runner(fork: bool) -> Runner:
    """This worker thread's runner (one fork server per thread)."""
    if getattr(_local, "runner", None) is None:
        _local.runner = Runner(fork)
        with _runners_lock:
            _runners.append(_local.runner)
    return _local.runner


def make_copy(dest: Path) -> None:
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"))
        elif src.is_file():
            shutil.copy2(src, dest / name)


def summary(output: str) -> str:
    lines = [line for line in output.splitlines() if (" passed" in line or " failed" in line or " error" in line
                                                       or "no tests ran" in line) and " in " in line]
    if lines:
        return lines[-1].strip("= ")
    return (output.strip().splitlines() or ["no output"])[-1][:200]


def run_bug(item: Bug, fork: bool = True) -> tuple[str, str]:
    """``(verdict, detail)`` for one bug, in its own copy of the tree."""
    with tempfile.TemporaryDirectory(prefix="barlab-bug-") as tmp:
        copy = Path(tmp)
        make_copy(copy)
        target = copy / item.path
        try:
            target.write_text(inject(target.read_text(), item.symbol, item.old, item.new))
        except PatternError as err:
            return "PATTERN", str(err)
        code, output = runner(fork).run(copy, item.tests)
    verdict = {1: "caught", 0: "MISSED"}.get(code, "ERROR")
    return verdict, f"{summary(output)} (exit {code})"


def run_baseline(tests: tuple[str, ...], fork: bool = True) -> tuple[str, str]:
    """Every named test on an unmodified copy: ``("ok" or "FAILED", detail)``."""
    with tempfile.TemporaryDirectory(prefix="barlab-baseline-") as tmp:
        make_copy(Path(tmp))
        code, output = runner(fork).run(Path(tmp), tests)
    return ("ok", summary(output)) if code == 0 else ("FAILED", f"{summary(output)} (exit {code})\n{output[-3000:]}")


def check_patterns(bugs: list[Bug]) -> dict[str, str]:
    """The bugs whose pattern is not found exactly once in its symbol of the working tree: name -> why."""
    problems = {}
    for item in bugs:
        try:
            inject((ROOT / item.path).read_text(), item.symbol, item.old, item.new)
        except (PatternError, OSError) as err:
            problems[item.name] = str(err)
    return problems


def light_baseline(tests: tuple[str, ...]) -> tuple[str, ...]:
    """One test per test file: the first that names a single test (``file::name``), else the file itself."""
    chosen: dict[str, str] = {}
    for test in tests:
        file = test.split("::")[0]
        if file not in chosen or ("::" in test and "::" not in chosen[file]):
            chosen[file] = test
    return tuple(chosen.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="bugs run at the same time (default 2)")
    parser.add_argument("--only", action="append", default=None,
                        help="run only the bugs whose name contains this text (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the bugs and their tests, run nothing")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run of every named test on a clean copy")
    parser.add_argument("--light-baseline", action="store_true",
                        help="the baseline runs one named test per test file (a single test where one is named): "
                             "the copy works for every file; for a suite that runs every named test itself")
    parser.add_argument("--no-fork", action="store_true", help="a fresh interpreter per run instead of a fork server")
    args = parser.parse_args(argv)
    names = [b.name for b in BUGS]
    if len(set(names)) != len(names):
        raise SystemExit("two bugs share a name")
    bugs = [b for b in BUGS if args.only is None or any(o.lower() in b.name.lower() for o in args.only)]
    if args.list:
        for item in bugs:
            print(f"{item.name}  [{item.path}::{item.symbol}]  {' '.join(item.tests)}")
        return 0
    start = time.time()
    problems = check_patterns(bugs)
    runnable = [b for b in bugs if b.name not in problems]
    union = tuple(dict.fromkeys(t for b in runnable for t in b.tests))
    if args.light_baseline:
        union = light_baseline(union)
    caught, base_verdict = 0, "ok"
    fork = not args.no_fork
    try:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            baseline = None if args.no_baseline else pool.submit(run_baseline, union, fork)
            results = pool.map(lambda item: run_bug(item, fork), runnable)   # in order, each printed when known
            for item in bugs:
                verdict, detail = ("PATTERN", problems[item.name]) if item.name in problems else next(results)
                caught += verdict == "caught"
                print(f"{verdict:7s} {item.name} [{item.symbol}]: {detail}", flush=True)
            if baseline is not None:
                base_verdict, base_detail = baseline.result()
                print(f"baseline {base_verdict}: {base_detail}", file=sys.stderr)
    finally:
        for each in _runners:
            each.close()
    print(f"{caught} of {len(bugs)} injected bugs caught")
    print(f"{time.time() - start:.0f} s, {max(1, args.jobs)} at a time", file=sys.stderr)
    baseline_ok = base_verdict == "ok"
    return 0 if caught == len(bugs) and baseline_ok else 1


if __name__ == "__main__":
    sys.exit(main())
