"""SLowED (Slow Tuning and Low-Entropy Masking, arXiv 2508.09666) for TRL and Axolotl.

``import slowed_plugin`` stays light: trl and axolotl are imported only by the pieces that
need them, and transformers only when the callback is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import SLowEDConfig, SLowEDConfigError
from .rules import check_training_args

__version__ = "0.1.0"
__all__ = [
    "SLowEDCallback",
    "SLowEDConfig",
    "SLowEDConfigError",
    "SLowEDPlugin",
    "SafetyMonitorCallback",
    "__version__",
    "check_training_args",
]

if TYPE_CHECKING:
    from .axolotl.plugin import SLowEDPlugin
    from .trainer.callback import SLowEDCallback
    from .trainer.monitor import SafetyMonitorCallback

_LAZY = {
    "SLowEDCallback": ".trainer.callback",
    "SLowEDPlugin": ".axolotl.plugin",
    "SafetyMonitorCallback": ".trainer.monitor",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
