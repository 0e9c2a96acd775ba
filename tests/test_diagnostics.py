"""The generator's diagnostics on cases whose answer is known: the first-step accuracy of a head that
predicts a fixed pattern, the per-step accuracy of an unmasking order chosen by hand, the splice of
generated and real AR steps, and the wiring into a real (tiny) generator."""

from __future__ import annotations

import math

import pytest
import torch

from barlab.generator import ARBackbone, BitwiseHead, MBMHead
from barlab.generator.diagnostics import (
    first_step_accuracy,
    guidance_per_row,
    splice,
    splice_points,
    teacher_forced,
    unmasking_step_accuracy,
)
from barlab.generator.guidance import guidance_scale
from barlab.generator.heads.mbm import MASK
from barlab.generator.token_shuffle import shuffle
from barlab.pipeline.diagnostics import diagnose, splice_class_accuracy, take_sequences


def pattern_bitwise_head(pattern: list[int], cond_dim: int = 4) -> BitwiseHead:
    """A bitwise head whose argmax is ``pattern`` for every condition (zero weights, biases ±1)."""
    head = BitwiseHead(cond_dim, len(pattern))
    with torch.no_grad():
        head.net.weight.zero_()
        bias = torch.tensor([[0.0, 1.0] if b else [1.0, 0.0] for b in pattern]).flatten()
        head.net.bias.copy_(bias)
    return head


def fixed_logit_mbm(pred: list[int], confidence: list[float]) -> MBMHead:
    """An MBM head whose forward ignores its input: bit i predicts ``pred[i]`` with margin ``confidence[i]``."""
    k = len(pred)
    head = MBMHead(cond_dim=4, bits_per_step=k, width=8, depth=1, allocation=(1, 1, k - 2))
    logits = torch.zeros(k, 2)
    for i, (b, c) in enumerate(zip(pred, confidence)):
        logits[i, b] = c
    head.forward = lambda bits, cond, ratio: logits.expand(bits.shape[0], k, 2).clone()
    return head


def test_first_step_accuracy_of_a_fixed_pattern():
    head = pattern_bitwise_head([1, 0, 1, 1])
    targets = torch.tensor([[1, 0, 1, 1], [1, 1, 1, 0], [0, 1, 0, 0]]).float()   # 4, 2 and 0 of 4 right
    assert first_step_accuracy(head, torch.randn(3, 4), targets) == pytest.approx(6 / 12)


def test_mbm_first_step_is_one_argmax_from_all_masked():
    torch.manual_seed(0)
    head = MBMHead(cond_dim=8, bits_per_step=6, width=16, depth=2).eval()
    for p in head.parameters():
        p.data.normal_(0, 0.3)
    cond = torch.randn(5, 8)
    expected = head(torch.full((5, 6), MASK), cond, torch.ones(5)).argmax(-1).float()
    assert torch.equal(head.first_step_bits(cond), expected)


def test_unmasking_step_accuracy_follows_the_confidence_order():
    # confidence: bit 0 first, then bit 1, then bits 2 and 3 together (allocation 1, 1, 2)
    head = fixed_logit_mbm(pred=[1, 0, 1, 1], confidence=[4.0, 3.0, 2.0, 1.0])
    targets = torch.tensor([[1, 1, 1, 0]]).float().repeat(3, 1)
    out = unmasking_step_accuracy(head, torch.zeros(3, 4), None, targets, temperature=0.0)
    assert out["step_accuracy"] == [1.0, 0.0, 0.5]
    assert out["step_bits"] == [1.0, 1.0, 2.0]
    assert out["accuracy"] == pytest.approx(0.5)


def test_sample_with_steps_draws_what_sample_draws():
    torch.manual_seed(1)
    head = MBMHead(cond_dim=8, bits_per_step=16, width=16, depth=1).eval()
    for p in head.parameters():
        p.data.normal_(0, 0.3)
    cond, uncond = torch.randn(7, 8), torch.randn(7, 8)
    plain = head.sample(cond, uncond, 3.0, 1.5, torch.Generator().manual_seed(4))
    bits, step = head.sample_with_steps(cond, uncond, 3.0, 1.5, torch.Generator().manual_seed(4))
    assert torch.equal(plain, bits)
    counts = [(step == s).sum(dim=1) for s in range(len(head.allocation))]
    for s, n in enumerate(head.allocation):                       # (2, 3, 5, 6) bits per step, every token
        assert torch.equal(counts[s], torch.full((7,), n))


def test_one_step_heads_report_one_step():
    head = pattern_bitwise_head([1, 1, 0])
    out = unmasking_step_accuracy(head, torch.zeros(2, 4), None, torch.ones(2, 3), temperature=0.0)
    assert out["step_accuracy"] == [pytest.approx(2 / 3)] and out["step_bits"] == [3.0]


def test_guidance_per_row_is_the_samplers_schedule():
    rows = guidance_per_row(batch=2, length=4, guidance=3.0, schedule="linear")
    per_step = [guidance_scale(t, 4, 3.0, "linear") for t in range(4)]
    assert rows.tolist() == pytest.approx(per_step * 2)
    assert per_step[0] == 1.0 and per_step[-1] > per_step[1]


