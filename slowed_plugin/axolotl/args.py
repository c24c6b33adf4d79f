"""The ``slowed:`` key that ``SLowEDPlugin`` merges into Axolotl's config schema.

Accepts the mapping (every :class:`~slowed_plugin.SLowEDConfig` key) or the short form
``[tau, mask_ratio]`` and stores the resolved mapping, so that ``cfg.slowed`` after validation
always holds every key. No ``extra="forbid"``: Axolotl merges this model into its whole schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from ..config import SLowEDConfig
from .compat import incompatibilities, resolved

DESCRIPTION = (
    "SLowED (Slow Tuning + Low-Entropy Masking, arXiv 2508.09666), active only with "
    "`plugins: [slowed_plugin.SLowEDPlugin]`. A mapping with the keys "
    + ", ".join(SLowEDConfig.keys())
    + " (tau and mask_ratio required), or the short form [tau, mask_ratio]. See docs/axolotl.md."
)


class SLowEDArgs(BaseModel):
    """Input args for SLowED."""

    slowed: dict[str, Any] | None = Field(default=None, json_schema_extra={"description": DESCRIPTION})

    @field_validator("slowed", mode="before")
    @classmethod
    def resolve_slowed(cls, value: Any) -> dict[str, Any] | None:
        if value is None:
            return None
        return resolved(SLowEDConfig.from_value(value, key="slowed"))

    @model_validator(mode="before")
    @classmethod
    def check_slowed_compatibility(cls, data: Any) -> Any:
        # `mode="before"` sees the whole raw config, so the cross-key rules read the other keys as written.
        if not isinstance(data, Mapping) or data.get("slowed") is None:
            return data
        problems = incompatibilities(data, SLowEDConfig.from_value(data["slowed"], key="slowed"))
        if problems:
            raise ValueError(problems[0])
        return data
