"""Low-Entropy Masking against a plain-loop reference, property tests, and transformers' own loss."""

import math
from collections import defaultdict
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from slowed_plugin.core.masking import (
    kept_token_count,
    mask_low_entropy_targets,
    num_masked,
    select_low_entropy,
    target_segments,
    token_entropy,
)
from slowed_plugin.trainer.reference_loss import masked_causal_lm_loss


def reference_dropped(entropy, candidates, ratio, scope, position_ids=None):
    """Loops: group the candidates by scope, sort by (entropy, position), drop floor(k * n) of each."""
    rows, width = candidates.shape
    groups = defaultdict(list)
    for b in range(rows):
        for t in range(width):
            if not candidates[b, t]:
                continue
            if scope == "batch":
                key = 0
            elif position_ids is None:
                key = b
            else:  # the example of target t is that of token t + 1
                key = (b, int((position_ids[b, : t + 2] == 0).sum()))
            groups[key].append((float(entropy[b, t]), b, t))
    dropped = torch.zeros_like(candidates)
    for items in groups.values():
        items.sort()
        for _, b, t in items[: math.floor(ratio * len(items) + 1e-9)]:
            dropped[b, t] = True
    return dropped


def test_entropy_matches_definition():
    logits = torch.randn(3, 5, 17, dtype=torch.float64)
    p = logits.softmax(-1)
    expected = -(p * p.log()).sum(-1)
    got = token_entropy(logits)
    assert got.dtype == torch.float32 and not got.requires_grad
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def test_entropy_in_chunks_and_bf16():
    logits = torch.randn(2100, 33)
    torch.testing.assert_close(token_entropy(logits), token_entropy(logits.double()).float())
    assert token_entropy(logits.bfloat16()).dtype == torch.float32


def test_floor_count_is_exact_at_float_edges():
    n = torch.tensor([100, 10, 7, 0, 3])
    assert num_masked(n, 0.29).tolist() == [29, 2, 2, 0, 0]
    assert num_masked(torch.tensor([10]), 0.7).tolist() == [7]


def test_floor_count_just_below_one_leaves_a_target():
    """Issue 14: the float tolerance that rescued 0.29 * 100 turned (1 - 1e-12) * 10 into 10, masking every target."""
    assert num_masked(torch.tensor([10, 1000]), 1 - 1e-12).tolist() == [9, 999]
    assert num_masked(torch.tensor([100]), 0.29).tolist() == [29]


@settings(max_examples=300, deadline=None)
@given(
    ratio=st.one_of(
        st.floats(min_value=0, max_value=1, exclude_max=True),  # any float below 1
        st.integers(0, 10**9 - 1).map(lambda p: p / 10**9),  # ratios as people write them, up to 9 decimals
        st.integers(1, 15).map(lambda d: 1 - 10.0**-d),  # just below 1
    ),
    counts=st.lists(st.integers(0, 10**7), min_size=1, max_size=6),
)
def test_floor_count_is_the_exact_floor_of_the_written_ratio(ratio, counts):
    """floor(k * n) with k the decimal the ratio is written as (repr): 0.29 is 29/100."""
    exact = Fraction(repr(ratio))
    expected = [math.floor(exact * n) for n in counts]
    assert num_masked(torch.tensor(counts), ratio).tolist() == expected


@st.composite
def masking_cases(draw):
    rows = draw(st.integers(1, 4))
    width = draw(st.integers(1, 12))
    # Few distinct entropy values, so ties are the rule rather than the exception.
    values = draw(st.lists(st.sampled_from([0.0, 0.0, 0.5, 1.0, 2.0]), min_size=rows * width, max_size=rows * width))
    entropy = torch.tensor(values, dtype=torch.float32).reshape(rows, width)
    candidates = torch.tensor(draw(st.lists(st.booleans(), min_size=rows * width, max_size=rows * width))).reshape(
        rows, width
    )
    if draw(st.booleans()):
        candidates[0] = False  # an all-ignored row
    ratio = draw(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 0.99]))
    scope = draw(st.sampled_from(["batch", "sequence"]))
    position_ids = None
    if scope == "sequence" and draw(st.booleans()):
        restarts = torch.tensor(draw(st.lists(st.booleans(), min_size=rows * (width + 1), max_size=rows * (width + 1))))
        restarts = restarts.reshape(rows, width + 1)
        restarts[:, 0] = True
        position_ids = torch.zeros(rows, width + 1, dtype=torch.long)
        for b in range(rows):
            for t in range(1, width + 1):
                position_ids[b, t] = 0 if restarts[b, t] else position_ids[b, t - 1] + 1
    return entropy, candidates, ratio, scope, position_ids


@settings(max_examples=300, deadline=None)
@given(masking_cases())
def test_selection_matches_reference(case):
    entropy, candidates, ratio, scope, position_ids = case
    segments = target_segments(candidates, scope, position_ids)
    got = select_low_entropy(entropy, candidates, ratio, segments)
    expected = reference_dropped(entropy, candidates, ratio, scope, position_ids)
    assert torch.equal(got, expected)
    assert not (got & ~candidates).any()  # only candidates are ever dropped
    labels = torch.where(candidates, 1, -100)
    labels = F.pad(labels, (1, 0), value=-100)  # unshifted labels whose targets are `candidates`
    assert int(kept_token_count(labels, ratio, scope, position_ids)) == int(candidates.sum() - got.sum())


