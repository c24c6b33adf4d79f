"""Old path of the Axolotl rules; every rule now lives in :mod:`slowed_plugin.rules`, shared with TRL."""

from __future__ import annotations

from ..rules import RULES, listed_plugin, resolved
from ..rules import axolotl_problems as incompatibilities

__all__ = ["RULES", "incompatibilities", "listed_plugin", "resolved"]
