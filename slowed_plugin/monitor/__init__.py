"""The safety monitor's framework-neutral part: its settings (pure Python); trainer/monitor.py runs it on a trainer."""

from .settings import CONFIG_KEYS, LOG_KEY, check_monitor_config, check_monitor_values, evaluated_limit

__all__ = ["CONFIG_KEYS", "LOG_KEY", "check_monitor_config", "check_monitor_values", "evaluated_limit"]