def test_teacher_forced_is_the_backbone_on_the_true_context():
    torch.manual_seed(0)
    backbone = ARBackbone(bits_per_step=4, grid=(2, 2), num_classes=3, width=16, depth=1, heads=2, cond_dim=8).eval()
    steps, labels = torch.randint(0, 2, (2, 4, 4)).float(), torch.tensor([0, 2])
    cond = teacher_forced(backbone, steps, labels)
    assert cond.shape == (8, 8)
    assert torch.allclose(cond[4:8], backbone(steps, labels)[1])   # (b l) order


def test_splice_takes_the_first_j_generated_steps():
    gen, real = torch.ones(2, 4, 3), torch.zeros(2, 4, 3)
    assert torch.equal(splice(gen, real, 0), real) and torch.equal(splice(gen, real, 4), gen)
    mixed = splice(gen, real, 1)
    assert mixed[:, 0].eq(1).all() and mixed[:, 1:].eq(0).all()
    with pytest.raises(ValueError, match="j must be"):
        splice(gen, real, 5)
    assert splice_points(4, 8) == [0, 1, 2, 3, 4]
    assert splice_points(64, 4) == [0, 16, 32, 48, 64]


class OnesSampler:
    """Samples every bit as 1: generated steps are all ones, real ones all zeros below."""

    def sample(self, labels, **kwargs):
        return torch.ones(labels.shape[0], 4, 1)


class PixelTokenizer:
    """decode_bits: a 2 x 2 image whose pixel i is token i (0 -> -1, 1 -> +1)."""

    def decode_bits(self, bits, grid):
        return (bits[..., 0] * 2 - 1).reshape(-1, 1, *grid)


def test_splice_class_accuracy_locates_the_step_that_loses_the_class():
    labels = torch.zeros(6, dtype=torch.long)
    real = torch.zeros(6, 4, 1)
    # a "classifier" that is right while the last token is real, then while at most one token is generated
    last_real = lambda images: (images.reshape(6, 4)[:, -1] > 127).long()        # noqa: E731
    at_most_one = lambda images: ((images > 127).reshape(6, 4).sum(1) > 1).long()  # noqa: E731
    args = (OnesSampler(), PixelTokenizer(), (2, 2), 1, {}, real, labels)
    out = splice_class_accuracy(*args, last_real, max_points=8, generator=None)
    assert out == {f"diag_splice{j}_class_acc": 1.0 if j < 4 else 0.0 for j in range(5)}
    out = splice_class_accuracy(*args, at_most_one, max_points=8, generator=None)
    assert [out[f"diag_splice{j}_class_acc"] for j in range(5)] == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_diagnose_a_tiny_generator():
    torch.manual_seed(0)
    grid, p, k = (4, 4), 2, 2
    backbone = ARBackbone(bits_per_step=k * p * p, grid=(2, 2), num_classes=3, width=16, depth=1, heads=2,
                          cond_dim=8).eval()
    head = MBMHead(cond_dim=8, bits_per_step=k * p * p, width=16, depth=1, allocation=(2, 2, 4)).eval()
    for param in [*head.parameters(), *backbone.parameters()]:   # off the zero-initialised outputs
        param.data.normal_(0, 1.0)
    batches = [{"bits": torch.randint(0, 2, (5, 16, k)).float(), "label": torch.randint(0, 3, (5,))}] * 3
    bits, labels = take_sequences(batches, 12)
    assert bits.shape == (12, 16, k) and labels.shape == (12,)

    class Tok:
        def decode_bits(self, raster, grid):
            return raster.mean(-1).reshape(-1, 1, *grid) * 2 - 1

    out = diagnose(backbone, head, Tok(), grid, p, {"guidance": 2.0, "temperature": 1.0}, bits, labels,
                   lambda images: torch.zeros(images.shape[0], dtype=torch.long), splice_samples=6)
    assert [out[f"diag_unmask_step{s}_bits"] for s in range(3)] == [2.0, 2.0, 4.0]
    assert "diag_unmask_step3_acc" not in out
    assert sorted(k for k in out if k.startswith("diag_splice")) == [f"diag_splice{j}_class_acc" for j in range(5)]
    # the classifier says class 0 for everything: the accuracy is the share of label 0, whatever j
    share = float((labels[:6] == 0).float().mean())
    assert all(out[f"diag_splice{j}_class_acc"] == pytest.approx(share) for j in range(5))
    for key in ("diag_first_step_acc_label", "diag_first_step_acc_null", "diag_sampled_bit_acc"):
        assert 0.0 <= out[key] <= 1.0 and not math.isnan(out[key])
    assert out["diag_sequences"] == 12
    # the first step's accuracies by hand: the head on the teacher-forced conditions, true and null label
    steps = shuffle(bits, grid, p)
    targets = steps.reshape(-1, k * p * p)
    by_hand = {name: first_step_accuracy(head, teacher_forced(backbone, steps, lab), targets,
                                         generator=torch.Generator().manual_seed(0))
               for name, lab in (("label", labels), ("null", torch.full_like(labels, 3)))}
    assert by_hand["label"] != by_hand["null"]
    assert out["diag_first_step_acc_label"] == pytest.approx(by_hand["label"], abs=1e-7)
    assert out["diag_first_step_acc_null"] == pytest.approx(by_hand["null"], abs=1e-7)
