"""Check that the tests can fail: inject one known bug at a time into barlab, run the test meant to
catch it, restore the file, and print ``caught`` or ``MISSED`` per bug.

    .venv/bin/python scripts/inject_bugs.py      # about 1 min; leaves the tree as it found it

Each entry: what the bug is, the file, the exact line replaced, its buggy version, the tests to run.
Run it on a clean tree (it rewrites files in place while a test runs).
"""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = [
    ("binary FSQ STE gradient doubled", "barlab/tokenizer/quantizers/binary_fsq.py",
     "return hard + (soft - soft.detach())", "return hard + 2 * (soft - soft.detach())",
     ["tests/test_quantizers.py::test_binary_fsq_ste_gradient_is_tanh_derivative"]),
    ("FSQ STE gradient halved", "barlab/tokenizer/quantizers/fsq.py",
     "rounded = torch.round(bounded).detach() + (bounded - bounded.detach())",
     "rounded = torch.round(bounded).detach() + 0.5 * (bounded - bounded.detach())",
     ["tests/test_quantizers.py::test_fsq_ste_gradient_is_the_bound_derivative_over_the_half_width"]),
    ("CFG sign flipped", "barlab/generator/heads/base.py",
     "mixed = uncond_logits + g * (cond_logits - uncond_logits)",
     "mixed = uncond_logits - g * (cond_logits - uncond_logits)",
     ["tests/test_sampling.py"]),
    ("linear CFG schedule off by a factor", "barlab/generator/guidance.py",
     "return 1.0 + (g - 1.0) * frac", "return 1.0 + (g - 1.0) * frac * 0.5",
     ["tests/test_sampling.py::test_sampler_hands_the_head_the_scheduled_guidance_and_null_class_rows"]),
    ("MBM temperature not annealed", "barlab/generator/heads/mbm.py",
     "tau = temperature * (1 - s / num_steps)", "tau = temperature",
     ["tests/test_sampling.py::test_mbm_sampler_keeps_the_most_confident_bits_with_decaying_temperature"]),
    ("flipped copy flips vertically", "barlab/data/pretokenize.py",
     "views = [x, x.flip(-1)] if flip else [x]", "views = [x, x.flip(-2)] if flip else [x]",
     ["tests/test_generator_pipeline.py::test_pretokenization_stores_original_and_flip_and_reads_back"]),
    ("PSNR data range 2", "barlab/lightning/tokenizer_module.py",
     "PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))", "PeakSignalNoiseRatio(data_range=2.0, dim=(1, 2, 3))",
     ["tests/test_training_parts.py::test_tokenizer_validation_ssim_psnr_and_bit_usage_by_hand"]),
    ("label drop at twice p", "barlab/lightning/generator_module.py",
     'self.backbone.drop_labels(batch["label"], self.label_drop)',
     'self.backbone.drop_labels(batch["label"], 2 * self.label_drop)',
     ["tests/test_training_parts.py::test_training_step_drops_labels_at_rate_p_and_uses_random_orders_early"]),
    ("targets in raster order", "barlab/lightning/generator_module.py",
     "targets = bits if order is None else bits.gather(1, order[..., None].expand_as(bits))", "targets = bits",
     ["tests/test_training_parts.py::test_generator_targets_are_the_bits_in_the_sampled_order"]),
    ("perceptual distance summed over pixels, not averaged", "barlab/tokenizer/perceptual.py",
     "dist = sum((a - b).pow(2).sum(dim=1).mean(dim=(1, 2)) for a, b in zip(fx, fy))",
     "dist = sum((a - b).pow(2).sum(dim=1).sum(dim=(1, 2)) for a, b in zip(fx, fy))",
     ["tests/test_tokenizer_components.py::test_vgg_perceptual_loss_exact_value_with_hand_built_weights"]),
    ("skip counted twice across workers", "barlab/data/loader_stages.py",
     "self._shared.value += 1", "self._shared.value += 2",
     ["tests/test_data.py::test_skip_count_is_exact_with_two_loader_workers"]),
    ("bit statistics never reset", "barlab/lightning/tokenizer_module.py",
     "            self.val_bits.reset()", "            pass",
     ["tests/test_training_parts.py::test_tokenizer_bit_statistics_cover_only_the_latest_validation"]),
    ("skip counter pickled with its shared Value", "barlab/data/loader_stages.py",
     '            state["_shared"] = None', "            pass",
     ["tests/test_data.py::test_skip_counter_pickles_without_its_shared_total_outside_worker_start"]),
    ("grid best point across allocations", "barlab/analysis/grid.py",
     "return [k for k in GENERATOR_KEYS + PLAN_KEYS if k in frame]", "return [k for k in GENERATOR_KEYS if k in frame]",
     ["tests/test_grid_table.py::test_allocation_overrides_never_join_the_default_grid"]),
    ("progress line every step", "barlab/lightning/callbacks/progress_log.py",
     "if not self.active or step == self.start_step or step % self.every_n_steps:", "if not self.active:",
     ["tests/test_logging.py::test_progress_log_writes_a_line_every_n_steps_when_no_bar_is_drawn"]),
]
out = []
for name, rel, old, new, tests in MUTANTS:
    path = ROOT / rel
    text = path.read_text()
    if text.count(old) != 1:
        out.append((name, f"pattern count {text.count(old)}"))
        print(f"PATTERN {name}: the line to replace occurs {text.count(old)} times")
        continue
    path.write_text(text.replace(old, new))
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                              cwd=ROOT, capture_output=True, text=True, timeout=900)
    finally:
        path.write_text(text)
    verdict = "caught" if proc.returncode != 0 else "MISSED"
    tail = [line for line in proc.stdout.splitlines() if "passed" in line or "failed" in line][-1:]
    out.append((name, verdict, tests, tail))
    print(f"{verdict:7s} {name}: {tail}", flush=True)
missed = [entry for entry in out if entry[1] != "caught"]
print(f"{len(out) - len(missed)} of {len(out)} injected bugs caught")
sys.exit(1 if missed else 0)
