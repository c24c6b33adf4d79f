"""The safety subspace's rule: not under DeepSpeed or FSDP yet (its two-process exactness is not tested there)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import SLowEDConfig
from ..validate import Spelling
from .rule import AXOLOTL, TRL


def subspace(config: SLowEDConfig) -> bool:
    return config.subspace


def _sharded(setting: str, spelling: Spelling) -> str:
    key = spelling.child("safety_subspace").key()
    return (
        f"The safety subspace ({key}) is not supported with {setting} yet: its projection reads and writes each "
        "weight whole, and that path is not tested with sharded weights. Train on one process or with DDP, or drop "
        "the subspace."
    )


def subspace_sharded_args(args: Any) -> str | None:
    if getattr(args, "deepspeed", None) or getattr(args, "deepspeed_plugin", None):
        return _sharded("DeepSpeed", TRL)
    if getattr(args, "fsdp_plugin_args", None) or getattr(args, "fsdp", None):
        return _sharded("FSDP", TRL)
    return None


def subspace_sharded_trainer(trainer: Any) -> str | None:
    if getattr(trainer, "is_deepspeed_enabled", False):
        return _sharded("DeepSpeed", TRL)
    if getattr(trainer, "is_fsdp_enabled", False):
        return _sharded("FSDP", TRL)
    return None


def subspace_sharded_axolotl(cfg: Mapping[str, Any]) -> str | None:
    for key in ("deepspeed", "fsdp", "fsdp_config"):
        if cfg.get(key):
            return _sharded(f"`{key}`", AXOLOTL)
    return None
