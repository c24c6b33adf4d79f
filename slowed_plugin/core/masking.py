"""Low-Entropy Masking: which target tokens leave the loss.

Pure torch; knows nothing of trainers. Conventions are those of transformers' causal-LM loss:
logits at position t predict ``labels[t + 1]`` (or ``shift_labels[t]`` when the caller has
already shifted, as context/sequence parallelism does), and ``-100`` marks an ignored target.

A *candidate* is a position whose target is not ignored. Within each masking scope holding n
candidates, exactly ``floor(mask_ratio * n)`` of them, those with the lowest entropy, are
dropped; ties go to the earlier position, so the count is exact even when entropies are equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import torch

from ..validate import check_choice
from . import IGNORE_INDEX

# Rows of logits turned into entropies at a time: bounds the float32 temporary to
# _ENTROPY_CHUNK x vocab instead of a full float32 copy of all logits.
_ENTROPY_CHUNK = 1024


# Denominators up to this size keep floor(n * p / q) exact in int64 for any count n (see num_masked).
_EXACT_INT64_DENOMINATOR = 2**31


@lru_cache(maxsize=64)
def _ratio(mask_ratio: float) -> tuple[int, int]:
    """``mask_ratio`` as the decimal it was written as, ``p / q`` in lowest terms: ``0.29`` is 29/100, not the
    binary float 0.28999999999999998002 (whose product with 100 floors to 28)."""
    exact = Fraction(repr(float(mask_ratio)))
    return exact.numerator, exact.denominator


def num_masked(num_candidates: torch.Tensor, mask_ratio: float) -> torch.Tensor:
    """``floor(mask_ratio * n)`` for an integer tensor of candidate counts ``n``, exactly.

    ``mask_ratio`` counts as the decimal it is written as (``repr``): 0.29 * 100 is 29, and 0.999999999999 * 10
    is 9 (a float tolerance would round it up to 10 and mask every target). With ``p / q`` that decimal,
    ``floor(n p / q) = (n // q) p + ((n % q) p) // q``, whose products stay below 2^62 in int64 when q < 2^31
    (every ratio written with up to 9 decimals): no float, no host sync. Longer ratios are computed with
    Python integers, which moves the counts to the host once.
    """
    p, q = _ratio(mask_ratio)
    n = num_candidates.long()
    if q < _EXACT_INT64_DENOMINATOR:
        return (n // q) * p + ((n % q) * p) // q
    exact = [(count * p) // q for count in n.reshape(-1).tolist()]
    return torch.tensor(exact, dtype=torch.long, device=n.device).reshape(n.shape)


@torch.no_grad()
def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Predictive entropy of each row of ``logits`` (..., V), in float32, without gradient.

    ``H = logsumexp(z) - sum_v softmax(z)_v * z_v``, which needs one exp per logit and no log.
    """
    flat = logits.reshape(-1, logits.shape[-1])
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    for start in range(0, flat.shape[0], _ENTROPY_CHUNK):
        z = flat[start : start + _ENTROPY_CHUNK].float()
        lse = torch.logsumexp(z, dim=-1)
        p = torch.exp(z - lse.unsqueeze(-1))
        out[start : start + _ENTROPY_CHUNK] = lse - (p * z).sum(dim=-1)
    return out.reshape(logits.shape[:-1])


def shifted_targets(labels: torch.Tensor | None, shift_labels: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """Targets aligned with the logits that predict them, and the number of logit positions to drop
    at the end (1 for unshifted ``labels``, 0 for ``shift_labels``)."""
    if shift_labels is not None:
        return shift_labels, 0
    if labels is None:
        raise ValueError("Low-Entropy Masking needs `labels` or `shift_labels`; got neither.")
    return labels[..., 1:], 1


def target_segments(
    targets: torch.Tensor, scope: str, position_ids: torch.Tensor | None = None, shifted: bool = True
) -> torch.Tensor:
    """Masking-scope id of every target position, shape of ``targets`` (B, T).

    ``batch``: one scope. ``sequence``: one scope per row, and with packed rows (``position_ids``
    restarting at 0) one per packed example; a target belongs to the example of its own token.
    """
    if scope == "batch":
        return torch.zeros_like(targets, dtype=torch.long)
    if scope != "sequence":
        check_choice("mask_scope", scope, ("batch", "sequence"))
    rows, width = targets.shape
    row_id = torch.arange(rows, device=targets.device).unsqueeze(1).expand(rows, width)
    if position_ids is None:
        return row_id.contiguous()
    position_ids = position_ids.to(targets.device).expand(rows, -1)
    starts = (position_ids == 0).long().cumsum(dim=1)
    # Unshifted labels: target t is token t + 1, so it takes token t + 1's example.
    example = starts[:, 1:] if shifted else starts
    return row_id * (width + 2) + example


def select_low_entropy(
    entropy: torch.Tensor, candidates: torch.Tensor, mask_ratio: float, segments: torch.Tensor
) -> torch.Tensor:
    """Boolean tensor, True where a candidate is dropped: in each segment, the
    ``floor(mask_ratio * n)`` candidates of lowest entropy, ties broken by position."""
    flat_entropy = entropy.reshape(-1).float()
    flat_candidates = candidates.reshape(-1)
    _, flat_segments = torch.unique(segments.reshape(-1), return_inverse=True)
    num_segments = int(flat_segments.max()) + 1 if flat_segments.numel() else 0
    # Non-candidates sort after every candidate of their segment, so they are never selected.
    key = torch.where(flat_candidates, flat_entropy, torch.full_like(flat_entropy, float("inf")))
    # Stable sorts: by entropy (ties keep position order), then by segment (keeps entropy order).
    by_entropy = torch.argsort(key, stable=True)
    by_segment = torch.argsort(flat_segments[by_entropy], stable=True)
    order = by_entropy[by_segment]
    sorted_segments = flat_segments[order]
    sizes = torch.bincount(flat_segments, minlength=num_segments)
    starts = sizes.cumsum(0) - sizes
    budget = num_masked(
        torch.bincount(flat_segments, weights=flat_candidates.double(), minlength=num_segments).round().long(),
        mask_ratio,
    )
    rank = torch.arange(order.numel(), device=order.device) - starts[sorted_segments]
    dropped = torch.zeros_like(flat_candidates)
    dropped[order] = rank < budget[sorted_segments]
    return dropped.reshape(candidates.shape)


def kept_token_count(
    labels: torch.Tensor | None,
    mask_ratio: float,
    scope: str,
    position_ids: torch.Tensor | None = None,
    shift_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Number of targets that stay in the loss: ``sum over scopes of n - floor(mask_ratio * n)``.

    It depends on the labels alone, not on the entropies, so a trainer can count the kept tokens
    of a whole optimizer step before any forward pass; that is what makes the normalisation exact.
    """
    targets, drop_last = shifted_targets(labels, shift_labels)
    candidates = targets != IGNORE_INDEX
    segments = target_segments(targets, scope, position_ids, shifted=drop_last == 1)
    _, inverse = torch.unique(segments.reshape(-1), return_inverse=True)
    per_segment = torch.bincount(inverse, weights=candidates.reshape(-1).double()).round().long()
    return (per_segment - num_masked(per_segment, mask_ratio)).sum()


@dataclass
class MaskStats:
    """What one call of :func:`mask_low_entropy_targets` did, for metrics (tensors, no sync)."""

    candidates: torch.Tensor
    dropped: torch.Tensor
    # Sum over scopes that dropped something of the highest dropped entropy, and their count.
    threshold_sum: torch.Tensor
    threshold_count: torch.Tensor
    # Entropy sum and argmax hits over candidates (TRL logs mean entropy and token accuracy).
    entropy_sum: torch.Tensor


@dataclass
class TokenLosses:
    """Per target position (B, T'), what TRL's fused LM head (``add_fused_lm_head``, TRL >= 1.15) returns for labels
    whose dropped targets are set to -100: every field is zero (False) where the target is not kept."""

    nll: torch.Tensor  # float32 -log p(target), differentiable; ``-nll`` is the fused head's ``log_probs``
    kept: torch.Tensor  # bool: the target is in the loss (the fused head's ``label_mask``)
    entropy: torch.Tensor  # float32, no gradient: SLowED's entropy of the kept targets' distributions
    hit: torch.Tensor  # bool: the target is the argmax (the fused head's ``is_top1``)


def check_finite(entropy: torch.Tensor, candidates: torch.Tensor) -> None:
    """Stop on NaN/inf logits at a training target before they reach the weights."""
    if not torch.isfinite(entropy[candidates]).all():
        raise FloatingPointError("SLowED: the model produced NaN or inf logits on a training target.")


def mask_stats(
    entropy: torch.Tensor, candidates: torch.Tensor, dropped: torch.Tensor, segments: torch.Tensor
) -> MaskStats:
    """Metrics of one masking: counts, and per scope the highest entropy that was dropped."""
    _, inverse = torch.unique(segments.reshape(-1), return_inverse=True)
    flat = entropy.reshape(-1)
    dropped_entropy = torch.where(dropped.reshape(-1), flat, torch.full_like(flat, -1.0))
    per_scope = torch.full((int(inverse.max()) + 1 if inverse.numel() else 0,), -1.0, device=entropy.device)
    per_scope = per_scope.scatter_reduce(0, inverse, dropped_entropy, reduce="amax")
    return MaskStats(
        candidates=candidates.sum(),
        dropped=dropped.sum(),
        threshold_sum=per_scope.clamp_min(0).sum(),
        threshold_count=(per_scope >= 0).sum(),
        entropy_sum=entropy[candidates].sum(),
    )


def select_mask(
    entropy: torch.Tensor,
    targets: torch.Tensor,
    mask_ratio: float,
    scope: str,
    position_ids: torch.Tensor | None,
    shifted: bool,
) -> tuple[torch.Tensor, torch.Tensor, MaskStats]:
    """Candidates, dropped targets and stats for entropies aligned with ``targets`` (B, T').

    The one place every loss path (reference, fused, chunked, reference mask) chooses its mask.
    """
    candidates = targets != IGNORE_INDEX
    check_finite(entropy, candidates)
    segments = target_segments(targets, scope, position_ids, shifted=shifted)
    dropped = select_low_entropy(entropy, candidates, mask_ratio, segments)
    return candidates, dropped, mask_stats(entropy, candidates, dropped, segments)


def mask_low_entropy_targets(
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    mask_ratio: float,
    scope: str,
    position_ids: torch.Tensor | None = None,
    shift_labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, MaskStats]:
    """Targets aligned with ``logits`` (B, T) with the low-entropy candidates set to -100."""
    targets, drop_last = shifted_targets(labels, shift_labels)
    scored = logits[:, : logits.shape[1] - drop_last] if drop_last else logits
    _, dropped, stats = select_mask(token_entropy(scored), targets, mask_ratio, scope, position_ids, drop_last == 1)
    return targets.masked_fill(dropped, IGNORE_INDEX), stats
