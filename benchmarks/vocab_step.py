"""(b) One training step of a tiny Qwen2-shaped model with the real vocabulary (``tiny-real-vocab``: hidden 64,
2 layers, untied head), LoRA r=16 on all linear layers: stock ``SFTTrainer`` (``chunked_nll`` and
``loss_type="nll"``) against ``SFTTrainer`` + ``SLowEDCallback``, in forks taking turns step by step
(:mod:`slowed_plugin.bench.step_pairs`)."""

from __future__ import annotations

from harness import MASK_RATIO, VOCAB, med, run_worker, spread

from slowed_plugin.bench.step_pairs import run_pairs

SHAPE = "tiny-real-vocab"
LABELS = {
    "stock": "stock SFTTrainer (chunked_nll)",
    "nll": 'stock SFTTrainer loss_type="nll"',
    "slowed": "SLowED (chunked from hidden states)",
    "slowed_nll": 'SLowED, loss_type="nll" (fused)',
}


def worker_steps(variants: list[str], pairs: int, batch: int, length: int) -> dict:
    return run_pairs(SHAPE, "float32", pairs, batch, length, device="cpu", rank=16, variants=tuple(variants))


WORKERS = {"steps": worker_steps}


def report(quick: bool, ratios: dict) -> dict:
    pairs, batch, length = (2, 1, 512) if quick else (6, 2, 512)
    variants = ["stock", "slowed"] if quick else ["stock", "nll", "slowed", "slowed_nll"]
    runs = run_worker("steps", variants=variants, pairs=pairs, batch=batch, length=length)
    print(
        f"\n(b) SFTTrainer step, tiny Qwen2 (hidden 64, 2 layers, vocab {VOCAB}), LoRA r=16 all linear, "
        f"batch {batch} x {length} tokens (first quarter prompt), mask_ratio {MASK_RATIO}; {pairs} step sets "
        "after one warm-up step, forks taking turns"
    )
    print(f"    {'variant':<46}{'step s':>8}{'x stock, per set min-median-max':>34}{'peak RSS MiB':>14}{'x stock':>9}")
    stock = runs["stock"]
    for variant in variants:
        run = runs[variant]
        ratio = [x / y for x, y in zip(run["step_times"][1:], stock["step_times"][1:], strict=True)]
        memory = run["peak_mib"] / stock["peak_mib"]
        print(
            f"    {LABELS[variant]:<46}{med(run['step_times'][1:]):>8.3f}{spread(ratio):>34}"
            f"{run['peak_mib']:>14.0f}{memory:>9.2f}"
        )
    print("    first step s: " + ", ".join(f"{v} {runs[v]['step_times'][0]:.2f}" for v in variants))
    ratios["step_time"] = med(
        [x / y for x, y in zip(runs["slowed"]["step_times"][1:], stock["step_times"][1:], strict=True)]
    )
    ratios["step_rss"] = runs["slowed"]["peak_mib"] / stock["peak_mib"]
    return runs
