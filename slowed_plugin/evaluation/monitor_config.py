"""The safety monitor's settings as a plain mapping (Axolotl's ``slowed.safety_monitor`` block).

Validation only, with no heavy import (no torch, no transformers), so that a config object can
check the block when it is read, before any model is loaded:

    from slowed_plugin.evaluation.monitor_config import check_monitor_config
    settings = check_monitor_config(value, key="slowed.safety_monitor")   # a plain dict, or ValueError

:meth:`slowed_plugin.trainer.monitor.SafetyMonitorCallback.from_config` builds the callback from it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_every(every: Any, key: str = "every") -> None:
    if every == "epoch" and isinstance(every, str):
        return
    if _is_int(every) and every > 0:
        return
    raise ValueError(f"`{key}` must be `epoch` or a positive number of optimizer steps; got {every!r}.")


def check_monitor_config(value: Any, key: str = "slowed.safety_monitor") -> dict[str, Any]:
    """The mapping as a plain dict after checking every key and value; ``ValueError`` naming the key otherwise."""
    if not isinstance(value, Mapping):
        raise ValueError(f"`{key}` must be a mapping such as {{prompts: walledai/AdvBench, limit: 32}}; got {value!r}.")
    unknown = [k for k in value if k not in CONFIG_KEYS]
    if unknown:
        raise ValueError(
            f"`{key}.{unknown[0]}` is not a safety monitor key (got {value[unknown[0]]!r}); "
            f"allowed keys: {', '.join(CONFIG_KEYS)}."
        )
    prompts = value.get("prompts")
    if prompts is None:
        raise ValueError(
            f"`{key}.prompts` is required: a list of held-out harmful prompts, a local file, or a hub dataset id, "
            f"e.g. `{key}: {{prompts: walledai/AdvBench, limit: 32}}`."
        )
    if isinstance(prompts, str):
        if not prompts.strip():
            raise ValueError(f"`{key}.prompts` must not be empty.")
    elif not (isinstance(prompts, Sequence) and prompts and all(isinstance(p, str) for p in prompts)):
        raise ValueError(
            f"`{key}.prompts` must be a file, a hub dataset id, or a non-empty list of strings; got {prompts!r}."
        )
    for name in ("limit", "max_new_tokens", "batch_size"):
        v = value.get(name)
        if v is not None and not (_is_int(v) and v > 0):
            raise ValueError(f"`{key}.{name}` must be a positive integer; got {v!r}.")
    if "seed" in value and not _is_int(value["seed"]):
        raise ValueError(f"`{key}.seed` must be an integer; got {value['seed']!r}.")
    if "every" in value:
        check_every(value["every"], f"{key}.every")
    ratio = value.get("min_safety_ratio")
    if ratio is not None and not (
        isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and math.isfinite(ratio) and 0 <= ratio <= 1
    ):
        raise ValueError(
            f"`{key}.min_safety_ratio` must be a number in [0, 1] (a share, 0.5 = half the prompts), or null; got {ratio!r}."
        )
    for name in ("keep_safest", "eval_at_start", "restore_on_stop"):
        if name in value and not isinstance(value[name], bool):
            raise ValueError(f"`{key}.{name}` must be true or false; got {value[name]!r}.")
    if "use_chat_template" in value and value["use_chat_template"] not in (None, True, False):
        raise ValueError(f"`{key}.use_chat_template` must be null, true or false; got {value['use_chat_template']!r}.")
    for name in ("judge", "judge_format", "prompt_column", "log_key"):
        v = value.get(name)
        if v is not None and (not isinstance(v, str) or not v.strip()):
            raise ValueError(f"`{key}.{name}` must be a non-empty string; got {v!r}.")
    judge_format = value.get("judge_format")
    if judge_format is not None and judge_format not in ("conversation", "walledguard", "answer"):
        if "{answer}" not in judge_format:
            raise ValueError(
                f"`{key}.judge_format` must be conversation, walledguard, answer, or a format containing "
                f"{{answer}}; got {judge_format!r}."
            )
    return dict(value)
