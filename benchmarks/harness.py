"""The benchmarks' process harness: every measurement runs in a fresh worker process (``bench.py --worker``), through
:mod:`slowed_plugin.bench.process`, the same machinery as ``slowed doctor --bench``."""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path

from slowed_plugin.bench.process import (
    CHILD_ENV,
    ROOT,
    load_average,
    peak_rss_mib,
    print_result,
    reset_peak,
    rss_mib,
    run_for_result,
)
from slowed_plugin.bench.step_pairs import MASK_RATIO, VOCAB
from slowed_plugin.machine import cpu_model

ENTRY = Path(__file__).resolve().parent / "bench.py"
med = statistics.median

__all__ = [
    "CHILD_ENV",
    "MASK_RATIO",
    "ROOT",
    "VOCAB",
    "load",
    "machine",
    "med",
    "peak_rss_mib",
    "print_result",
    "reset_peak",
    "rss_mib",
    "run_worker",
    "spread",
]


def run_worker(name: str, env_extra: dict | None = None, timeout: float | None = None, **kwargs) -> dict:
    """``bench.py --worker name --args JSON`` in a fresh process; its last ``RESULT {...}`` line."""
    argv = [str(ENTRY), "--worker", name, "--args", json.dumps(kwargs)]
    return run_for_result(argv, f"benchmark worker {name} {kwargs}", env_extra, timeout, echo_tail=True)


def load() -> str:
    return f"{load_average():.1f}"


def spread(values: list[float]) -> str:
    """``min-median-max``."""
    return f"{min(values):.3f}-{statistics.median(values):.3f}-{max(values):.3f}"


def machine() -> str:
    import torch

    gpu = ""
    if torch.cuda.is_available():  # the parent only asks; workers do the CUDA work
        gpu = f", GPU {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return (
        f"{cpu_model()}, {os.cpu_count()} cores{gpu}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}, load average at start {load_average():.1f}"
    )
