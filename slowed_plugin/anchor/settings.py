"""The safety anchor's settings (the ``safety_anchor`` mapping): their keys, help, defaults and one check.

Pure Python (no torch, no transformers), like :mod:`slowed_plugin.monitor.settings`, so that a config checks the
block when it is read, before any model is loaded.
"""

from __future__ import annotations

from typing import Any

from ..validate import (
    SLowEDConfigError,
    Spelling,
    as_number,
    check_bool,
    check_choice,
    check_int,
    check_optional_name,
    check_positive_int,
    check_prompted_block,
    check_prompts,
    check_share,
    check_use_chat_template,
    shown,
    yaml_spelling,
)

MODES = ("replay", "gradient", "kl")

# key -> help; the order is the docs' order (docs/anchor.md lists every key).
CONFIG_KEYS: dict[str, str] = {
    "prompts": "Harmful requests the starting model answers before training (its own answers are the anchor): a "
    "list of strings, a local .csv/.jsonl/.json/.txt file, or a hub dataset id. Required. Must not overlap "
    "`safety_monitor.prompts` (evaluating on anchored prompts would overstate safety).",
    "benign_prompts": "Optional benign requests answered the same way, so that the anchor also keeps helpfulness; "
    "replay then draws half of its rows from them.",
    "prompt_column": "Column holding the prompts in a CSV/JSONL/hub set; default: prompt, goal, instruction, ... .",
    "mode": "`replay` (default): the anchor rows are mixed into the training data. `gradient`: no anchor rows "
    "in the loss; each optimizer step's gradient g is projected so that it does not increase the loss on a "
    "batch of anchor rows (A-GEM): if g·r < 0, g -= (g·r / r·r) r. Costs one more forward and backward per step. "
    "`kl` (issue 29): no anchor rows in the loss; each optimizer step adds ratio/(1-ratio) times the per-token "
    "KL(starting model || model) on a batch of anchor rows (teacher: the adapters off; LoRA only). Costs two "
    "more forwards and a backward per step.",
    "ratio": "Replay: share of anchor rows in the mixed training set, 0 < ratio < 1; default 0.05 (n training "
    "rows gain round(ratio·n / (1 - ratio)) anchor rows, each seen once per epoch). KL: the term's weight is "
    "ratio / (1 - ratio).",
    "replay_batch_size": "Gradient and KL modes: anchor rows in each step's reference batch; default: the trainer's "
    "per-device batch size.",
    "seed": "Seed of the draw of which prompts answer and of the gradient mode's batch order; default 0.",
    "max_new_tokens": "Tokens generated per anchor answer; default 64.",
    "batch_size": "Prompts generated together; default 16.",
    "use_chat_template": "null (default): follow the training set's format (conversational rows are prompted "
    "through the chat template, plain prompt-completion and text rows raw); true or false: render a text "
    "dataset's prompts with or without the template, and say the format of a set TRL packs (required there; "
    "other formats must match it).",
    "min_refusal_share": "Warn when fewer than this share of the harmful anchor answers are refusals by the offline "
    "refusal judge (an anchor of a model that does not refuse preserves nothing); default 0.5.",
    "cache": "Keep the generated answers in {output_dir}/slowed-anchor/ and reuse them when model, prompts and "
    "settings are the same (a resumed run trains on the same rows); default true.",
}

DEFAULTS: dict[str, Any] = {
    "benign_prompts": None,
    "prompt_column": None,
    "mode": "replay",
    "ratio": 0.05,
    "replay_batch_size": None,
    "seed": 0,
    "max_new_tokens": 64,
    "batch_size": 16,
    "use_chat_template": None,
    "min_refusal_share": 0.5,
    "cache": True,
}


def _example(spelling: Spelling) -> str:
    if spelling.yaml:
        return "{prompts: ./anchor_prompts.txt, ratio: 0.05}"
    return "{'prompts': './anchor_prompts.txt', 'ratio': 0.05}"


def check_anchor_config(value: Any, spelling: Spelling | None = None) -> dict[str, Any]:
    """The mapping with every key checked and every default filled in; one-line :class:`SLowEDConfigError`
    naming the key otherwise. ``spelling``: where the mapping was written (``slowed.safety_anchor`` by default)."""
    spelling = spelling if spelling is not None else yaml_spelling("slowed.safety_anchor")
    prompts = "harmful requests (not the evaluated ones) as a list, a local file, or a hub dataset id"
    check_prompted_block(value, spelling, CONFIG_KEYS, "safety anchor", _example(spelling), prompts)
    out = {**DEFAULTS, **value}
    check_prompts(out["prompts"], "prompts", spelling)
    if out["benign_prompts"] is not None:
        check_prompts(out["benign_prompts"], "benign_prompts", spelling)
    check_choice("mode", out["mode"], MODES, spelling)
    ratio = as_number(out["ratio"])
    if ratio is None or not 0 < ratio < 1:
        raise SLowEDConfigError(
            f"{spelling.key('ratio')} must be a number with 0 < ratio < 1 (the share of anchor rows in the "
            f"training set, e.g. 0.05); got {shown(out['ratio'])}."
        )
    out["ratio"] = float(ratio)
    for name in ("max_new_tokens", "batch_size"):
        out[name] = check_positive_int(out[name], name, spelling)
    if out["replay_batch_size"] is not None:
        out["replay_batch_size"] = check_positive_int(out["replay_batch_size"], "replay_batch_size", spelling)
    out["seed"] = check_int(out["seed"], "seed", spelling)
    out["min_refusal_share"] = check_share(out["min_refusal_share"], "min_refusal_share", spelling) or 0.0
    check_bool(out["cache"], "cache", spelling)
    check_use_chat_template(out["use_chat_template"], spelling)
    check_optional_name(out["prompt_column"], "prompt_column", spelling)
    return out


def replay_row_count(n_rows: int, ratio: float) -> int:
    """Anchor rows added to ``n_rows`` training rows so that they make up ``ratio`` of the mixed set (at least 1)."""
    return max(1, round(ratio * n_rows / (1 - ratio)))
