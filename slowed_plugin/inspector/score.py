"""Scoring: the model's entropy at every target token of some training rows, and which of them Low-Entropy
Masking drops, selected by the training code itself (:func:`slowed_plugin.core.masking.mask_low_entropy_targets`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .encode import encode_example, token_texts


@dataclass
class InspectedExample:
    """One example: per input token its display text, whether it is a training target, the entropy
    of the prediction of it (targets only), and whether masking drops it."""

    tokens: list[str]
    token_ids: list[int]
    is_target: list[bool]
    entropy: list[float | None]
    dropped: list[bool]
    n_targets: int = 0
    n_dropped: int = 0
    threshold: float | None = None  # highest entropy dropped in this example


def inspect_examples(
    model: Any,
    tokenizer: Any,
    rows: list[Any],
    mask_ratio: float,
    mask_scope: str = "sequence",
    max_length: int | None = None,
) -> list[InspectedExample]:
    """Score ``rows`` in one padded batch and report, per token, entropy and whether it is dropped."""
    import torch

    from ..config import SLowEDConfig
    from ..core.masking import IGNORE_INDEX, mask_low_entropy_targets, token_entropy
    from ..evaluation.generation import model_device

    SLowEDConfig(tau=None, mask_ratio=mask_ratio, mask_scope=mask_scope)  # same validation as training
    if not rows:
        raise ValueError("No examples to inspect.")
    encoded = [encode_example(tokenizer, row, max_length) for row in rows]
    width = max(len(ids) for ids, _ in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, (ids, labs) in enumerate(encoded):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(labs)] = torch.tensor(labs)
        attention[i, : len(ids)] = 1
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
    finally:
        if was_training:
            model.train()
    masked, _ = mask_low_entropy_targets(logits, labels.to(logits.device), mask_ratio, mask_scope)
    entropy = token_entropy(logits[:, :-1]).cpu()
    targets = labels[:, 1:]
    dropped = (targets != IGNORE_INDEX) & (masked.cpu() == IGNORE_INDEX)

    out = []
    for i, (ids, _labs) in enumerate(encoded):
        n = len(ids)
        is_target = [False] + (targets[i, : n - 1] != IGNORE_INDEX).tolist()
        drop = [False] + dropped[i, : n - 1].tolist()
        ent: list[float | None] = [None] + [
            float(e) if t else None for e, t in zip(entropy[i, : n - 1].tolist(), is_target[1:], strict=True)
        ]
        dropped_entropies = [e for e, d in zip(ent, drop, strict=True) if d and e is not None]
        out.append(
            InspectedExample(
                tokens=token_texts(tokenizer, ids),
                token_ids=list(ids),
                is_target=is_target,
                entropy=ent,
                dropped=drop,
                n_targets=sum(is_target),
                n_dropped=sum(drop),
                threshold=max(dropped_entropies) if dropped_entropies else None,
            )
        )
    return out
