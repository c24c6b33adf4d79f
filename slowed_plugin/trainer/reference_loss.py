"""The masked loss through transformers' own ``ForCausalLMLoss``: the reference every fused path is compared with.

It materialises the mask (:func:`slowed_plugin.core.masking.mask_low_entropy_targets`) and hands the kept targets to
the loss transformers itself trains with, so "SLowED's loss" means exactly transformers' causal-LM loss on the
labels with the dropped targets set to ``-100``. It lives outside :mod:`slowed_plugin.core` because it computes
with transformers, which the core only recognises.
"""

from __future__ import annotations

import torch
from transformers.loss.loss_utils import ForCausalLMLoss

from ..core import IGNORE_INDEX
from ..core.masking import MaskStats, mask_low_entropy_targets

__all__ = ["masked_causal_lm_loss"]


def masked_causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    mask_ratio: float,
    scope: str = "sequence",
    num_items_in_batch: torch.Tensor | int | None = None,
    position_ids: torch.Tensor | None = None,
    shift_labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, MaskStats | None]:
    """Cross-entropy over the kept targets, through transformers' own ``ForCausalLMLoss``.

    ``num_items_in_batch`` must be the kept count of the whole optimizer step (see
    :func:`kept_token_count`); without it the loss is the mean over this micro-batch's kept
    targets. ``mask_ratio=0`` calls ``ForCausalLMLoss`` unchanged: plain SFT, bit for bit.
    """
    vocab_size = logits.shape[-1]
    if mask_ratio == 0:
        return ForCausalLMLoss(
            logits, labels, vocab_size, num_items_in_batch=num_items_in_batch, shift_labels=shift_labels
        ), None
    masked, stats = mask_low_entropy_targets(logits, labels, mask_ratio, scope, position_ids, shift_labels)
    if shift_labels is None:
        # ForCausalLMLoss pads the shifted targets back to full length itself.
        masked = torch.nn.functional.pad(masked, (0, 1), value=IGNORE_INDEX)
    kept = masked != IGNORE_INDEX
    if num_items_in_batch is None and not kept.any():
        # A micro-batch with nothing to learn: zero loss that still reaches every parameter.
        return logits.sum() * 0.0, stats
    if num_items_in_batch is not None and torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.clamp_min(1)
    elif num_items_in_batch is not None:
        num_items_in_batch = max(int(num_items_in_batch), 1)
    loss = ForCausalLMLoss(logits, None, vocab_size, num_items_in_batch=num_items_in_batch, shift_labels=masked)
    return loss, stats
