"""``slowed doctor --bench``: the SLowED step against the stock one here (:mod:`slowed_plugin.bench.step_pairs`)."""

from __future__ import annotations

import statistics
from typing import Any

from ..bench.step_pairs import SHAPES, VARIANTS, run_in_subprocess
from .findings import Finding


def defaults(device: str, shape: str) -> dict[str, Any]:
    """Batch, length, dtype and pairs: a GPU's real work (bf16, 4 x 1024), a CPU's (fp32, 1 x 512), or the tiny
    shape's (fp32, 2 x 64)."""
    if shape == "tiny":
        return {"batch": 2, "length": 64, "dtype": "float32", "pairs": 2}
    if device == "cuda":
        return {"batch": 4, "length": 1024, "dtype": "bfloat16", "pairs": 5}
    return {"batch": 1, "length": 512, "dtype": "float32", "pairs": 3}


def spread(values: list[float]) -> str:
    """``min-median-max``."""
    return f"{min(values):.2f}-{statistics.median(values):.2f}-{max(values):.2f}"


def bench_findings(
    device: str, shape: str, pairs: int | None = None, rank: int = 16, variants: tuple[str, ...] = ("stock", "slowed")
) -> list[Finding]:
    """One line per variant (step time, tokens/s, peak memory) and one with the ratios to stock. Speed is
    reported, never judged: only a run that fails is a problem."""
    settings = defaults(device, shape)
    if pairs is not None:
        settings["pairs"] = pairs
    tokens = settings["batch"] * settings["length"]
    what = (
        f"{shape} shape (random weights), {settings['dtype']}, LoRA r={rank} all linear, batch "
        f"{settings['batch']} x {settings['length']}, {settings['pairs']} step pairs after a warm-up step, on {device}"
    )
    try:
        runs = run_in_subprocess(
            shape=shape,
            dtype=settings["dtype"],
            pairs=settings["pairs"],
            batch=settings["batch"],
            length=settings["length"],
            device=device,
            rank=rank,
            variants=list(variants),
        )
    except Exception as err:  # noqa: BLE001 - the failure is the finding
        return [Finding("bench", "FAIL", f"{what}: {err}")]
    found = []
    stock = runs["stock"]
    for variant in variants:
        run = runs[variant]
        steps = run["step_times"][1:]
        median = statistics.median(steps)
        data = {**run, "tokens_per_s": tokens / median, "shape": shape, **settings}
        message = (
            f"{VARIANTS[variant]}: step {median:.3f} s median ({spread(steps)}), {tokens / median:,.0f} tokens/s, "
            f"peak {'GPU memory' if device == 'cuda' else 'RSS'} {run['peak_mib']:,.0f} MiB, first step "
            f"{run['step_times'][0]:.1f} s"
        )
        found.append(Finding(f"bench.{variant}", "ok", message, data))
    for variant in variants:
        if variant == "stock":
            continue
        run = runs[variant]
        ratios = [x / y for x, y in zip(run["step_times"][1:], stock["step_times"][1:], strict=True)]
        memory = run["peak_mib"] / stock["peak_mib"]
        found.append(
            Finding(
                f"bench.ratio.{variant}",
                "ok",
                f"{variant} / stock: step time x{statistics.median(ratios):.2f} (per pair {spread(ratios)}), peak "
                f"memory x{memory:.2f}; {what}",
                {"step_time_ratio": statistics.median(ratios), "per_pair": ratios, "memory_ratio": memory},
            )
        )
    return found


__all__ = ["SHAPES", "bench_findings", "defaults"]
