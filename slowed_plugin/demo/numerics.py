"""The demo's floating point, pinned so that ``results.json`` has the same numbers on every x86-64 CPU.

Two libraries pick their float32 code by the CPU they run on, and the picks round differently in the last
bits, which a training run then amplifies into other figures (an AMD EPYC and an Intel Xeon gave different
base models and different tables before this pin):

- MKL, which does torch's float32 matrix products on x86-64, dispatches by instruction set (SSE4.2, AVX2,
  AVX-512, vendor). ``MKL_CBWR=COMPATIBLE`` fixes its code branch to the one MKL documents as giving the same
  results on Intel and Intel-compatible (AMD) processors, with a fixed thread count.
- ATen's own vectorised kernels (softmax, reductions, element-wise ops, the optimizer) dispatch to DEFAULT,
  AVX2 or AVX512 code; ``ATEN_CPU_CAPABILITY=avx2`` fixes them to the AVX2 code every x86-64 CPU of the last
  ten years runs.

torch.compile is turned off in the same processes (``TORCHDYNAMO_DISABLE=1``): its CPU code was wrong under the
ATen pin on an AVX-512 CPU.

The variables must be set before torch and MKL initialise, so they are set for the demo's own worker
processes only (:func:`pinned_environment` around the spawn of the pool): they never reach a user's own
training, and the process that calls ``slowed demo`` gets its environment back. Every worker records what it
actually ran on (:func:`numerics_record`), and the report says so.

What the pin does not cover: MKL's vector math (``vsSqrt``, ``vsExp``, ...) rounds differently on Intel and AMD
even in the COMPATIBLE branch. The only such op on the demo's path is the square root of torch's non-fused AdamW,
used by the base-model build (docs/demo.md, "The same numbers on every CPU"); :mod:`.probe` checks a machine.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator, Mapping
from typing import Any

from ..machine import cpu_model

# What a demo worker process needs in its environment before torch starts.
PINNED_ENV: dict[str, str] = {
    "MKL_CBWR": "COMPATIBLE",
    "ATEN_CPU_CAPABILITY": "avx2",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    # torch.compile's CPU code is wrong under ATEN_CPU_CAPABILITY=avx2 on an AVX-512 CPU (torch 2.13: the
    # product's compiled masked loss fails its reference test there, and SLowED's loss rose epoch after epoch
    # in the demo); with compilation off the same functions run eagerly, with the same math.
    "TORCHDYNAMO_DISABLE": "1",
}
# ATen's name for the capability the pin asks for (torch.backends.cpu.get_cpu_capability()).
PINNED_CAPABILITY = "AVX2"


def pinned_env(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` with the pinned variables (they override whatever ``base`` had for them)."""
    return {**base, **PINNED_ENV}


@contextlib.contextmanager
def pinned_environment() -> Iterator[None]:
    """Set :data:`PINNED_ENV` in ``os.environ`` for the duration (processes spawned meanwhile inherit it), then
    restore the previous values."""
    saved = {name: os.environ.get(name) for name in PINNED_ENV}
    os.environ.update(PINNED_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def numerics_record() -> dict[str, Any]:
    """What this process computes with: CPU, ATen's dispatch, MKL's branch, threads, torch; ``pinned`` is True
    when the pin is in force (a CPU without AVX2, or not x86-64, runs other code: its numbers can differ)."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    mkl = torch.backends.mkl.is_available()
    return {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "aten_cpu_capability": capability,
        "mkl": mkl,
        "mkl_cbwr": os.environ.get("MKL_CBWR"),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "pinned": bool(
            capability == PINNED_CAPABILITY
            and mkl
            and os.environ.get("MKL_CBWR") == PINNED_ENV["MKL_CBWR"]
            and torch.get_num_threads() == 1
        ),
    }


def describe(record: Mapping[str, Any]) -> str:
    """One sentence for the report: where the numbers were made and whether other CPUs give the same."""
    where = f"{record['cpu']} (torch {record['torch']}, ATen {record['aten_cpu_capability']}"
    where += f", MKL_CBWR={record['mkl_cbwr']}, {record['threads']} thread)"
    if record.get("pinned"):
        return (
            f"Floating point pinned (MKL's COMPATIBLE branch, ATen's AVX2 kernels, one thread per run) on {where}: "
            "the same numbers on any x86-64 CPU with AVX2 and the same torch build."
        )
    return (
        f"Floating point NOT pinned on {where}: this CPU or torch build cannot run the pinned code, so these "
        "numbers can differ from the documentation's."
    )
