"""Files written whole or not at all: what SLowED writes (checkpoint state, evaluation records, reports) is
written to ``PATH.tmp`` in the same folder and renamed over ``PATH``, so an interrupt or a failure leaves the
old file (or none), never half of one; on failure the temporary file is removed too."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """``write(tmp)`` writes the content to the temporary path it is given; then it replaces ``path``."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    atomic_write(path, write)
