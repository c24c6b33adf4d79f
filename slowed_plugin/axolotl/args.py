"""The ``slowed:`` key that ``SLowEDPlugin`` merges into Axolotl's config schema.

Accepts the mapping (every :class:`~slowed_plugin.SLowEDConfig` key) or the short form
``[tau, mask_ratio]`` and stores the resolved mapping, so that ``cfg.slowed`` after validation
always holds every key. No ``extra="forbid"``: Axolotl merges this model into its whole schema.

The value is parsed, and the rules of :mod:`slowed_plugin.rules` run, once per route: a config that passes is
remembered by what it says (its ``slowed:`` value and the keys the rules read, :func:`checked_config`), so the
plugin reuses the validated :class:`SLowEDConfig` when training starts and checks only a config it has not
seen validated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field, model_validator

from ..config import SLowEDConfig, SLowEDConfigError
from ..rules import axolotl_facts, axolotl_problems
from ..versions import check_supported_versions
from .recipe import duplicate_slowed_keys_in_file

DESCRIPTION = (
    "SLowED (Slow Tuning + Low-Entropy Masking, arXiv 2508.09666), active only with "
    "`plugins: [slowed_plugin.SLowEDPlugin]`. A mapping with the keys "
    + ", ".join(SLowEDConfig.keys())
    + " (tau and mask_ratio required), or the short form [tau, mask_ratio]. See docs/axolotl.md."
)

# fingerprint -> the config that passed; a handful of entries per process (one per recipe validated).
_PASSED: dict[str, SLowEDConfig] = {}
_MAX_PASSED = 64


def _fingerprint(slowed: Any, cfg: Mapping[str, Any]) -> str | None:
    def plain(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return getattr(value, "value", value)  # enums as written

    try:
        return json.dumps([plain(slowed), plain(axolotl_facts(cfg))], sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return None


def remember(cfg: Mapping[str, Any], config: SLowEDConfig) -> None:
    """Record that ``cfg`` (as written, and with its resolved ``slowed:``) passed with ``config``."""
    while len(_PASSED) >= _MAX_PASSED:
        _PASSED.pop(next(iter(_PASSED)))
    for slowed in (cfg.get("slowed"), config.resolved()):
        key = _fingerprint(slowed, cfg)
        if key is not None:
            _PASSED[key] = config


def checked_config(cfg: Mapping[str, Any]) -> SLowEDConfig:
    """The validated SLowED settings of an Axolotl config: parsed and checked against the rules the first time
    this config is seen, reused after; :class:`SLowEDConfigError` (a ``ValueError``) naming the first problem."""
    key = _fingerprint(cfg.get("slowed"), cfg)
    config = _PASSED.get(key) if key is not None else None
    if config is None:
        config = SLowEDConfig.from_value(cfg.get("slowed"), key="slowed")
        problems = axolotl_problems(cfg, config)
        if problems:
            raise SLowEDConfigError(problems[0])
        remember(cfg, config)
    return config


class SLowEDArgs(BaseModel):
    """Input args for SLowED."""

    slowed: dict[str, Any] | None = Field(default=None, json_schema_extra={"description": DESCRIPTION})

    @model_validator(mode="before")
    @classmethod
    def resolve_slowed(cls, data: Any) -> Any:
        # `mode="before"` sees the whole raw config, so the cross-key rules read the other keys as written.
        if not isinstance(data, Mapping) or data.get("slowed") is None:
            return data
        check_supported_versions()  # config validation comes before Axolotl loads the model
        path = data.get("axolotl_config_path")
        if isinstance(path, (str, os.PathLike)) and os.path.isfile(path):
            duplicates = duplicate_slowed_keys_in_file(os.fspath(path))
            if duplicates:
                raise SLowEDConfigError(duplicates[0])
        config = checked_config(data)
        return {**data, "slowed": config.resolved()}
