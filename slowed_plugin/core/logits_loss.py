"""Low-Entropy Masking on logits in one fused pass: entropy and cross-entropy share one logsumexp.

:func:`fused_masked_causal_lm_loss` is a drop-in replacement for
:func:`slowed_plugin.trainer.reference_loss.masked_causal_lm_loss` (same arguments, same loss, same gradient, same
:class:`~slowed_plugin.core.masking.MaskStats`), built for large vocabularies:

- forward: one pass over the logits, in chunks of rows, gives per row ``lse = logsumexp(z)``, the
  entropy ``H = lse - sum softmax(z) * z`` (both in float32), the target logit ``z_y`` and whether
  the target is the argmax. The cross-entropy of a row is ``lse - z_y``: no ``log_softmax`` tensor,
  and no float32 copy of bf16/fp16 logits (only one chunk of rows is ever upcast);
- the mask is chosen by :func:`slowed_plugin.core.masking.select_low_entropy` (the same code as the
  reference, so the same tokens are dropped, ties included);
- backward: ``(softmax(z) - onehot(y)) * w`` for kept rows (``w`` = the loss weight of the row),
  written straight into the gradient in the logits' dtype; masked, ignored and padding rows get
  exact zeros without being read.

The per-chunk kernels, shared with the hidden-states loss, live in :mod:`.kernels` (compiled with
``torch.compile``, eager fallback; a trainer calls :func:`~.kernels.warmup` before its first step).
"""

from __future__ import annotations

import math

import torch

from . import kernels
from .kernels import check_targets, normalise
from .masking import IGNORE_INDEX, MaskStats, TokenLosses, select_mask, shifted_targets

# Logit elements per chunk of rows (~8M: 64 rows of a 151,936 vocabulary, 256 rows of 32,000).
_CHUNK_ELEMENTS = 1 << 23


def default_chunk_rows(vocab_size: int) -> int:
    """Rows per chunk: a power of two near ``_CHUNK_ELEMENTS / vocab_size``, within [16, 4096]."""
    rows = 2 ** round(math.log2(max(_CHUNK_ELEMENTS / max(vocab_size, 1), 1)))
    return int(min(max(rows, 16), 4096))


# --------------------------------------------------------------------------- fused pass
def _chunk_flags(rows_mask: torch.Tensor, chunk: int) -> list[bool]:
    """Whether each chunk of ``rows_mask`` holds a True row (one host sync for all chunks)."""
    n = rows_mask.numel()
    pad = (-n) % chunk
    padded = torch.nn.functional.pad(rows_mask, (0, pad)) if pad else rows_mask
    return padded.reshape(-1, chunk).any(dim=1).tolist()


