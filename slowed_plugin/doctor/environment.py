"""Python, torch, the device and the dependencies' versions against the supported ranges."""

from __future__ import annotations

import importlib.util
import platform
import shutil
import sys

import torch

from ..versions import version_findings
from .findings import Finding


def resolve_device(requested: str) -> str:
    """``auto``: ``cuda`` when torch sees a CUDA GPU, else ``cpu``."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def versions() -> list[Finding]:
    found = []
    for v in version_findings():
        # The line's text after its own status word: the doctor prints the status itself.
        message = v.line().split(None, 1)[1]
        found.append(Finding(f"versions.{v.package}", "ok" if v.ok else "FAIL", message, data=vars(v).copy()))
    return found


def platform_findings(device: str) -> list[Finding]:
    """What runs here: Python, torch's build, the device, bf16 and the compiler ``torch.compile`` needs."""
    found = [
        Finding(
            "python",
            "ok",
            f"Python {platform.python_version()} on {platform.system()} {platform.machine()}",
            {"python": platform.python_version(), "executable": sys.executable},
        )
    ]
    cuda_build = torch.version.cuda
    found.append(
        Finding(
            "torch",
            "ok",
            f"torch {torch.__version__} ({'CUDA ' + cuda_build if cuda_build else 'CPU-only build'}), "
            f"{torch.get_num_threads()} CPU threads",
            {"torch": torch.__version__, "cuda_build": cuda_build},
        )
    )
    if device == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is a CPU-only build" if cuda_build is None else "no CUDA GPU or driver is visible"
            found.append(Finding("device", "FAIL", f"--device cuda, but torch.cuda.is_available() is False: {why}"))
            return found
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        gib = props.total_memory / 2**30
        found.append(
            Finding(
                "device",
                "ok",
                f"cuda:{index} {props.name}, compute capability {props.major}.{props.minor}, {gib:.1f} GiB, "
                f"{torch.cuda.device_count()} GPU(s) visible",
                {"name": props.name, "capability": f"{props.major}.{props.minor}", "memory_gib": round(gib, 2)},
            )
        )
        bf16 = torch.cuda.is_bf16_supported()
        found.append(
            Finding(
                "device.bf16",
                "ok" if bf16 else "warn",
                "bf16 supported" if bf16 else "no native bf16 on this GPU (before Ampere): train in fp16 or fp32",
                {"bf16": bf16},
            )
        )
        triton = importlib.util.find_spec("triton") is not None
        found.append(
            Finding(
                "device.triton",
                "ok" if triton else "warn",
                "triton installed (torch.compile's GPU backend)"
                if triton
                else "triton is not installed: the loss kernels cannot compile and run eagerly (slower, more memory)",
            )
        )
    else:
        found.append(Finding("device", "ok", f"cpu ({platform.processor() or platform.machine()}); no CUDA GPU used"))
        compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
        found.append(
            Finding(
                "device.compiler",
                "ok" if compiler else "warn",
                f"C++ compiler {compiler} (torch.compile's CPU backend)"
                if compiler
                else "no C++ compiler on PATH: the loss kernels cannot compile and run eagerly (slower)",
            )
        )
    return found
