"""``SLowEDPlugin``: SLowED in any Axolotl recipe with two additions.

    plugins:
      - slowed_plugin.SLowEDPlugin
    slowed: [10.0, 0.2]        # or {tau: 10.0, mask_ratio: 0.2, ...}

The only glue is one additive hook, ``add_callbacks_post_trainer``: it attaches
:class:`~slowed_plugin.SLowEDCallback` to the trainer Axolotl built (whatever its class) and hands
the callback back to Axolotl, which registers it. No trainer class or collator is replaced, so other
plugins compose: the callback's runtime changes (the model's forward for the masked loss, a
``compute_loss_func`` installed before wrapped rather than dropped, and the rest) are listed, with their
undo, in :mod:`slowed_plugin.trainer.patches`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from axolotl.integrations.base import BasePlugin
from axolotl.utils.logging import get_logger

from ..config import SLowEDConfig
from ..rules import listed_plugin
from ..trainer.callback import SLowEDCallback
from . import PLUGIN_NAME
from .anchor_row_format import axolotl_row_format, step_recount
from .args import checked_config

# Axolotl's console shows INFO only from loggers named `axolotl*`; the startup line must reach it.
LOG = get_logger("axolotl.integrations.slowed")


OFFLINE_TELEMETRY = (
    "SLowED: HF_HUB_OFFLINE is set but Axolotl's telemetry is on (AXOLOTL_DO_NOT_TRACK unset): with no network, "
    "any error other than SLowED's own makes Axolotl retry sending telemetry for minutes before it exits. Set "
    "AXOLOTL_DO_NOT_TRACK=1 to turn telemetry off (SLowED does not change it for you)."
)


def offline_with_telemetry(env: Mapping[str, str]) -> bool:
    """Whether ``env`` asks the hub to stay offline while leaving Axolotl's telemetry on (its opt-outs unset)."""

    def truthy(name: str) -> bool:
        return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")

    return truthy("HF_HUB_OFFLINE") and not (truthy("AXOLOTL_DO_NOT_TRACK") or truthy("DO_NOT_TRACK"))


def _listed(cfg: Any) -> bool:
    """Whether ``cfg``'s ``plugins:`` names this plugin (Axolotl's plugin manager is a process-wide singleton)."""
    return listed_plugin(cfg, "SLowEDPlugin") is not None


def slowed_config(cfg: Any) -> SLowEDConfig | None:
    """The SLowED settings of an Axolotl config, or None when ``slowed:`` is absent or the plugin is not listed.

    The config validation already parsed and checked them (reused here); a config that reached training
    without that validation is checked now, and refused with the rule's message (``ValueError``).
    """
    if not _listed(cfg) or cfg.get("slowed") is None:
        return None
    return checked_config(cfg)


class SLowEDPlugin(BasePlugin):
    """Slow Tuning + Low-Entropy Masking (arXiv 2508.09666) for Axolotl; settings under the ``slowed:`` key."""

    def get_input_args(self) -> str:
        return "slowed_plugin.axolotl.args.SLowEDArgs"

    def register(self, cfg: dict) -> None:
        if _listed(cfg) and cfg.get("slowed") is None:
            LOG.warning(
                f"{PLUGIN_NAME} is listed in `plugins:` but the config sets no `slowed:` key, so training runs "
                "WITHOUT SLowED. Add e.g. `slowed: [10.0, 0.2]`; `slowed check RECIPE.yaml` checks a recipe."
            )
        if offline_with_telemetry(os.environ):
            LOG.warning(OFFLINE_TELEMETRY)

    def add_callbacks_post_trainer(self, cfg, trainer) -> list:
        config = slowed_config(cfg)
        if config is None:
            return []
        if not (config.active or config.safety_monitor):
            LOG.info(f"{config.describe()} (`slowed:` turns both off; the trainer is left unchanged)")
            return []
        replay = config.anchored and config.safety_anchor["mode"] == "replay"
        # One console: the callback's lines (the anchor's, the end line, the tau warning) go through Axolotl's
        # logger; the start line is this one.
        callback = SLowEDCallback(
            config,
            log=LOG,
            announce_start=False,
            # the subspace renders its prompts as the anchor does
            anchor_row_format=axolotl_row_format(cfg) if config.anchored or config.subspace else None,
            installers=[step_recount(cfg, LOG)] if replay else [],
        )
        callback.attach(trainer)
        LOG.info(config.describe())
        return [callback]
