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
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator, Mapping
from typing import Any

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
# probe_digest() under the pin, torch 2.13.0 CPU (recorded on an Intel Xeon, Sapphire Rapids class).
PROBE_SHA256 = "1ec98eac39d9f21b6271d2b9b0f941757fd60fde07c4e28d57d34b37511d92b0"


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


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


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


def probe_digest(base_steps: int = 3, lora_steps: int = 3, batch_size: int = 16) -> str:
    """sha256 of a short piece of the demo's pipeline, computed in this process: ``base_steps`` steps of the
    base-model build (the real build code, a smaller batch), then ``lora_steps`` LoRA steps on distillation
    chains and one greedy generation. Equal digests on two machines (or dispatch settings) mean equal bits."""
    import hashlib
    import tempfile
    from dataclasses import replace

    import torch
    from peft import LoraConfig, get_peft_model

    from .base_model import BaseSettings, build_base_model, collate, encode, state_digest
    from .world import build_world

    settings = replace(BaseSettings(), steps=base_steps, batch_size=batch_size, warmup_steps=1)
    world = build_world(settings.world)
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = build_base_model(settings, tmp, progress=False, world=world)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    chains = [encode(tokenizer, e.prompt, e.completion) for e in world.cot_train[: lora_steps * batch_size]]
    for step in range(lora_steps):
        batch = collate(chains[step * batch_size : (step + 1) * batch_size], tokenizer.pad_token_id)
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    prompt = tokenizer(world.cot_test[0].prompt, return_tensors="pt")
    with torch.no_grad():
        answer = model.generate(**prompt, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    digest = hashlib.sha256(state_digest(model).encode())
    digest.update(answer.numpy().tobytes())
    return digest.hexdigest()


def main() -> int:
    """``python -m slowed_plugin.demo.numerics``: does this machine compute the demo's bits? Runs the probe under
    the pin and compares it with the digest recorded on the machine of the documentation's tables."""
    import sys

    if any(os.environ.get(k) != v for k, v in PINNED_ENV.items()):  # the pin must precede torch: start afresh
        os.execve(sys.executable, [sys.executable, "-m", "slowed_plugin.demo.numerics"], pinned_env(os.environ))
    record = numerics_record()
    digest = probe_digest()
    print(describe(record))
    same = digest == PROBE_SHA256
    print(f"probe sha256 {digest[:16]}... {'equals' if same else 'DIFFERS from'} the recorded {PROBE_SHA256[:16]}...")
    return 0 if same and record["pinned"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
