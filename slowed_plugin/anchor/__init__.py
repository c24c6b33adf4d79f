"""The safety anchor (beyond the paper): keep the starting model's own answers to harmful and benign requests
while distilling, by replaying them (``replay``) or by a gradient constraint against them (``gradient``).

This package is the anchor's framework-neutral part: its settings (pure Python), the rows and their cache, and the
gradient rule (pure torch). :mod:`slowed_plugin.trainer.safety_anchor` puts it on a trainer. Modules that need torch are
imported where they are used, so that a config check imports none.
"""

from .settings import CONFIG_KEYS, DEFAULTS, MODES, check_anchor_config, replay_row_count

__all__ = ["CONFIG_KEYS", "DEFAULTS", "MODES", "check_anchor_config", "replay_row_count"]
