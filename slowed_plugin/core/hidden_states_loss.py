"""Low-Entropy Masking from hidden states: the logits are never materialised beyond one chunk.

For trainers that skip the full logits (TRL's default ``chunked_nll``, Liger's fused linear
cross-entropy, Axolotl's cut-cross-entropy), :func:`chunked_masked_causal_lm_loss` computes the
masked loss from the decoder's last hidden states and the output projection ``lm_head``:

1. pass 1, without gradient, over the candidate rows (targets not ``-100``) in chunks of
   ``chunk_size``: ``logits = lm_head(h)`` (then ``logit_scale`` and ``final_logit_softcapping``
   as the model applies them), and from them, in one fused kernel, each row's logsumexp, entropy,
   target logit and argmax hit (:mod:`slowed_plugin.core.logits_loss`). The cross-entropy of a row is
   ``lse - z_y``, so the forward needs no second product;
2. the mask: :func:`slowed_plugin.core.masking.select_low_entropy` on those entropies (the reference
   selection, ties and scopes included);
3. backward, for the kept rows only, in chunks: recompute the chunk's logits, turn them in place
   into ``(softmax - onehot) * w``, and multiply back into the hidden states' and (when trainable)
   the projection's gradients. Masked targets never reach the projection in the backward.

Cost, in products with the (V x H) projection per token: ``N`` candidates in pass 1 and ``3K`` (or
``2K`` with a frozen ``lm_head``, as under LoRA) for the ``K`` kept rows, against ``4N`` (``3N``)
for TRL's gradient-checkpointed ``chunked_nll``. Extra memory: one chunk of logits (``chunk_size``
x V in the hidden states' dtype) at a time, plus the gradients themselves.

A projection that is not a plain weight (a PEFT adapter on ``lm_head``, a quantised head) is refused
with an error that says what to do; the logits path (:mod:`slowed_plugin.core.logits_loss`) serves those.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from . import kernels
from .kernels import check_targets, normalise
from .lm_head import lm_head_parameters
from .masking import IGNORE_INDEX, MaskStats, TokenLosses, check_finite, select_mask, shifted_targets

# Rows of logits per chunk, as TRL's chunked_nll (_CHUNKED_LM_HEAD_CHUNK_SIZE).
DEFAULT_CHUNK_SIZE = 256


def _project(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # Autocast off: pass 1 and the backward's recomputation must see the same logits, in the hidden
    # states' dtype (callers cast the weight once, outside their loops).
    with torch.autocast(h.device.type, enabled=False):
        return torch.nn.functional.linear(h, weight, None if bias is None else bias.to(h.dtype))


@torch.no_grad()
def head_row_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    rows: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    logit_scale: float = 1.0,
    final_logit_softcapping: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pass 1 over the rows ``rows`` of ``hidden`` (N, H) (all rows if None), whose targets (R,)
    are token ids: per row, in float32, the logsumexp, entropy and target logit, and whether the
    target is the argmax. Only one chunk of logits exists at a time."""
    count = hidden.shape[0] if rows is None else rows.numel()
    f32 = dict(dtype=torch.float32, device=hidden.device)
    lse, entropy, target_logit = torch.empty(count, **f32), torch.empty(count, **f32), torch.empty(count, **f32)
    hit = torch.empty(count, dtype=torch.bool, device=hidden.device)
    weight = weight.to(hidden.dtype)
    for start in range(0, count, chunk_size):
        part = slice(start, start + chunk_size)
        h = hidden[part] if rows is None else hidden.index_select(0, rows[part])
        logits = _project(h, weight, bias)
        lse[part], entropy[part], target_logit[part], hit[part] = kernels.KERNELS.stats(
            logits, targets[part], logit_scale, final_logit_softcapping
        )
        del logits
    return lse, entropy, target_logit, hit


# Vocabulary rows per float32 block of the backward's head products on a CPU in half precision (8,192 x 896 x 4 B =
# 29 MB of float32 head for Qwen2.5-0.5B): the float32 copies stay small whatever the vocabulary.
_CPU_VOCAB_BLOCK = 8192


