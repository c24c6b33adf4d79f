"""The rules on sharding engines: DeepSpeed ZeRO (its config read once, by :func:`read_deepspeed_config`) and FSDP.

Slow Tuning reads and writes ZeRO's fp32 master weights through DeepSpeed's API and gathers FSDP2's DTensor
shards for each norm (core/weight_access.py, core/slow_tuning.py); what it cannot reach is refused here, before
any model is loaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..validate import Spelling
from .rule import AXOLOTL, TRL, off

if TYPE_CHECKING:
    from transformers import Trainer, TrainingArguments


def read_deepspeed_config(value: Any) -> dict | None:
    """The DeepSpeed config that a ``deepspeed`` setting names: the mapping itself, or the JSON file at that path
    (relative to the folder you run from, as transformers and Axolotl read it); None when it cannot be read here
    (the trainer then reports the file itself)."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str) and os.path.isfile(value):
        try:
            with open(value, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError):
            return None
        return config if isinstance(config, dict) else None
    return None


def trainer_deepspeed_config(args: TrainingArguments) -> dict | None:
    """The DeepSpeed config of ``args``: transformers' parsed copy when it made one, else the setting read here."""
    parsed = getattr(args, "hf_deepspeed_config", None)
    if parsed is not None and isinstance(getattr(parsed, "config", None), dict):
        return parsed.config
    return read_deepspeed_config(getattr(args, "deepspeed", None))


def zero_stage(config: Mapping[str, Any]) -> Any:
    return (config.get("zero_optimization") or {}).get("stage", 0)


def deepspeed_refusal(setting: str, config: Mapping[str, Any], spelling: Spelling) -> str | None:
    """Why Slow Tuning cannot run under this DeepSpeed config (``setting`` names where it came from), or None."""
    stage = zero_stage(config)
    if stage not in (1, 2, 3):
        return (
            f"Slow Tuning supports DeepSpeed ZeRO stages 1, 2 and 3; got {setting} with zero_optimization.stage="
            f"{stage!r}. Set the stage to 1, 2 or 3, use DDP, or set {off(spelling, 'tau')}."
        )
    offload = ((config.get("zero_optimization") or {}).get("offload_optimizer") or {}).get("device", "none")
    if offload not in (None, "none"):
        return (
            f"Slow Tuning does not support DeepSpeed optimizer offload (got {setting} with "
            f"zero_optimization.offload_optimizer.device={offload!r}). Remove `offload_optimizer`, or set "
            f"{off(spelling, 'tau')}."
        )
    return None


def deepspeed_args(args: TrainingArguments) -> str | None:
    if getattr(args, "deepspeed", None):
        config = trainer_deepspeed_config(args)
        return None if config is None else deepspeed_refusal(f"`deepspeed={args.deepspeed!r}`", config, TRL)
    plugin = getattr(args, "deepspeed_plugin", None)
    if plugin is not None:
        config = getattr(plugin, "deepspeed_config", None) or {}
        return deepspeed_refusal("`ACCELERATE_USE_DEEPSPEED=true`", config, TRL)
    return None


def deepspeed_trainer(trainer: Trainer) -> str | None:
    # The trainer's flag covers both ways of enabling DeepSpeed: the arguments and the accelerate config.
    if getattr(trainer, "is_deepspeed_enabled", False):
        args = trainer.args
        deepspeed = getattr(args, "deepspeed", None)
        plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
        config = trainer_deepspeed_config(args) or getattr(plugin, "deepspeed_config", None) or {}
        setting = f"`deepspeed={deepspeed!r}`" if deepspeed else "DeepSpeed from the accelerate config"
        return deepspeed_refusal(setting, config, TRL)
    return None


def deepspeed_axolotl(cfg: Mapping[str, Any]) -> str | None:
    value = cfg.get("deepspeed")
    if not value:
        return None
    config = read_deepspeed_config(value)
    if config is None:  # not readable from here: the trainer's parsed config is checked when training starts
        return None
    return deepspeed_refusal(f"`deepspeed: {value}`", config, AXOLOTL)


def _fsdp_refusal(version: Any) -> str | None:
    if version == 2:
        return None
    return (
        f"Slow Tuning supports FSDP2 only (DTensor parameters, gathered for the norm); got fsdp_version={version}, "
        f"whose flattened parameters hide each weight. Set `fsdp_config={{'version': 2}}` or {off(TRL, 'tau')}."
    )


def fsdp_args(args: TrainingArguments) -> str | None:
    fsdp_plugin_args = getattr(args, "fsdp_plugin_args", None)
    return _fsdp_refusal(fsdp_plugin_args.get("fsdp_version", 1)) if fsdp_plugin_args else None


def fsdp_trainer(trainer: Trainer) -> str | None:
    # The trainer's flag covers FSDP enabled by the arguments and by the accelerate config.
    if getattr(trainer, "is_fsdp_enabled", False):
        plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
        return _fsdp_refusal(getattr(plugin, "fsdp_version", 1))
    return None


def axolotl_fsdp_version(cfg: Mapping[str, Any]) -> Any:
    # As Axolotl resolves it: the top-level key, else `fsdp_config.fsdp_version`, else 1.
    version = cfg.get("fsdp_version")
    if version is None:
        fsdp_config = cfg.get("fsdp_config")
        version = fsdp_config.get("fsdp_version") if isinstance(fsdp_config, Mapping) else None
    return 1 if version is None else version


def fsdp_axolotl(cfg: Mapping[str, Any]) -> str | None:
    if cfg.get("fsdp_config") or cfg.get("fsdp"):
        version = axolotl_fsdp_version(cfg)
        if str(version) != "2":
            return (
                f"Slow Tuning (`slowed.tau`) supports FSDP2 only (`fsdp_version: 2`, whose DTensor shards it gathers "
                f"for each ΔW norm); got FSDP{version}, whose flattened parameters hide each weight. Set "
                f"`fsdp_version: 2`, or set {off(AXOLOTL, 'tau')}."
            )
    return None
