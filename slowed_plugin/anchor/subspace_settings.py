"""The safety subspace's settings (the ``safety_subspace`` mapping): keys, help, defaults and one check.

Pure Python (no torch), like :mod:`.settings`, so that a config checks the block before any model is loaded.
"""

from __future__ import annotations

from typing import Any

from ..validate import (
    SLowEDConfigError,
    Spelling,
    check_optional_name,
    check_positive_int,
    check_prompted_block,
    check_prompts,
    check_use_chat_template,
    yaml_spelling,
)

# key -> help; the order is the docs' order (docs/anchor.md lists every key).
CONFIG_KEYS: dict[str, str] = {
    "prompts": "Harmful requests (a list, a local .csv/.jsonl/.json/.txt file, or a hub dataset id; the anchor's "
    "file serves): the starting model's hidden states on them, against those on `benign_prompts`, give the "
    "directions. Required.",
    "benign_prompts": "Benign requests of the same style, read the same way. Required (the directions are a "
    "difference of means).",
    "directions": "Directions per residual stream: 1 (default) is the difference of the mean hidden states at "
    "the last prompt token; k > 1 adds the top k-1 singular directions of the per-prompt differences.",
    "prompt_column": "Column holding the prompts in a CSV/JSONL/hub set; default: prompt, goal, instruction, ... .",
    "use_chat_template": "null (default): render the prompts like the safety anchor does (the training set's "
    "format); true or false: with or without the chat template.",
    "batch_size": "Prompts run through the starting model together; default 16.",
}

DEFAULTS: dict[str, Any] = {
    "directions": 1,
    "prompt_column": None,
    "use_chat_template": None,
    "batch_size": 16,
}


def _example(spelling: Spelling) -> str:
    if spelling.yaml:
        return "{prompts: ./anchor_harmful.txt, benign_prompts: ./anchor_benign.txt}"
    return "{'prompts': './anchor_harmful.txt', 'benign_prompts': './anchor_benign.txt'}"


def check_subspace_config(value: Any, spelling: Spelling | None = None) -> dict[str, Any]:
    """The mapping with every key checked and every default filled in; one-line :class:`SLowEDConfigError`."""
    spelling = spelling if spelling is not None else yaml_spelling("slowed.safety_subspace")
    prompts = "harmful requests as a list, a local file, or a hub dataset id (the safety anchor's serve)"
    check_prompted_block(value, spelling, CONFIG_KEYS, "safety subspace", _example(spelling), prompts)
    out = {**DEFAULTS, **value}
    check_prompts(out["prompts"], "prompts", spelling)
    if out.get("benign_prompts") is None:
        raise SLowEDConfigError(
            f"{spelling.key('benign_prompts')} is required: the safety directions are the difference between the "
            f"hidden states on harmful and on benign prompts, e.g. {_example(spelling)}."
        )
    check_prompts(out["benign_prompts"], "benign_prompts", spelling)
    out["directions"] = check_positive_int(out["directions"], "directions", spelling)
    out["batch_size"] = check_positive_int(out["batch_size"], "batch_size", spelling)
    check_use_chat_template(out["use_chat_template"], spelling)
    check_optional_name(out["prompt_column"], "prompt_column", spelling)
    return out
