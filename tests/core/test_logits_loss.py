"""The fused loss on logits against the reference ``masked_causal_lm_loss``: outputs and gradients."""

import pytest
import torch
import torch.nn.functional as F
from loss_cases import assert_same_mask, case_labels
from torch.utils._python_dispatch import TorchDispatchMode

from slowed_plugin.core import kernels
from slowed_plugin.core import logits_loss as fused_loss
from slowed_plugin.core.kernels import KERNELS
from slowed_plugin.core.logits_loss import fused_masked_causal_lm_loss
from slowed_plugin.core.masking import kept_token_count, mask_low_entropy_targets, token_entropy
from slowed_plugin.trainer.reference_loss import masked_causal_lm_loss

# Per dtype: (loss, gradient) tolerances. The loss is float32 in both; a bf16 gradient may differ by
# one bf16 rounding step where the float32 values differ in their last bits.
TOL = {
    torch.float32: (dict(rtol=1e-5, atol=1e-6), dict(rtol=1e-4, atol=1e-7)),
    torch.bfloat16: (dict(rtol=1e-5, atol=1e-5), dict(rtol=1.6e-2, atol=1e-5)),
}
VOCAB = 37


def make_case(shape, dtype, seed=0, ties=True):
    batch, width = shape
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, width, VOCAB, generator=g) * 3
    labels = case_labels(g, batch, width, VOCAB)
    if ties and width > 8:
        logits[0, 3:9] = logits[0, 2]  # equal entropies: ties broken by position
    return logits.to(dtype), labels


def both(logits, labels, ratio, scope, **kwargs):
    """(loss, stats, grad) of the reference and of the fused loss on copies of the same logits."""
    out = []
    for fn in (masked_causal_lm_loss, fused_masked_causal_lm_loss):
        z = logits.clone().requires_grad_(True)
        loss, stats = fn(z, labels, ratio, scope, **kwargs)
        loss.backward()
        out.append((loss.detach(), stats, z.grad))
    return out


def assert_same(ref, ours, dtype):
    (loss_r, stats_r, grad_r), (loss_o, stats_o, grad_o) = ref, ours
    loss_tol, grad_tol = TOL[dtype]
    assert loss_o.dtype == loss_r.dtype
    torch.testing.assert_close(loss_o, loss_r, **loss_tol)
    assert grad_o.dtype == grad_r.dtype
    torch.testing.assert_close(grad_o, grad_r, **grad_tol)
    assert_same_mask(stats_o, stats_r)
    if stats_r is None:
        return
    torch.testing.assert_close(stats_o.threshold_sum, stats_r.threshold_sum, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats_o.entropy_sum, stats_r.entropy_sum, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(1, 9), (3, 41)], ids=["1x9", "3x41"])
