"""Optional dependencies the suite needs: imported, or the test fails with how to install them.

The suite's set-up (scripts/setup.sh) installs every extra, so a missing one is a broken set-up, never a silent
skip. The exceptions are declared: CI's floors job (scripts/floors.sh) and scripts/newest.sh install the base and
TRL only and set ``SLOWED_TESTS_WITHOUT_EXTRAS=1``, which turns a missing extra into a skip that names it.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def require(module: str, extra: str) -> ModuleType:
    """``module`` imported, or the test fails naming the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("SLOWED_TESTS_WITHOUT_EXTRAS") == "1":
            pytest.skip(f"{module} is not installed: the floors and newest jobs run without the `{extra}` extra")
        pytest.fail(f"{module} is not installed: run `SLOWED_EXTRAS=...,{extra} source scripts/setup.sh`")
