"""``entropy_source: reference`` on a training set: the initial model's mask (:mod:`slowed_plugin.core.reference_mask`)
written into a ``datasets`` dataset's labels, once, through ``dataset.map``."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from torch import nn

from ..core.hidden_states_loss import DEFAULT_CHUNK_SIZE
from ..core.reference_mask import reference_masked_labels

__all__ = ["apply_reference_mask", "reference_mask_fn"]


def reference_mask_fn(
    model: nn.Module,
    mask_ratio: float,
    scope: str = "sequence",
    batch_size: int = 8,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    labels_column: str = "labels",
) -> Callable[[dict[str, list]], dict[str, list]]:
    """A function for ``dataset.map(fn, batched=True)`` that rewrites ``labels_column`` with the
    reference mask (columns ``input_ids``, optional ``labels``, ``seq_lengths``, ``position_ids``)."""

    def fn(batch: dict[str, list]) -> dict[str, list]:
        keys = [k for k in ("input_ids", labels_column, "seq_lengths", "position_ids") if k in batch]
        rows = [dict(zip(keys, values, strict=True)) for values in zip(*(batch[k] for k in keys), strict=True)]
        if labels_column != "labels":
            for row in rows:
                row["labels"] = row.pop(labels_column, None)
        return {labels_column: reference_masked_labels(model, rows, mask_ratio, scope, batch_size, chunk_size)}

    return fn


def apply_reference_mask(
    model: nn.Module,
    dataset: Any,
    mask_ratio: float,
    scope: str = "sequence",
    batch_size: int = 8,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    **map_kwargs: Any,
) -> Any:
    """``dataset`` (a ``datasets.Dataset``) with the reference mask written into its ``labels``.

    The map gets a fresh fingerprint: the cache key must not depend on hashing the model (slow, and
    wrong when two models hash alike), and a cached result from another model must never be reused.
    """
    import datasets

    kwargs = {"batched": True, "batch_size": 256, "new_fingerprint": uuid.uuid4().hex, "desc": "SLowED reference mask"}
    kwargs.update(map_kwargs)
    if isinstance(dataset, datasets.IterableDataset):  # its map takes no fingerprint and no desc
        kwargs.pop("new_fingerprint")
        kwargs.pop("desc")
    return dataset.map(reference_mask_fn(model, mask_ratio, scope, batch_size, chunk_size), **kwargs)
