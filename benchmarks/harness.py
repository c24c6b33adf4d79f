"""The benchmarks' process harness: every measurement runs in a fresh worker process (``bench.py --worker``)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from slowed_plugin.doctor.step_pairs import CHILD_ENV, peak_rss_mib, reset_peak, rss_mib

ROOT = Path(__file__).resolve().parents[1]
ENTRY = Path(__file__).resolve().parent / "bench.py"
VOCAB = 151_936
MASK_RATIO = 0.2
med = statistics.median

__all__ = ["CHILD_ENV", "MASK_RATIO", "VOCAB", "machine", "med", "peak_rss_mib", "reset_peak", "rss_mib", "run_worker"]


def run_worker(name: str, env_extra: dict | None = None, timeout: float | None = None, **kwargs) -> dict:
    """``bench.py --worker name --args JSON`` in a fresh process; its last ``RESULT {...}`` line."""
    env = {**os.environ, **CHILD_ENV, **(env_extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, str(ENTRY), "--worker", name, "--args", json.dumps(kwargs)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    result = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not result:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-5000:])
        raise RuntimeError(f"benchmark worker {name} {kwargs} failed (exit {done.returncode})")
    return json.loads(result[-1][len("RESULT ") :])


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a"


def spread(values: list[float]) -> str:
    """``min-median-max``."""
    return f"{min(values):.3f}-{statistics.median(values):.3f}-{max(values):.3f}"


def machine() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    if torch.cuda.is_available():  # the parent only asks; workers do the CUDA work
        gpu = f", GPU {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    load_now = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}, load average at start {load_now:.1f}"
    )