class _FusedEntropyCE(torch.autograd.Function):
    """Per row of 2-D logits: cross-entropy (differentiable), entropy and argmax hit (not).

    Only rows in ``active`` are computed; the others read 0. The backward reads the logits again,
    only for the rows whose cross-entropy received a non-zero gradient.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, active: torch.Tensor, chunk: int):
        n = logits.shape[0]
        f32 = dict(dtype=torch.float32, device=logits.device)
        lse = torch.zeros(n, **f32)
        entropy = torch.zeros(n, **f32)
        target_logit = torch.zeros(n, **f32)
        hit = torch.zeros(n, dtype=torch.bool, device=logits.device)
        safe = targets.clamp_min(0)
        for i, busy in enumerate(_chunk_flags(active, chunk)):
            if busy:
                rows = slice(i * chunk, (i + 1) * chunk)
                lse[rows], entropy[rows], target_logit[rows], hit[rows] = kernels.KERNELS.stats(
                    logits[rows], safe[rows]
                )
        ce = torch.where(active, lse - target_logit, torch.zeros_like(lse))
        hit &= active
        ctx.save_for_backward(logits, lse, safe)
        ctx.chunk = chunk
        ctx.mark_non_differentiable(entropy, hit)
        return ce, entropy, hit

    @staticmethod
    def backward(ctx, grad_ce: torch.Tensor, _grad_entropy, _grad_hit):
        logits, lse, safe = ctx.saved_tensors
        chunk = ctx.chunk
        grad_ce = grad_ce.float()
        grad = torch.empty_like(logits)
        for i, busy in enumerate(_chunk_flags(grad_ce != 0, chunk)):
            rows = slice(i * chunk, (i + 1) * chunk)
            if busy:
                kernels.KERNELS.grad_into(logits[rows], lse[rows], safe[rows], grad_ce[rows], grad[rows])
            else:
                grad[rows].zero_()
        return grad, None, None, None


# --------------------------------------------------------------------------- public API
def _plain_loss(
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    num_items_in_batch: torch.Tensor | int | None,
    shift_labels: torch.Tensor | None,
    return_extra: bool,
):
    """``mask_ratio=0`` of :func:`fused_masked_causal_lm_loss`: transformers' own loss, bit for bit."""
    # Plain SFT bit for bit: transformers' own loss (imported here, see the core's import rule).
    from transformers.loss.loss_utils import ForCausalLMLoss

    stats = None
    loss = ForCausalLMLoss(
        logits, labels, logits.shape[-1], num_items_in_batch=num_items_in_batch, shift_labels=shift_labels
    )
    if not return_extra:
        return loss, stats
    targets, drop_last = shifted_targets(labels, shift_labels)
    scored = logits[:, : logits.shape[1] - drop_last]
    with torch.no_grad():
        from .masking import token_entropy

        candidates = targets != IGNORE_INDEX
        extra = {
            "num_valid_tokens": candidates.sum(),
            "entropy_sum": token_entropy(scored)[candidates].sum(),
            "num_correct_tokens": ((scored.argmax(-1) == targets) & candidates).sum().float(),
        }
    return loss, stats, extra


def fused_masked_causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    mask_ratio: float,
    scope: str = "sequence",
    num_items_in_batch: torch.Tensor | int | None = None,
    position_ids: torch.Tensor | None = None,
    shift_labels: torch.Tensor | None = None,
    *,
    chunk_rows: int | None = None,
    return_extra: bool = False,
):
    """:func:`slowed_plugin.trainer.reference_loss.masked_causal_lm_loss`, fused: ``(loss, MaskStats)``.

    Same arguments and semantics: ``logits`` (B, T, V); unshifted ``labels`` or aligned
    ``shift_labels``; the loss is the cross-entropy summed over the kept targets, divided by
    ``num_items_in_batch`` (clamped to >= 1) or, without it, by the kept count; a micro-batch that
    keeps nothing gives ``logits.sum() * 0``. ``mask_ratio=0`` calls the reference itself (plain
    ``ForCausalLMLoss``, bit for bit, stats ``None``).

    With ``return_extra=True`` it returns ``(loss, stats, extra)`` where ``extra`` holds what TRL's
    ``chunked_nll`` metrics read: ``num_valid_tokens``, ``entropy_sum``, ``num_correct_tokens``.
    """
    if mask_ratio == 0:
        return _plain_loss(logits, labels, num_items_in_batch, shift_labels, return_extra)

    if logits.dim() != 3:
        raise ValueError(f"`logits` must be (batch, seq, vocab); got shape {tuple(logits.shape)}.")
    targets, drop_last = shifted_targets(labels, shift_labels)
    batch, width, vocab = logits.shape
    if targets.shape != (batch, width - drop_last):
        raise ValueError(
            f"labels of shape {tuple(targets.shape)} do not match logits of shape {tuple(logits.shape)} "
            f"({'shift_labels are' if drop_last == 0 else 'labels are'} expected to be (batch, seq))."
        )
    targets = targets.to(logits.device)
    check_targets(targets, vocab)
    # Targets aligned with every logit row (the last position of unshifted labels predicts nothing),
    # so the logits are read in place as (B*T, V): no slice, no copy.
    full = torch.nn.functional.pad(targets, (0, drop_last), value=IGNORE_INDEX) if drop_last else targets
    active = (full != IGNORE_INDEX).reshape(-1)
    flat_logits = logits.reshape(-1, vocab) if logits.is_contiguous() else logits.contiguous().view(-1, vocab)
    ce, entropy, hit = _FusedEntropyCE.apply(
        flat_logits, full.reshape(-1), active, chunk_rows or default_chunk_rows(vocab)
    )
    entropy = entropy.view(batch, width)[:, : width - drop_last]
    candidates, dropped, stats = select_mask(entropy, targets, mask_ratio, scope, position_ids, drop_last == 1)
    kept = candidates & ~dropped
    kept_full = torch.nn.functional.pad(kept, (0, drop_last), value=False) if drop_last else kept
    if num_items_in_batch is None and not kept.any():
        loss = logits.sum() * 0.0  # nothing to learn: zero that still reaches every parameter
    else:
        total = torch.where(kept_full.reshape(-1), ce, torch.zeros_like(ce)).sum()
        loss = normalise(total, kept.sum(), num_items_in_batch)
    if not return_extra:
        return loss, stats
    extra = {
        "num_valid_tokens": stats.candidates,
        "entropy_sum": stats.entropy_sum,
        "num_correct_tokens": hit.sum().float(),
    }
    return loss, stats, extra


