"""The safety monitor's settings (the ``safety_monitor`` mapping): their keys, help, and one check of them all.

Pure Python (no torch, no transformers), so that a config can check the block when it is read, before any
model is loaded. :class:`~slowed_plugin.trainer.monitor.SafetyMonitorCallback` checks its keywords with the
same :func:`check_monitor_values`, worded for Python; :func:`check_monitor_config` checks a mapping worded for
where it was written (``slowed.safety_monitor`` in YAML by default).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..validate import (
    SLowEDConfigError,
    Spelling,
    check_bool,
    check_every,
    check_int,
    check_positive_int,
    check_prompted_block,
    check_prompts,
    check_share,
    check_use_chat_template,
    yaml_spelling,
)

LOG_KEY = "slowed/safety_ratio"

# key -> help; the order is the docs' order (docs/evaluation.md lists every key).
CONFIG_KEYS: dict[str, str] = {
    "prompts": "Held-out harmful prompts: a list of strings, a local .csv/.jsonl/.json/.txt file, or a hub "
    "dataset id (e.g. walledai/AdvBench). Required. Never use prompts the model trains on.",
    "limit": "Number of prompts drawn from `prompts` (reproducibly, with `seed`); default 32 for a file or hub id, "
    "all of a list. Each evaluation generates one answer per prompt.",
    "seed": "Seed of the `limit` draw; default 0.",
    "prompt_column": "Column holding the prompts in a CSV/JSONL/hub set; default: prompt, goal, instruction, ... .",
    "judge": "`refusal` (default; offline refusal-phrase judge, weak) or a guard model's path or hub id "
    "(e.g. walledai/walledguard-c), loaded once and kept on the training device.",
    "judge_format": "How a guard sees a (prompt, answer) pair: conversation, walledguard, answer, or a format "
    "with {answer} and optionally {prompt}; default chosen from the guard (see docs/evaluation.md).",
    "every": "`epoch` (default: after each epoch, as the paper plots) or a positive number of optimizer steps.",
    "eval_at_start": "Also evaluate before the first step (the curve's starting point and the timing shown at "
    "startup); default true.",
    "max_new_tokens": "Tokens generated per answer; default 64. Refusals show in the first few tokens.",
    "batch_size": "Prompts generated together; default 16.",
    "use_chat_template": "null (default): use the tokenizer's chat template when it has one; true; false.",
    "min_safety_ratio": "Stop training at the first evaluation whose safety ratio is below this value (0..1), "
    "and put back the weights of the last evaluation that met it; default null (never stop).",
    "keep_safest": "Save the model of the safest evaluation to {output_dir}/slowed-safest; default false.",
    "restore_on_stop": "With min_safety_ratio: put the last safe weights back into the model when stopping; "
    "default true. Costs a CPU copy of the trainable weights (small for LoRA).",
    "log_key": f"Name of the logged metric; default {LOG_KEY}.",
}

_JUDGE_FORMATS = ("conversation", "walledguard", "answer")
FILE_LIMIT = 32  # prompts drawn from a file or hub set when `limit` is not given


def evaluated_limit(prompts: Any, limit: int | None) -> int | None:
    """How many prompts the monitor draws from ``prompts``: ``limit``, else all of a list, else :data:`FILE_LIMIT`."""
    return FILE_LIMIT if isinstance(prompts, str) and limit is None else limit


def _example(spelling: Spelling) -> str:
    if spelling.yaml:
        return "{prompts: walledai/AdvBench, limit: 32}"
    return "{'prompts': 'walledai/AdvBench', 'limit': 32}"


def check_monitor_values(values: Mapping[str, Any], spelling: Spelling) -> dict[str, Any]:
    """Every given value checked and converted (numbers as users write them); keys must be :data:`CONFIG_KEYS`.

    ``judge`` may also be a ready :class:`~slowed_plugin.evaluation.judges.Judge` (Python callers).
    """
    out = dict(values)
    if "prompts" in values:
        check_prompts(values["prompts"], "prompts", spelling)
    for name in ("limit", "max_new_tokens", "batch_size"):
        if values.get(name) is not None:
            out[name] = check_positive_int(values[name], name, spelling)
    if "seed" in values:
        out["seed"] = check_int(values["seed"], "seed", spelling)
    if "every" in values:
        out["every"] = check_every(values["every"], "every", spelling)
    if "min_safety_ratio" in values:
        out["min_safety_ratio"] = check_share(values["min_safety_ratio"], "min_safety_ratio", spelling)
    for name in ("keep_safest", "eval_at_start", "restore_on_stop"):
        if name in values:
            check_bool(values[name], name, spelling)
    check_use_chat_template(values.get("use_chat_template"), spelling)
    for name in ("judge", "judge_format", "prompt_column", "log_key"):
        v = values.get(name)
        if name == "judge" and v is not None and not isinstance(v, str):
            continue  # a Judge object
        if v is not None and (not isinstance(v, str) or not v.strip()):
            raise SLowEDConfigError(f"{spelling.key(name)} must be a non-empty string; got {v!r}.")
    judge_format = values.get("judge_format")
    if judge_format is not None and judge_format not in _JUDGE_FORMATS and "{answer}" not in judge_format:
        raise SLowEDConfigError(
            f"{spelling.key('judge_format')} must be conversation, walledguard, answer, or a format containing "
            f"{{answer}}; got {judge_format!r}."
        )
    return out


def check_monitor_config(
    value: Any, key: str = "slowed.safety_monitor", spelling: Spelling | None = None
) -> dict[str, Any]:
    """The mapping as a plain dict after checking every key and value; :class:`SLowEDConfigError` (a
    ``ValueError``) naming the key otherwise. ``key`` is where the mapping was written (YAML by default);
    ``spelling`` overrides it (Python keywords: ``Spelling("safety_monitor")``)."""
    spelling = spelling if spelling is not None else yaml_spelling(key)
    prompts = "a list of held-out harmful prompts, a local file, or a hub dataset id"
    check_prompted_block(value, spelling, CONFIG_KEYS, "safety monitor", _example(spelling), prompts)
    return check_monitor_values(value, spelling)
