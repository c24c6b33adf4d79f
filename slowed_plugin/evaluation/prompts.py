"""Prompt sets: local CSV / JSONL / JSON / TXT files or hub datasets, with reproducible subsets.

AdvBench (``walledai/AdvBench`` on the hub, or ``harmful_behaviors.csv`` from the original
repository, column ``goal``) holds 520 prompts; the paper judged 80 of them. Which 80 is not
published, so ``limit=80, seed=S`` draws a fixed subset: the same ``(limit, seed)`` gives the
same prompts on every machine and every run, in their original order.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

# Column names tried in order when none is given.
PROMPT_COLUMNS = ("prompt", "goal", "instruction", "question", "query", "behavior", "text", "input")
LOCAL_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".txt")


def load_prompts(
    source: str | Sequence[str],
    limit: int | None = None,
    seed: int = 0,
    column: str | None = None,
    split: str | None = None,
    subset: str | None = None,
) -> list[str]:
    """Prompts from ``source``: a list of strings, a local file, or a hub dataset id.

    Files: ``.txt`` has one prompt per non-empty line; ``.csv``/``.tsv``, ``.jsonl`` and ``.json``
    (a list of objects or strings) take ``column``, or the first of :data:`PROMPT_COLUMNS` present,
    or the only column. A hub dataset loads with ``datasets.load_dataset(source, subset, split=...)``
    (split default ``train``, else the first split). ``limit`` keeps a random subset of that size
    drawn with ``seed``, in source order.
    """
    if isinstance(source, str):
        prompts = list(_read_once(source, column, split, subset))
    else:
        prompts = [str(p) for p in source]
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise ValueError(f"No prompts found in {_describe(source)}.")
    return subsample(prompts, limit, seed)


def subsample(prompts: list[str], limit: int | None, seed: int = 0) -> list[str]:
    """``limit`` prompts drawn with ``seed``, kept in their original order; all of them when
    ``limit`` is None or not smaller than the set."""
    if limit is None or limit >= len(prompts):
        return list(prompts)
    if limit < 1:
        raise ValueError(f"`limit` must be a positive number of prompts, got {limit}.")
    chosen = sorted(random.Random(seed).sample(range(len(prompts)), limit))
    return [prompts[i] for i in chosen]


def _describe(source: Any) -> str:
    return repr(source) if isinstance(source, str) else f"a list of {len(source)} items"


# What each source held when it was read, by what identifies it: a run checks its prompt sources at config
# validation, at the callback's construction and when the anchor attaches, and reads each file or hub dataset once.
# A file's key holds its modification time and size, so an edited file is read again. Bounded: the sources a run
# reads are few (an anchor's, a monitor's), and a long-lived process (a notebook) that reads many hub datasets or
# edits a file often keeps only the most recent.
READ_CACHE_SIZE = 8
_READ: OrderedDict[tuple, tuple[str, ...]] = OrderedDict()


def _read_once(source: str, column: str | None, split: str | None, subset: str | None) -> tuple[str, ...]:
    if os.path.isfile(source):
        stat = os.stat(source)
        key: tuple = (os.path.abspath(source), stat.st_mtime_ns, stat.st_size, column, split, subset)
    else:
        key = (source, column, split, subset)
    if key in _READ:
        _READ.move_to_end(key)
        return _READ[key]
    _READ[key] = rows = tuple(_load_source(source, column, split, subset))
    while len(_READ) > READ_CACHE_SIZE:
        _READ.popitem(last=False)  # the least recently used
    return rows


def _load_source(source: str, column: str | None, split: str | None, subset: str | None) -> list[str]:
    lower = source.lower()
    if os.path.isfile(source):
        if lower.endswith(".txt"):
            with open(source, encoding="utf-8") as handle:
                return [line.strip() for line in handle if line.strip()]
        if lower.endswith((".csv", ".tsv")):
            with open(source, encoding="utf-8", newline="") as handle:
                rows = list(csv.DictReader(handle, delimiter="\t" if lower.endswith(".tsv") else ","))
            return _column(rows, column, source)
        if lower.endswith(".jsonl"):
            with open(source, encoding="utf-8") as handle:
                rows = [json.loads(line) for line in handle if line.strip()]
            return _column(rows, column, source)
        if lower.endswith(".json"):
            with open(source, encoding="utf-8") as handle:
                rows = json.load(handle)
            if isinstance(rows, dict):  # {"prompts": [...]} or {"train": [...]}
                lists = [v for v in rows.values() if isinstance(v, list)]
                if len(lists) != 1:
                    raise ValueError(f"{source}: a JSON object must hold exactly one list of prompts.")
                rows = lists[0]
            return _column(rows, column, source)
        raise ValueError(f"{source}: prompt files must end in {', '.join(LOCAL_SUFFIXES)}.")
    if lower.endswith(LOCAL_SUFFIXES):
        raise FileNotFoundError(f"Prompt file {source} does not exist.")
    return _load_hub(source, column, split, subset)


def _column(rows: list[Any], column: str | None, source: str) -> list[str]:
    if not rows:
        return []
    if all(isinstance(r, str) for r in rows):
        return list(rows)
    if not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{source}: every row must be an object (or every row a string).")
    keys = list(rows[0].keys())
    name = _pick_column(keys, column, source)
    missing = [i for i, r in enumerate(rows) if name not in r]
    if missing:
        raise ValueError(f"{source}: row {missing[0]} has no `{name}` field.")
    return [str(r[name]) for r in rows]


def _pick_column(keys: Sequence[str], column: str | None, source: str) -> str:
    if column is not None:
        if column not in keys:
            raise ValueError(f"{source} has no column `{column}`; its columns: {', '.join(keys)}.")
        return column
    for name in PROMPT_COLUMNS:
        if name in keys:
            return name
    if len(keys) == 1:
        return keys[0]
    raise ValueError(
        f"Cannot tell which column of {source} holds the prompts (columns: {', '.join(keys)}); "
        "name it with `column` (`--prompt-column`)."
    )


def _load_hub(source: str, column: str | None, split: str | None, subset: str | None) -> list[str]:
    import datasets

    try:
        loaded = datasets.load_dataset(source, subset, split=split) if split else datasets.load_dataset(source, subset)
    except Exception as err:  # datasets raises many types for "not found"/"offline"
        raise ValueError(
            f"Prompt set {source!r} is not a local .csv/.jsonl/.json/.txt file and could not be loaded from the "
            f"hub ({type(err).__name__}: {err})."
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        name = "train" if "train" in loaded else next(iter(loaded))
        loaded = loaded[name]
    name = _pick_column(loaded.column_names, column, source)
    return [str(v) for v in loaded[name]]
