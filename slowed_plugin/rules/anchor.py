"""The rules on the safety anchor: its prompt sources (checked before any model loads), the engines its gradient
mode cannot run under, and the Axolotl data formats it can write its rows in."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..config import SLowEDConfig
from ..validate import Spelling
from .rule import AXOLOTL, TRL

if TYPE_CHECKING:
    from transformers import Trainer, TrainingArguments

ANCHOR_DATASET_TYPES = ("alpaca", "chat_template")


def _anchor_key(spelling: Spelling, key: str) -> str:
    """`` `slowed.safety_anchor.prompts` `` (YAML) or `` `safety_anchor.prompts` `` (Python), as the value checks
    of :mod:`slowed_plugin.anchor.settings` name them."""
    return spelling.child("safety_anchor").key(key)


# ---------------------------------------------------------------------------------------------- prompt sources
def anchor_missing_file(config: SLowEDConfig, spelling: Spelling = TRL) -> str | None:
    """The refusal of an anchor prompt source that names a local file that is not there, or that holds no prompt
    (an empty file, a header alone), or None. Before the model loads: otherwise a missing name would be taken for a
    hub dataset id, and an empty file would fail when the anchor reads it, both after the model loaded. A local file
    is read here (once per process: the anchor reuses the read)."""
    if not config.anchored:
        return None
    from ..evaluation.prompts import LOCAL_SUFFIXES, load_prompts

    for key in ("prompts", "benign_prompts"):
        source = config.safety_anchor[key]
        if not (isinstance(source, str) and source.lower().endswith(LOCAL_SUFFIXES)):
            continue
        if not os.path.isfile(source):
            return (
                f"{_anchor_key(spelling, key)} names a local file that does not exist: {source!r} (relative paths "
                f"resolve against the folder you run from, here {os.getcwd()!r}); give an existing "
                ".txt/.csv/.jsonl/.json file, a list of prompts, or a hub dataset id."
            )
        try:
            load_prompts(source, column=config.safety_anchor.get("prompt_column"))
        except ValueError as err:  # no prompt in it, or not the column asked for
            empty = os.path.getsize(source) == 0
            detail = "" if empty or str(err).startswith("No prompts found") else f" ({str(err).rstrip('.')})"
            return (
                f"{_anchor_key(spelling, key)} names a local file that {'is empty' if empty else 'holds no prompt'}: "
                f"{source!r}{detail}; give a file with one prompt a line (.txt) or a prompt column "
                "(.csv/.jsonl/.json), or a list of prompts."
            )
    return None


def anchor_overlap(config: SLowEDConfig, spelling: Spelling = TRL) -> str | None:
    """The refusal of an anchor whose prompts are also the safety monitor's (evaluated) prompts, or None.

    Reads both prompt sources (lists, local files or hub ids) as the anchor and the monitor will; each source is
    read once per process (:func:`slowed_plugin.evaluation.prompts.load_prompts` keeps what it read)."""
    if not (config.anchored and config.safety_monitor):
        return None
    from ..anchor.answers import overlap_count
    from ..evaluation.prompts import load_prompts
    from ..monitor.settings import evaluated_limit

    anchor, monitor = config.safety_anchor, config.safety_monitor
    anchored = load_prompts(anchor["prompts"], column=anchor["prompt_column"])
    if anchor["benign_prompts"] is not None:
        anchored += load_prompts(anchor["benign_prompts"], column=anchor["prompt_column"])
    limit = evaluated_limit(monitor["prompts"], monitor.get("limit"))
    evaluated = load_prompts(
        monitor["prompts"], limit=limit, seed=monitor.get("seed", 0), column=monitor.get("prompt_column")
    )
    count = overlap_count(anchored, evaluated)
    if count:
        return (
            f"The safety anchor's prompts overlap the safety monitor's: {count} of the {len(set(evaluated))} "
            "evaluated prompts are anchor prompts, so the monitor would measure answers the anchor trains on and "
            f"overstate safety. Give {_anchor_key(spelling, 'prompts')} a disjoint set (e.g. AdvBench rows not "
            "among the evaluated ones)."
        )
    return None


def anchor_source_problem(config: SLowEDConfig, spelling: Spelling = TRL) -> str | None:
    """The first problem of the anchor's prompt sources (a missing file, an overlap with the monitor), or None."""
    return anchor_missing_file(config, spelling) or anchor_overlap(config, spelling)


# ---------------------------------------------------------------------------------------------- gradient and KL modes
def _sharded(setting: str, spelling: Spelling) -> str:
    mode = _anchor_key(spelling, "mode")
    replay = "`mode: replay`" if spelling.yaml else "`'mode': 'replay'`"
    return (
        f"The safety anchor's gradient and KL modes ({mode}: gradient, kl) are not supported with {setting}: the "
        "engine shards or partitions the gradients that the gradient constraint projects as one vector and that "
        f"the KL term adds outside the engine's backward. Use {replay} (the default), or train without the anchor."
    )


def sharded_args(args: TrainingArguments) -> str | None:
    if getattr(args, "deepspeed", None) or getattr(args, "deepspeed_plugin", None):
        return _sharded("DeepSpeed", TRL)
    if getattr(args, "fsdp_plugin_args", None) or getattr(args, "fsdp", None):
        return _sharded("FSDP", TRL)
    return None


def sharded_trainer(trainer: Trainer) -> str | None:
    if getattr(trainer, "is_deepspeed_enabled", False):
        return _sharded("DeepSpeed", TRL)
    if getattr(trainer, "is_fsdp_enabled", False):
        return _sharded("FSDP", TRL)
    return None


def sharded_axolotl(cfg: Mapping[str, Any]) -> str | None:
    for key in ("deepspeed", "fsdp", "fsdp_config"):
        if cfg.get(key):
            return _sharded(f"`{key}`", AXOLOTL)
    return None


# ---------------------------------------------------------------------------------------------- Axolotl data
def _first_dataset_type(cfg: Mapping[str, Any]) -> Any:
    # A mapping as written, or the dataset model Axolotl's validation has already built from it.
    datasets = cfg.get("datasets") or []
    first = datasets[0] if datasets else None
    return first.get("type") if isinstance(first, Mapping) else getattr(first, "type", None)


def anchor_dataset_type(cfg: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(base type, prompt style)`` of an Axolotl recipe's first dataset, parsed as Axolotl parses ``type:``."""
    kind = _first_dataset_type(cfg)
    if not isinstance(kind, str):
        return None, None
    base, _, style = kind.partition(":")
    return base, style or None


def unsupported_anchor_dataset(cfg: Mapping[str, Any]) -> str | None:
    """Why the anchor cannot write its rows in this recipe's data format, or None."""
    if anchor_dataset_type(cfg)[0] in ANCHOR_DATASET_TYPES:
        return None
    return (
        "`slowed.safety_anchor` writes its rows in the format of the first dataset and supports "
        f"`type: {' / '.join(ANCHOR_DATASET_TYPES)}` (alpaca with its styles); got `type: {_first_dataset_type(cfg)}`. "
        "Put an alpaca or chat_template dataset first, or drop the anchor."
    )