@functools.lru_cache(maxsize=1)
def _native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX), as torch reports it; False when torch cannot
    tell."""
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, name, None)
        try:
            if check is not None and check():
                return True
        except Exception:  # a platform where torch cannot query the CPU: take the safe path
            pass
    return False


def _float32_blocks(t: torch.Tensor) -> bool:
    """Whether a head product on ``t``'s dtype and device runs in float32 blocks instead: bf16 on a CPU without
    native bf16, and fp16 on any CPU. There a half-precision matmul that contracts over the vocabulary (the
    backward's ``g @ W``, ``g.t() @ h``) takes a slow path: on an AMD EPYC (Zen 3) one (128 x 151,936) @
    (151,936 x 896) product took 94 s in bf16 against 0.36 s in float32, and ``g.t() @ h`` 5.9 s against 0.44 s
    (issue 30). On a CPU with AMX the bf16 products are the faster ones (0.04-0.06 s against 0.14-0.19 s in float32
    blocks, docs/performance.md), so they stay. A float32 product rounded once is what a bf16 matmul with float32
    accumulation computes, up to summation order."""
    if t.device.type != "cpu":
        return False
    return t.dtype == torch.float16 or (t.dtype == torch.bfloat16 and not _native_cpu_bf16())


def _rows_times_head(g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``g @ weight`` for ``g`` (R, V) and ``weight`` (V, H), in ``g``'s dtype."""
    if not _float32_blocks(g):
        return g @ weight
    out = torch.zeros(g.shape[0], weight.shape[1], dtype=torch.float32, device=g.device)
    for start in range(0, weight.shape[0], _CPU_VOCAB_BLOCK):
        part = slice(start, start + _CPU_VOCAB_BLOCK)
        out.addmm_(g[:, part].float(), weight[part].float())
    return out.to(g.dtype)


def _add_head_grad(grad_weight: torch.Tensor, g: torch.Tensor, h: torch.Tensor) -> None:
    """``grad_weight += g.t() @ h`` in ``grad_weight``'s dtype, rounded once."""
    if not _float32_blocks(grad_weight):
        grad_weight.addmm_(g.t().to(grad_weight.dtype), h.to(grad_weight.dtype))
        return
    hf = h.float()
    for start in range(0, grad_weight.shape[0], _CPU_VOCAB_BLOCK):
        block = grad_weight[start : start + _CPU_VOCAB_BLOCK]
        block.copy_(torch.addmm(block.float(), g[:, start : start + _CPU_VOCAB_BLOCK].t().float(), hf))


class _KeptRowsCE(torch.autograd.Function):
    """Cross-entropy of the kept rows (already known from pass 1); the backward recomputes their logits."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, rows, targets, lse, ce, chunk_size, logit_scale, softcap):
        ctx.save_for_backward(hidden, weight, bias, rows, targets, lse)
        ctx.settings = (chunk_size, logit_scale, softcap)
        return ce.clone()

    @staticmethod
    def backward(ctx, grad_ce):
        hidden, weight, bias, rows, targets, lse = ctx.saved_tensors
        chunk_size, logit_scale, softcap = ctx.settings
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_ce = grad_ce.float()
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight) if need_weight else None
        grad_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_bias else None
        weight_c = weight.to(hidden.dtype)
        for start in range(0, rows.numel(), chunk_size):
            part = slice(start, start + chunk_size)
            idx = rows[part]
            h = hidden.index_select(0, idx)
            g = _project(h, weight_c, bias)
            # In place: the chunk's logits become d loss / d logits in the same buffer.
            kernels.KERNELS.grad_into(g, lse[part], targets[part], grad_ce[part], g, logit_scale, softcap)
            if need_hidden:
                grad_hidden.index_copy_(0, idx, _rows_times_head(g, weight_c))
            if need_weight:
                # Accumulated in the weight's dtype, one rounding per chunk (as TRL's chunked_nll).
                _add_head_grad(grad_weight, g, h)
            if need_bias:
                grad_bias += g.sum(0, dtype=torch.float32)
            del g, h
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None, None, None


@dataclass
class _Rows:
    """Pass 1 and the mask, per candidate row of the flattened (B*T, H) hidden states."""

    hidden: torch.Tensor  # (B*T, H)
    weight: torch.Tensor
    bias: torch.Tensor | None
    shape: tuple[int, int]  # (B, T)
    drop_last: int  # 1 for unshifted labels: the last position predicts nothing
    rows: torch.Tensor  # flat indices of the candidates
    row_targets: torch.Tensor
    lse: torch.Tensor
    target_logit: torch.Tensor
    hit: torch.Tensor
    entropy: torch.Tensor  # per candidate row
    keep: torch.Tensor  # per candidate row
    stats: MaskStats | None
    extra: dict[str, torch.Tensor]

    def kept_ce(self, chunk_size: int, logit_scale: float, softcap: float | None) -> torch.Tensor:
        """Cross-entropy of each kept row (differentiable; the backward recomputes only their logits)."""
        keep = self.keep
        return _KeptRowsCE.apply(
            self.hidden,
            self.weight,
            self.bias,
            self.rows[keep],
            self.row_targets[keep],
            self.lse[keep],
            (self.lse - self.target_logit)[keep],
            chunk_size,
            float(logit_scale),
            softcap,
        )

    def connected_zero(self) -> torch.Tensor:
        """A float32 zero that reaches every input (DDP/FSDP expect every gradient)."""
        zero = self.hidden.sum() * 0.0 + self.weight.sum() * 0.0
        if self.bias is not None:
            zero = zero + self.bias.sum() * 0.0
        return zero.float()


def _checked_inputs(
    hidden_states: torch.Tensor,
    lm_head: nn.Module | torch.Tensor,
    labels: torch.Tensor | None,
    shift_labels: torch.Tensor | None,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, int]:
    """The head's weight and bias, the next-token targets on the hidden states' device and how many trailing
    positions have none; a one-line ValueError for shapes or targets that do not fit."""
    if hidden_states.dim() != 3:
        raise ValueError(f"`hidden_states` must be (batch, seq, hidden); got shape {tuple(hidden_states.shape)}.")
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive number of rows; got {chunk_size!r}.")
    weight, bias = lm_head_parameters(lm_head)
    batch, width, size = hidden_states.shape
    if weight.shape[1] != size:
        raise ValueError(f"`lm_head` weight of shape {tuple(weight.shape)} does not take hidden states of size {size}.")
    targets, drop_last = shifted_targets(labels, shift_labels)
    if targets.shape != (batch, width - drop_last):
        raise ValueError(
            f"labels of shape {tuple(targets.shape)} do not match hidden states of shape {tuple(hidden_states.shape)}."
        )
    targets = targets.to(hidden_states.device)
    check_targets(targets, weight.shape[0])
    return weight, bias, targets, drop_last


def _masked_rows(
    hidden_states: torch.Tensor,
    lm_head: nn.Module | torch.Tensor,
    labels: torch.Tensor | None,
    mask_ratio: float,
    scope: str,
    position_ids: torch.Tensor | None,
    shift_labels: torch.Tensor | None,
    chunk_size: int,
    logit_scale: float,
    final_logit_softcapping: float | None,
) -> _Rows:
    weight, bias, targets, drop_last = _checked_inputs(hidden_states, lm_head, labels, shift_labels, chunk_size)
    batch, width, size = hidden_states.shape
    full = torch.nn.functional.pad(targets, (0, drop_last), value=IGNORE_INDEX) if drop_last else targets
    flat_targets = full.reshape(-1)
    hidden = hidden_states.reshape(-1, size)
    rows = (flat_targets != IGNORE_INDEX).nonzero().squeeze(1)
    row_targets = flat_targets[rows]

    # Pass 1, no gradient: every candidate's entropy, logsumexp, target logit and argmax hit.
    lse, entropy_c, target_logit, hit = head_row_stats(
        hidden.detach(),
        weight.detach(),
        None if bias is None else bias.detach(),
        row_targets,
        rows,
        chunk_size,
        logit_scale,
        final_logit_softcapping,
    )
    entropy = torch.zeros(batch * width, dtype=torch.float32, device=hidden.device)
    entropy[rows] = entropy_c
    entropy = entropy.view(batch, width)[:, : width - drop_last]
    if mask_ratio == 0:
        stats = None
        candidates = targets != IGNORE_INDEX
        check_finite(entropy, candidates)
        keep = torch.ones_like(rows, dtype=torch.bool)
        entropy_sum = entropy_c.sum()
    else:
        candidates, dropped, stats = select_mask(entropy, targets, mask_ratio, scope, position_ids, drop_last == 1)
        dropped_full = torch.nn.functional.pad(dropped, (0, drop_last), value=False) if drop_last else dropped
        keep = ~dropped_full.reshape(-1)[rows]
        entropy_sum = stats.entropy_sum
    extra = {
        "num_valid_tokens": candidates.sum(),
        "entropy_sum": entropy_sum,
        "num_correct_tokens": hit.sum().float(),
    }
    return _Rows(
        hidden,
        weight,
        bias,
        (batch, width),
        drop_last,
        rows,
        row_targets,
        lse,
        target_logit,
        hit,
        entropy_c,
        keep,
        stats,
        extra,
    )


def chunked_masked_causal_lm_loss(
    hidden_states: torch.Tensor,
    lm_head: nn.Module | torch.Tensor,
    labels: torch.Tensor | None,
    mask_ratio: float,
    scope: str = "sequence",
    num_items_in_batch: torch.Tensor | int | None = None,
    position_ids: torch.Tensor | None = None,
    shift_labels: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    logit_scale: float = 1.0,
    final_logit_softcapping: float | None = None,
) -> tuple[torch.Tensor, MaskStats | None, dict[str, torch.Tensor]]:
    """Masked causal-LM loss from hidden states (B, T, H) and ``lm_head``: ``(loss, stats, extra)``.

    The loss, its gradient and ``stats`` are those of
    :func:`slowed_plugin.trainer.reference_loss.masked_causal_lm_loss` on ``logits = lm_head(hidden_states)``
    (scaled and soft-capped as given): same labels conventions, same mask, same division by
    ``num_items_in_batch`` (clamped to >= 1) or by the kept count, and a zero loss connected to
    every input when a micro-batch keeps nothing and no ``num_items_in_batch`` is given.
    ``mask_ratio=0`` keeps every target (stats ``None``, as the reference), but it is computed
    in chunks, so it equals ``ForCausalLMLoss`` up to rounding rather than bit for bit.

    ``extra`` holds what TRL's ``chunked_nll`` metrics read: ``num_valid_tokens`` (candidates),
    ``entropy_sum`` and ``num_correct_tokens`` (argmax == target), over candidates, as tensors.
    """
    r = _masked_rows(
        hidden_states,
        lm_head,
        labels,
        mask_ratio,
        scope,
        position_ids,
        shift_labels,
        chunk_size,
        logit_scale,
        final_logit_softcapping,
    )
    kept_count = r.keep.sum()
    if num_items_in_batch is None and int(kept_count) == 0:
        return r.connected_zero(), r.stats, r.extra  # nothing to learn
    ce = r.kept_ce(chunk_size, logit_scale, final_logit_softcapping)
    return normalise(ce.sum(), kept_count, num_items_in_batch), r.stats, r.extra


def chunked_masked_token_losses(
    hidden_states: torch.Tensor,
    lm_head: nn.Module | torch.Tensor,
    labels: torch.Tensor | None,
    mask_ratio: float,
    scope: str = "sequence",
    position_ids: torch.Tensor | None = None,
    shift_labels: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    logit_scale: float = 1.0,
    final_logit_softcapping: float | None = None,
) -> tuple[TokenLosses, MaskStats | None]:
    """The per-target form of :func:`chunked_masked_causal_lm_loss`: what TRL's fused LM head returns (per-token
    log-probs, entropy, argmax hit, label mask) on the labels with the dropped targets set to -100.

    ``tokens.nll.sum()`` divided by the kept count (or ``num_items_in_batch``) is
    :func:`chunked_masked_causal_lm_loss`; the mask is the same one (SLowED's entropies from pass 1). A micro-batch
    that keeps nothing gives zeros still connected to every input.
    """
    r = _masked_rows(
        hidden_states,
        lm_head,
        labels,
        mask_ratio,
        scope,
        position_ids,
        shift_labels,
        chunk_size,
        logit_scale,
        final_logit_softcapping,
    )
    batch, width = r.shape
    device = r.hidden.device
    kept_rows = r.rows[r.keep]
    nll = torch.zeros(batch * width, dtype=torch.float32, device=device)
    if kept_rows.numel():
        nll = nll.index_put((kept_rows,), r.kept_ce(chunk_size, logit_scale, final_logit_softcapping))
    else:
        nll = nll + r.connected_zero()
    kept = torch.zeros(batch * width, dtype=torch.bool, device=device)
    kept[kept_rows] = True
    entropy = torch.zeros(batch * width, dtype=torch.float32, device=device)
    entropy[kept_rows] = r.entropy[r.keep]
    hit = torch.zeros(batch * width, dtype=torch.bool, device=device)
    hit[kept_rows] = r.hit[r.keep]
    end = width - r.drop_last

    def shaped(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, width)[:, :end]

    return TokenLosses(shaped(nll), shaped(kept), shaped(entropy), shaped(hit)), r.stats


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "chunked_masked_causal_lm_loss",
    "chunked_masked_token_losses",
    "head_row_stats",
    "lm_head_parameters",
]
