"""Old path of the safety monitor's settings; they live in :mod:`slowed_plugin.monitor_settings` (pure Python).

from slowed_plugin.evaluation.monitor_config import check_monitor_config
settings = check_monitor_config(value, key="slowed.safety_monitor")   # a plain dict, or ValueError
"""

from __future__ import annotations

from ..monitor_settings import CONFIG_KEYS, LOG_KEY, check_monitor_config

__all__ = ["CONFIG_KEYS", "LOG_KEY", "check_monitor_config"]
