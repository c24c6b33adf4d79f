"""``entropy_source: reference``: a static Low-Entropy mask, computed once from the initial model.

The paper's mask is *online*: each step drops the targets the model being trained is most sure
of, so the mask follows the model as it learns. The reference option instead scores every target
once, before training, with the initial model (adapters disabled), and writes the dropped targets
into the dataset as ``labels = -100``. Training then needs no entropy at all: any loss backend
(TRL's ``chunked_nll``, Liger, cut-cross-entropy, DFT) trains on the masked labels at no per-step
cost, and the trainer's own ``num_items_in_batch`` already counts only the kept targets.

Trade-off: the static mask removes what the *base* model already predicts confidently (the tokens
whose gradient would mostly push the model away from its initial distribution), but it does not
follow the model: tokens that become confident during training stay in the loss, and the share of
the loss that is masked is fixed at the start. It is an approximation of the paper's method, cheaper
per step; the online mask (default) is the paper's.

Scope: the mask is taken per example (``mask_scope: sequence``); a packed row (``seq_lengths`` or
``position_ids`` restarting at 0) is split into its examples, each scored on its own, as the
model would see it with document-aware attention. ``mask_scope: batch`` has no meaning here: batches
do not exist yet when the mask is computed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..validate import check_mask_ratio, check_reference_scope
from .hidden_states_loss import DEFAULT_CHUNK_SIZE, head_row_stats
from .lm_head import lm_head_parameters, output_head
from .masking import IGNORE_INDEX, check_finite, select_low_entropy, target_segments, token_entropy


@contextlib.contextmanager
def _initial_model(model: nn.Module) -> Iterator[nn.Module]:
    """The causal LM with adapters disabled and in eval mode (dropout off); restored afterwards."""
    was_training = model.training
    disable = getattr(model, "disable_adapter", None)  # PeftModel
    context = disable() if callable(disable) and hasattr(model, "get_base_model") else contextlib.nullcontext()
    model.eval()
    try:
        with context, torch.no_grad():
            yield model.get_base_model() if hasattr(model, "get_base_model") else model
    finally:
        model.train(was_training)


def _examples_of(example: dict[str, Any]) -> list[tuple[int, int]]:
    """``(start, end)`` of each example in one (possibly packed) row."""
    length = len(example["input_ids"])
    if example.get("seq_lengths") is not None:
        bounds, start = [], 0
        for size in example["seq_lengths"]:
            bounds.append((start, start + int(size)))
            start += int(size)
        return bounds
    if example.get("position_ids") is not None:
        starts = [t for t, p in enumerate(example["position_ids"]) if int(p) == 0] or [0]
        if starts[0] != 0:
            starts.insert(0, 0)
        return list(zip(starts, [*starts[1:], length], strict=True))
    return [(0, length)]


@torch.no_grad()
def _entropies(
    causal: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """Entropy (B, T) of the next-token distribution at every position of a right-padded batch."""
    split = output_head(causal, adapters_disabled=True)
    if split is None:
        # Not backbone + linear head: full logits, one row at a time to bound memory.
        rows = [
            token_entropy(causal(input_ids=ids[None], attention_mask=mask[None]).logits)[0]
            for ids, mask in zip(input_ids, attention_mask, strict=True)
        ]
        return torch.stack(rows)
    hidden = split.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    weight, bias = lm_head_parameters(split.head)
    flat = hidden.reshape(-1, hidden.shape[-1])
    _, entropy, _, _ = head_row_stats(
        flat,
        weight,
        bias,
        torch.zeros(flat.shape[0], dtype=torch.long, device=flat.device),
        None,
        chunk_size,
        split.logit_scale,
        split.softcap,
    )
    return entropy.view(hidden.shape[:2])


def reference_masked_labels(
    model: nn.Module,
    examples: Sequence[dict[str, Any]],
    mask_ratio: float,
    scope: str = "sequence",
    batch_size: int = 8,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> list[list[int]]:
    """New ``labels`` for tokenized ``examples``: the low-entropy targets of the initial model set to -100.

    Each example is a mapping with ``input_ids`` and ``labels`` (unshifted, ``-100`` = ignored,
    as transformers and TRL store them; ``input_ids`` stand in for missing labels), optionally
    ``seq_lengths`` or ``position_ids`` for packed rows. In each example, ``floor(mask_ratio * n)``
    of its ``n`` targets, those of lowest entropy under ``model`` with adapters disabled, are
    dropped, ties to the earlier position: the same selection as the online mask with
    ``mask_scope: sequence`` at step 0. Pure: the model and the examples are left as they were.
    """
    mask_ratio = check_mask_ratio(mask_ratio)
    check_reference_scope(scope)
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1; got {batch_size!r}.")
    out: list[list[int]] = []
    pieces: list[tuple[int, int, int]] = []  # (example index, start, end)
    for index, example in enumerate(examples):
        labels = list(example.get("labels") if example.get("labels") is not None else example["input_ids"])
        if len(labels) != len(example["input_ids"]):
            raise ValueError(
                f"Example {index}: `labels` has {len(labels)} entries for {len(example['input_ids'])} input ids."
            )
        out.append(labels)
        pieces.extend((index, start, end) for start, end in _examples_of(example) if end - start > 1)
    if mask_ratio == 0 or not pieces:
        return out

    with _initial_model(model) as causal:
        device = next(causal.parameters()).device
        for first in range(0, len(pieces), batch_size):
            group = pieces[first : first + batch_size]
            width = max(end - start for _, start, end in group)
            input_ids = torch.zeros(len(group), width, dtype=torch.long)
            attention_mask = torch.zeros(len(group), width, dtype=torch.long)
            labels = torch.full((len(group), width), IGNORE_INDEX, dtype=torch.long)
            for row, (index, start, end) in enumerate(group):
                input_ids[row, : end - start] = torch.as_tensor(examples[index]["input_ids"][start:end])
                attention_mask[row, : end - start] = 1
                labels[row, : end - start] = torch.as_tensor(out[index][start:end])
            labels[:, 0] = IGNORE_INDEX  # the first token of an example is never a target
            entropy = _entropies(causal, input_ids.to(device), attention_mask.to(device), chunk_size)
            targets = labels[:, 1:]
            candidates = targets != IGNORE_INDEX
            entropy = entropy[:, :-1].float().cpu()
            check_finite(entropy, candidates)
            dropped = select_low_entropy(entropy, candidates, mask_ratio, target_segments(targets, "sequence"))
            for row, (index, start, _) in enumerate(group):
                for t in dropped[row].nonzero().squeeze(1).tolist():
                    out[index][start + t + 1] = IGNORE_INDEX
    return out


__all__ = ["reference_masked_labels"]
