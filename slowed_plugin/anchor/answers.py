"""The anchor's rows: which prompts, the starting model's own greedy answers to them, and their cache.

Framework-neutral: a front end hands in how a prompt is rendered for generation (TRL: the chat template or the
raw prompt; Axolotl: its prompt strategy) and gets back ``(prompt, answer, kind)`` rows to tokenize its own way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..files import atomic_write_text
from ..log import get_logger

logger = get_logger()

CACHE_DIR = "slowed-anchor"
_CACHE_VERSION = 1  # bump when the rows' meaning changes, so that old caches are not reused


@dataclass(frozen=True)
class AnchorRow:
    """One request and the starting model's own answer to it."""

    prompt: str
    kind: str  # "harmful" or "benign"
    text: str  # what the model was fed (the rendered prompt)
    answer: str  # the decoded continuation, unstripped (it is trained on as generated)


def draw_prompts(harmful: Sequence[str], benign: Sequence[str], count: int | None, seed: int) -> list[tuple[str, str]]:
    """``(prompt, kind)`` pairs: all of them when ``count`` is None, else ``count`` drawn with ``seed``.

    With benign prompts, half the draw (rounded down) is benign. A pool smaller than its share is repeated
    whole before any prompt repeats a third time, so each prompt appears as evenly as possible.
    """
    if count is None:
        return [(p, "harmful") for p in harmful] + [(p, "benign") for p in benign]
    n_benign = count // 2 if benign else 0
    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    for pool, n, kind in ((harmful, count - n_benign, "harmful"), (benign, n_benign, "benign")):
        order: list[str] = []
        while len(order) < n:
            order += rng.sample(list(pool), len(pool))
        out += [(p, kind) for p in order[:n]]
    return out


def cache_key(model: Any, texts: Sequence[tuple[str, str]], settings: dict[str, Any]) -> str:
    """A digest of what the answers depend on: the model's path and config, the rendered prompts, the settings.

    The weights themselves are not read (that would cost a pass over the whole model): a different model saved
    under the same path with the same config needs ``cache: false`` or an emptied cache folder.
    """
    config = getattr(model, "config", None)
    description = {
        "version": _CACHE_VERSION,
        "model": getattr(config, "name_or_path", None) or type(model).__name__,
        "config": config.to_diff_dict() if hasattr(config, "to_diff_dict") else None,
        "texts": list(texts),
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


def cache_path(output_dir: str, key: str) -> str:
    return os.path.join(output_dir, CACHE_DIR, f"anchor-{key[:16]}.json")


def read_cache(path: str, key: str) -> list[AnchorRow] | None:
    """The rows cached at ``path`` for ``key``; None when there are none (or they are for another key)."""
    try:
        with open(path, encoding="utf-8") as handle:
            cached = json.load(handle)
    except (OSError, ValueError):
        return None
    if cached.get("key") != key:
        return None
    return [AnchorRow(**row) for row in cached["rows"]]


def write_cache(path: str, key: str, rows: Sequence[AnchorRow], settings: dict[str, Any]) -> None:
    body = {"key": key, "settings": settings, "rows": [asdict(r) for r in rows]}
    atomic_write_text(path, json.dumps(body, indent=1, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def adapters_disabled(model: Any) -> Iterator[None]:
    """The model as it started: PEFT adapters off (PEFT's own ``disable_adapter``); a model without adapters as is."""
    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        yield
        return
    with disable():
        yield


def generate_rows(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[tuple[str, str]],
    render: Callable[[str], str],
    settings: dict[str, Any],
    add_special_tokens: bool,
) -> list[AnchorRow]:
    """Greedy answers of the starting model (adapters off) to each distinct prompt, in the order of ``prompts``."""
    from ..evaluation.generation import generate_from_texts

    distinct = list(dict.fromkeys(prompts))
    texts = [render(p) for p, _ in distinct]
    with adapters_disabled(model):
        answers = generate_from_texts(
            model,
            tokenizer,
            texts,
            settings["max_new_tokens"],
            settings["batch_size"],
            add_special_tokens=add_special_tokens,
            strip=False,
        )
    by_prompt = {
        pk: AnchorRow(pk[0], pk[1], text, answer) for pk, text, answer in zip(distinct, texts, answers, strict=True)
    }
    return [by_prompt[pk] for pk in prompts]


def refusal_share(rows: Sequence[AnchorRow]) -> float | None:
    """Share of the distinct harmful answers that the offline refusal judge calls refusals; None without any."""
    from ..evaluation.judges import RefusalJudge

    harmful = list({r.prompt: r for r in rows if r.kind == "harmful"}.values())
    if not harmful:
        return None
    verdicts = RefusalJudge().verdicts([r.prompt for r in harmful], [r.answer.strip() for r in harmful])
    return sum(v.safe for v in verdicts) / len(verdicts)


def normalised(prompt: str) -> str:
    """How two prompts are compared for overlap: case and runs of white space do not count."""
    return " ".join(prompt.casefold().split())


def overlap_count(anchor: Sequence[str], evaluated: Sequence[str]) -> int:
    """Number of distinct evaluated prompts that are also anchor prompts."""
    anchored = {normalised(p) for p in anchor}
    return len({normalised(p) for p in evaluated} & anchored)
