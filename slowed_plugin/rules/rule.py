"""What one rule is, the mechanisms a rule can protect, and the small helpers every finder shares."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..config import SLowEDConfig
from ..validate import PYTHON, Spelling

SLOWED = "SLowED (slowed_plugin.SLowEDPlugin)"

# The spelling of each front end's messages: TRL users write keywords (`tau=None`), Axolotl users YAML under
# `slowed:` (`slowed.tau: null`).
TRL = PYTHON
AXOLOTL = Spelling("slowed", yaml=True)


# ---------------------------------------------------------------------------------------------- the mechanisms
def slow_tuning(config: SLowEDConfig) -> bool:
    return config.slow_tuning


def masking(config: SLowEDConfig) -> bool:
    return config.masking


def online_masking(config: SLowEDConfig) -> bool:
    return config.online_masking


def active(config: SLowEDConfig) -> bool:
    return config.active


def anchored(config: SLowEDConfig) -> bool:
    return config.anchored


def gradient_anchor(config: SLowEDConfig) -> bool:
    return config.anchored and config.safety_anchor["mode"] in ("gradient", "kl")  # both use the whole gradient


@dataclass(frozen=True)
class Rule:
    """One setting SLowED refuses: the mechanism it breaks, why, and how each front end finds and words it."""

    name: str
    applies: Callable[[SLowEDConfig], bool]
    why: str
    trl_args: Callable[[Any], str | None] | None = None
    trl_trainer: Callable[[Any], str | None] | None = None
    axolotl: Callable[[Mapping[str, Any]], str | None] | None = None
    reads: tuple[str, ...] = ()  # the Axolotl keys ``axolotl`` reads


# ---------------------------------------------------------------------------------------------- helpers
def off(spelling: Spelling, key: str) -> str:
    """The setting that turns one mechanism off, in the front end's words: `` `tau=None` `` or
    `` `slowed.tau: null` ``."""
    return spelling.setting(spelling.name(key), None if key == "tau" else 0)


def listed_plugin(cfg: Mapping[str, Any], class_name: str) -> str | None:
    """The entry of ``plugins:`` whose class is ``class_name`` (Axolotl accepts full or short module paths)."""
    for name in cfg.get("plugins") or ():
        if isinstance(name, str) and name.rsplit(".", 1)[-1] == class_name:
            return name
    return None


def above_one(value: Any) -> bool:
    try:
        return value is not None and int(value) > 1
    except (TypeError, ValueError):
        return False


def shown(value: Any) -> str:
    return "true" if value is True else "false" if value is False else "null" if value is None else str(value)