@pytest.mark.parametrize("scope", ["sequence", "batch"])
@pytest.mark.parametrize("num_items", [None, 23, "tensor"])
def test_matches_reference(kernels, dtype, shape, scope, num_items, monkeypatch):
    monkeypatch.setattr(fused_loss, "default_chunk_rows", lambda vocab: 16)  # several chunks and a partial one
    logits, labels = make_case(shape, dtype)
    if num_items == "tensor":
        num_items = kept_token_count(labels, 0.3, scope) * 2
    ref, ours = both(logits, labels, 0.3, scope, num_items_in_batch=num_items)
    assert_same(ref, ours, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_shift_labels_and_packed_sequences(kernels, dtype):
    logits, labels = make_case((2, 30), dtype, seed=1)
    position_ids = torch.tensor([list(range(12)) + list(range(18)), list(range(7)) + list(range(23))])
    ref, ours = both(logits, labels, 0.4, "sequence", position_ids=position_ids)
    assert_same(ref, ours, dtype)
    shifted = F.pad(labels[:, 1:], (0, 1), value=-100)
    ref, ours = both(logits, None, 0.4, "sequence", position_ids=position_ids, shift_labels=shifted)
    assert_same(ref, ours, dtype)


def test_ties_drop_the_same_positions(kernels):
    logits = torch.randn(1, 20, VOCAB).repeat(1, 1, 1)
    logits[0, :] = logits[0, 0]  # every entropy equal
    labels = torch.randint(0, VOCAB, (1, 20))
    masked_ref, _ = mask_low_entropy_targets(logits, labels, 0.5, "sequence")
    z = logits.clone().requires_grad_(True)
    loss, stats = fused_masked_causal_lm_loss(z, labels, 0.5, "sequence")
    loss.backward()
    dropped = masked_ref == -100
    assert int(stats.dropped) == int(dropped.sum()) == 9  # floor(0.5 * 19), the earliest positions
    row_grad = z.grad[:, :-1].abs().sum(-1)
    assert torch.equal(row_grad == 0, dropped)


def test_masked_and_ignored_rows_get_exact_zero_gradient(kernels):
    logits, labels = make_case((3, 41), torch.float32)
    z = logits.clone().requires_grad_(True)
    loss, _ = fused_masked_causal_lm_loss(z, labels, 0.5, "batch")
    loss.backward()
    masked, _ = mask_low_entropy_targets(logits, labels, 0.5, "batch")
    kept = F.pad(masked != -100, (0, 1), value=False)
    row_grad = z.grad.abs().sum(-1)
    assert torch.all(row_grad[~kept] == 0) and torch.all(row_grad[kept] > 0)


def test_all_ignored_batch(kernels):
    logits = torch.randn(2, 5, VOCAB)
    labels = torch.full((2, 5), -100)
    for num_items in (None, torch.tensor(0), 0):
        ref, ours = both(logits, labels, 0.5, "sequence", num_items_in_batch=num_items)
        assert ours[0].item() == 0.0 and torch.equal(ours[2], torch.zeros_like(logits))
        assert_same(ref, ours, torch.float32)


def test_ratio_zero_is_the_reference_bit_for_bit():
    logits, labels = make_case((2, 12), torch.bfloat16)
    for num_items in (None, torch.tensor(7)):
        (loss_r, stats_r, grad_r), (loss_o, stats_o, grad_o) = both(
            logits, labels, 0.0, "sequence", num_items_in_batch=num_items
        )
        assert stats_r is None and stats_o is None
        assert torch.equal(loss_r, loss_o) and torch.equal(grad_r, grad_o)


@pytest.mark.parametrize("ratio", [0.0, 0.3])
def test_extra_holds_trl_metrics(kernels, ratio):
    logits, labels = make_case((3, 20), torch.float32)
    _, stats, extra = fused_masked_causal_lm_loss(logits, labels, ratio, "sequence", return_extra=True)
    targets, scored = labels[:, 1:], logits[:, :-1]
    candidates = targets != -100
    assert int(extra["num_valid_tokens"]) == int(candidates.sum())
    torch.testing.assert_close(extra["entropy_sum"], token_entropy(scored)[candidates].sum(), rtol=1e-5, atol=1e-4)
    assert int(extra["num_correct_tokens"]) == int(((scored.argmax(-1) == targets) & candidates).sum())


def test_nan_logits_and_bad_labels_raise(kernels):
    logits, labels = make_case((2, 12), torch.float32)
    bad = logits.clone()
    bad[0, 5, 3] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        fused_masked_causal_lm_loss(bad, labels, 0.3, "sequence")
    # NaN on a position whose target is ignored is not a training target: no error, as the reference.
    bad = logits.clone()
    bad[0, 0, 3] = float("nan")
    fused_masked_causal_lm_loss(bad, labels, 0.3, "sequence")
    labels[0, 6] = VOCAB
    with pytest.raises(ValueError, match="outside the vocabulary"):
        fused_masked_causal_lm_loss(logits, labels, 0.3, "sequence")


class _LargestFloat32(TorchDispatchMode):
    """Records the largest float32 tensor any op produces."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.largest = max(self.largest, t.numel())
        return out


def test_no_float32_copy_of_bf16_logits(monkeypatch):
    """Only one chunk of rows is ever upcast (eager kernels, so every temporary is visible)."""
    monkeypatch.setattr(KERNELS, "compile", False)
    logits, labels = make_case((4, 64), torch.bfloat16)
    z = logits.requires_grad_(True)
    with _LargestFloat32() as mode:
        loss, _ = fused_masked_causal_lm_loss(z, labels, 0.3, "sequence", chunk_rows=16)
        loss.backward()
    assert z.grad.dtype == torch.bfloat16
    assert mode.largest <= 16 * VOCAB < z.numel()


def test_compile_failure_falls_back_to_eager(monkeypatch, caplog):
    fresh = kernels._Kernels()

    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(kernels, "KERNELS", fresh)
    logits, labels = make_case((2, 12), torch.float32)
    expected, _ = masked_causal_lm_loss(logits, labels, 0.3, "sequence")
    with caplog.at_level("WARNING", logger="slowed_plugin"):
        loss, _ = fused_masked_causal_lm_loss(logits, labels, 0.3, "sequence")
    torch.testing.assert_close(loss, expected)
    assert fresh.failed and "no C++ compiler" in fresh.failed
    assert "eager kernels" in caplog.text
    assert kernels.warmup(VOCAB) == 0.0  # nothing left to compile


def test_a_compile_error_keeps_its_cause_in_one_line():
    # Inductor's shape: where it failed first, the compiler's own error last.
    err = RuntimeError(
        "backend='inductor' raised:\nCppCompileError: C++ compile error\n\n  fatal error: Python.h: missing"
    )
    summary = kernels.compile_error_summary(err)
    assert "\n" not in summary
    assert summary == "RuntimeError: backend='inductor' raised: ... fatal error: Python.h: missing"
    assert kernels.compile_error_summary(RuntimeError("no C++ compiler")) == "RuntimeError: no C++ compiler"
    assert kernels.compile_error_summary(RuntimeError()) == "RuntimeError"
