"""The package's logger, visible at a trainer's default verbosity.

transformers and TRL keep their own INFO lines hidden by default; SLowED's few lines (what is on, what the run
did, a tau that never binds) are what tells a user that SLowED trained at all, so the ``slowed_plugin`` logger
gets its own stderr handler at INFO, the way transformers configures its library root logger. Set
``SLOWED_VERBOSITY=warning`` (or any logging level name) to quieten it; a handler the user configured on the
``slowed_plugin`` logger replaces ours.
"""

from __future__ import annotations

import logging
import os
import sys

NAME = "slowed_plugin"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is emitted, as ``print(..., file=sys.stderr)`` does: a
    front end that replaces it later (Axolotl tees it into its debug log, pytest captures it) gets the lines."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def get_logger() -> logging.Logger:
    logger = logging.getLogger(NAME)
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False  # no second copy through a root handler
        level = logging.getLevelName(os.environ.get("SLOWED_VERBOSITY", "info").upper())
        logger.setLevel(level if isinstance(level, int) else logging.INFO)
    return logger
