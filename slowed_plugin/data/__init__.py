"""Data shipped with the package.

:data:`COT_TINY` (``cot_tiny.jsonl``): a small chain-of-thought set of prompt/completion rows; what
``slowed quickstart`` trains on, what ``slowed inspect`` shows by default, what the tiny Axolotl recipe and the
tests train on.
"""

from __future__ import annotations

import json
from pathlib import Path

COT_TINY = Path(__file__).resolve().with_name("cot_tiny.jsonl")


def cot_tiny_rows() -> list[dict[str, str]]:
    """The prompt/completion rows of :data:`COT_TINY`."""
    return [json.loads(line) for line in COT_TINY.read_text(encoding="utf-8").splitlines() if line.strip()]
