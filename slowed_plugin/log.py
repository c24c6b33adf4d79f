"""The package's logger, visible at a trainer's default verbosity.

transformers and TRL keep their own INFO lines hidden by default; SLowED's few lines (what is on, what the run
did, a tau that never binds) are what tells a user that SLowED trained at all, so the ``slowed_plugin`` logger
gets its own stderr handler at INFO, the way transformers configures its library root logger. Set
``SLOWED_VERBOSITY=warning`` (or any logging level name) to quieten it; a handler the user configured on the
``slowed_plugin`` logger replaces ours. Our handler writes above an open tqdm progress bar (the trainer's), so that
the end line is not glued onto the bar's last state.
"""

from __future__ import annotations

import logging
import os
import sys

NAME = "slowed_plugin"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is emitted, as ``print(..., file=sys.stderr)`` does (a
    front end that replaces it later, as Axolotl does to tee it into its debug log, gets the lines), above any open
    tqdm progress bar (tqdm's own ``external_write_mode``; tqdm is only used when something already imported it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        tqdm = getattr(sys.modules.get("tqdm"), "tqdm", None)
        if tqdm is None or not getattr(tqdm, "_instances", None):
            super().emit(record)
            return
        with tqdm.external_write_mode(file=self.stream):
            super().emit(record)


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
