"""A measurement in a fresh process, and what it reads of its own memory and of the machine.

Both ``slowed doctor --bench`` and ``benchmarks/`` run each measurement in a fresh Python process (no CUDA
initialised before its forks, no allocator state from an earlier measurement) that prints one ``RESULT {json}``
line; :func:`run_for_result` starts it and returns that line's payload.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

RESULT_PREFIX = "RESULT "
# The repository root when running from a checkout (an installed package finds itself without it).
ROOT = Path(__file__).resolve().parents[2]
# Child processes: no hub, no telemetry, and freed buffers go back to the OS at once (a fixed mmap threshold), so
# that the RSS high-water mark measures what a step really holds.
CHILD_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
    "MALLOC_MMAP_THRESHOLD_": "65536",
    "MALLOC_TRIM_THRESHOLD_": "0",
    "PYTHONWARNINGS": "ignore",
}


def print_result(payload: Any) -> None:
    """The child's side: the one line :func:`run_for_result` reads."""
    print(RESULT_PREFIX + json.dumps(payload), flush=True)


def run_for_result(
    argv: Sequence[str],
    what: str,
    env_extra: Mapping[str, str] | None = None,
    timeout: float | None = None,
    echo_tail: bool = False,
) -> Any:
    """Run ``python argv...`` with :data:`CHILD_ENV` (and ``env_extra``) and the repository on ``PYTHONPATH``;
    the payload of its last ``RESULT`` line. Raises ``RuntimeError`` naming ``what``, the exit code and the
    output's last line; ``echo_tail`` also copies the end of its output to stderr (the benchmarks' way)."""
    env = {**os.environ, **CHILD_ENV, **(env_extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=timeout)
    result = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not result:
        if echo_tail:
            sys.stderr.write(done.stdout[-3000:] + done.stderr[-5000:])
        tail = (done.stdout[-1500:] + done.stderr[-2500:]).strip().splitlines()
        raise RuntimeError(f"{what} failed (exit {done.returncode}): {tail[-1] if tail else 'no output'}")
    return json.loads(result[-1][len(RESULT_PREFIX) :])


# --------------------------------------------------------------------------- memory
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_mib() -> float:
    return _status_kib("VmRSS") / 1024


def peak_rss_mib() -> float:
    return _status_kib("VmHWM") / 1024


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_mib(device: str) -> float:
    """This process's peak memory on ``device``: CUDA allocations, or the RSS high-water mark on CPU."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_mib()


# --------------------------------------------------------------------------- the machine


def load_average() -> float:
    """The 1-minute load average (NaN where the platform has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
