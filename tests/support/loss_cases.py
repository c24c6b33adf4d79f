"""Cases shared by the tests that compare an optimised loss with the reference (core/test_logits_loss.py,
core/test_hidden_states_loss.py)."""

from __future__ import annotations

import torch


def case_labels(generator: torch.Generator, batch: int, width: int, vocab: int) -> torch.Tensor:
    """Random targets with a prompt (first two positions ignored), a padded last row and an all-ignored row."""
    labels = torch.randint(0, vocab, (batch, width), generator=generator)
    labels[:, :2] = -100
    if batch > 1:
        labels[-1, width // 2 :] = -100
    if batch > 2:
        labels[1] = -100
    return labels


def assert_same_mask(stats_ours, stats_ref) -> None:
    """The same mask: candidates, dropped targets and scopes that dropped something (None for mask_ratio 0)."""
    if stats_ref is None:
        assert stats_ours is None
        return
    assert int(stats_ours.candidates) == int(stats_ref.candidates)
    assert int(stats_ours.dropped) == int(stats_ref.dropped)
    assert int(stats_ours.threshold_count) == int(stats_ref.threshold_count)
