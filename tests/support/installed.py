"""Optional dependencies the suite needs: imported, or the test fails with how to install them.

The suite's set-up (scripts/setup.sh) installs every extra, so a missing one is a broken set-up, never a silent
skip.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest


def require(module: str, extra: str) -> ModuleType:
    """``module`` imported, or the test fails naming the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.fail(f"{module} is not installed: run `SLOWED_EXTRAS=...,{extra} source scripts/setup.sh`")