def fused_masked_token_losses(
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    mask_ratio: float,
    scope: str = "sequence",
    position_ids: torch.Tensor | None = None,
    shift_labels: torch.Tensor | None = None,
    *,
    chunk_rows: int | None = None,
) -> tuple[TokenLosses, MaskStats | None]:
    """The per-target form of :func:`fused_masked_causal_lm_loss` (same mask, same cross-entropy): what TRL's fused
    LM head returns on the labels with the dropped targets set to -100 (see :class:`~.masking.TokenLosses`)."""
    if logits.dim() != 3:
        raise ValueError(f"`logits` must be (batch, seq, vocab); got shape {tuple(logits.shape)}.")
    targets, drop_last = shifted_targets(labels, shift_labels)
    batch, width, vocab = logits.shape
    if targets.shape != (batch, width - drop_last):
        raise ValueError(f"labels of shape {tuple(targets.shape)} do not match logits of shape {tuple(logits.shape)}.")
    targets = targets.to(logits.device)
    check_targets(targets, vocab)
    full = torch.nn.functional.pad(targets, (0, drop_last), value=IGNORE_INDEX) if drop_last else targets
    active = (full != IGNORE_INDEX).reshape(-1)
    flat_logits = logits.reshape(-1, vocab) if logits.is_contiguous() else logits.contiguous().view(-1, vocab)
    ce, entropy, hit = _FusedEntropyCE.apply(
        flat_logits, full.reshape(-1), active, chunk_rows or default_chunk_rows(vocab)
    )
    end = width - drop_last
    entropy = entropy.view(batch, width)[:, :end]
    if mask_ratio == 0:
        stats, candidates = None, targets != IGNORE_INDEX
        kept = candidates
    else:
        candidates, dropped, stats = select_mask(entropy, targets, mask_ratio, scope, position_ids, drop_last == 1)
        kept = candidates & ~dropped
    # `where`, not indexing: the zeros stay connected to the logits (a micro-batch that keeps nothing still has a
    # gradient, of zeros).
    nll = torch.where(kept, ce.view(batch, width)[:, :end], 0.0)
    zero = torch.zeros((), dtype=entropy.dtype, device=entropy.device)
    tokens = TokenLosses(nll, kept, torch.where(kept, entropy, zero), hit.view(batch, width)[:, :end] & kept)
    return tokens, stats


__all__ = ["default_chunk_rows", "fused_masked_causal_lm_loss", "fused_masked_token_losses"]