def test_exact_count_with_all_entropies_equal():
    entropy = torch.zeros(1, 10)
    candidates = torch.ones(1, 10, dtype=torch.bool)
    dropped = select_low_entropy(entropy, candidates, 0.3, target_segments(candidates, "batch"))
    assert dropped.tolist() == [[True, True, True] + [False] * 7]  # ties go to the earlier positions


def test_packed_segments_follow_position_ids():
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 2, 3]])
    segments = target_segments(torch.zeros(1, 6), "sequence", position_ids)
    # targets 0-1 are tokens 1-2 (first example); targets 2-5 are tokens 3-6 (second example)
    assert segments[0, :2].unique().numel() == 1 and segments[0, 2:].unique().numel() == 1
    assert segments[0, 0] != segments[0, 2]


def _logits_and_labels(seed=0, rows=3, width=9, vocab=11):
    torch.manual_seed(seed)
    logits = torch.randn(rows, width, vocab) * 3
    labels = torch.randint(0, vocab, (rows, width))
    labels[:, :2] = -100  # a prompt
    labels[1, 6:] = -100  # padding
    return logits, labels


def test_masked_loss_is_mean_ce_over_kept_targets():
    logits, labels = _logits_and_labels()
    loss, stats = masked_causal_lm_loss(logits, labels, 0.4, "sequence")
    targets = labels[:, 1:]
    candidates = targets != -100
    dropped = reference_dropped(token_entropy(logits[:, :-1]), candidates, 0.4, "sequence")
    kept = candidates & ~dropped
    ce = F.cross_entropy(logits[:, :-1][kept], targets[kept], reduction="mean")
    torch.testing.assert_close(loss, ce)
    assert int(stats.dropped) == int(dropped.sum()) and int(stats.candidates) == int(candidates.sum())


def test_masked_tokens_get_no_gradient():
    logits, labels = _logits_and_labels()
    logits.requires_grad_(True)
    loss, _ = masked_causal_lm_loss(logits, labels, 0.5, "batch")
    loss.backward()
    masked, _ = mask_low_entropy_targets(logits.detach(), labels, 0.5, "batch")
    candidates = labels[:, 1:] != -100
    dropped = candidates & (masked == -100)
    row_grad = logits.grad[:, :-1].abs().sum(-1)
    assert dropped.sum() > 0
    assert torch.all(row_grad[dropped] == 0)
    assert torch.all(row_grad[candidates & ~dropped] > 0)


def test_num_items_in_batch_divides_the_sum():
    logits, labels = _logits_and_labels()
    mean, _ = masked_causal_lm_loss(logits, labels, 0.3, "sequence")
    kept = kept_token_count(labels, 0.3, "sequence")
    summed, _ = masked_causal_lm_loss(logits, labels, 0.3, "sequence", num_items_in_batch=kept * 2)
    torch.testing.assert_close(summed * 2, mean)


def test_all_ignored_batch_gives_finite_zero_loss_with_gradient_path():
    logits = torch.randn(2, 4, 7, requires_grad=True)
    labels = torch.full((2, 4), -100)
    loss, stats = masked_causal_lm_loss(logits, labels, 0.5, "sequence")
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()
    assert int(stats.candidates) == 0
    loss, _ = masked_causal_lm_loss(logits, labels, 0.5, "sequence", num_items_in_batch=torch.tensor(0))
    assert torch.isfinite(loss)


def test_shift_labels_are_taken_as_aligned():
    logits, labels = _logits_and_labels()
    shifted = F.pad(labels[:, 1:], (0, 1), value=-100)
    a, _ = masked_causal_lm_loss(logits, labels, 0.3, "sequence")
    b, _ = masked_causal_lm_loss(logits, None, 0.3, "sequence", shift_labels=shifted)
    torch.testing.assert_close(a, b)


def test_nan_logits_raise():
    logits, labels = _logits_and_labels()
    logits[0, 3, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        masked_causal_lm_loss(logits, labels, 0.3, "sequence")


@pytest.mark.parametrize("family", ["llama", "qwen2", "bloom"])
def test_ratio_zero_is_transformers_loss_bit_for_bit(model_dirs, family):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dirs[family])
    torch.manual_seed(1)
    input_ids = torch.randint(4, model.config.vocab_size, (2, 12))
    labels = input_ids.clone()
    labels[:, :3] = -100
    for num_items in (None, torch.tensor(17)):
        extra = {} if num_items is None else {"num_items_in_batch": num_items}
        out = model(input_ids=input_ids, labels=labels, **extra)
        ours, stats = masked_causal_lm_loss(out.logits, labels, 0.0, "sequence", num_items_in_batch=num_items)
        assert stats is None
        assert torch.equal(ours, out.loss)
