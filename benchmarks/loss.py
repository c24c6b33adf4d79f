"""(a) The loss alone, forward+backward on the same logits: SLowED's fused loss (and the reference
``masked_causal_lm_loss``) against transformers' ``ForCausalLMLoss``, on CPU (peak RSS above the baseline)."""

from __future__ import annotations

import time

from harness import MASK_RATIO, VOCAB, med, peak_rss_mib, reset_peak, rss_mib, run_worker


def _loss_inputs(tokens: int):
    import torch

    torch.manual_seed(0)
    # Logits of a trained-looking model: a few confident rows, most spread out.
    logits = torch.randn(1, tokens, VOCAB, dtype=torch.bfloat16)
    logits[0, ::7] *= 6
    labels = torch.randint(0, VOCAB, (1, tokens))
    return logits.requires_grad_(True), labels


def _loss_methods():
    from transformers.loss.loss_utils import ForCausalLMLoss

    from slowed_plugin.core.logits_loss import fused_masked_causal_lm_loss
    from slowed_plugin.trainer.reference_loss import masked_causal_lm_loss

    def stock(logits, labels):
        return ForCausalLMLoss(logits, labels, VOCAB)

    def fused(logits, labels):
        return fused_masked_causal_lm_loss(logits, labels, MASK_RATIO, "sequence")[0]

    def reference(logits, labels):
        return masked_causal_lm_loss(logits, labels, MASK_RATIO, "sequence")[0]

    return {"stock": stock, "fused": fused, "reference": reference}


def worker_loss(tokens: int, reps: int, methods: list[str]) -> dict:
    """Times (interleaved rounds, the first one a warm-up), then each method's peak extra RSS.

    With a fixed mmap threshold every large buffer is unmapped when freed, so RSS is back at its
    baseline after each call and the methods can be measured one after the other in one process.
    """
    import gc

    import torch

    from slowed_plugin.core.kernels import KERNELS, warmup

    compile_s = warmup(VOCAB, (torch.bfloat16,))
    logits, labels = _loss_inputs(tokens)
    fns = _loss_methods()
    times: dict[str, list[float]] = {m: [] for m in methods}
    for rep in range(reps + 1):
        for name in methods:
            start = time.perf_counter()
            fns[name](logits, labels).backward()
            elapsed = time.perf_counter() - start
            logits.grad = None
            if rep:
                times[name].append(elapsed)
    memory = {}
    for name in methods:
        gc.collect()
        base = rss_mib()
        reset_peak()
        fns[name](logits, labels).backward()
        memory[name] = peak_rss_mib() - base
        logits.grad = None
    return {
        "times": times,
        "peak_extra_mib": memory,
        "logits_mib": logits.numel() * 2 / 2**20,
        "compile_s": compile_s,
        "compiled": KERNELS.failed is None,
    }


WORKERS = {"loss": worker_loss}


def report(quick: bool, ratios: dict) -> None:
    tokens = 1024 if quick else 2048
    methods = ["stock", "fused"] if quick else ["stock", "fused", "reference"]
    timing = run_worker("loss", tokens=tokens, reps=2 if quick else 5, methods=methods)
    mem = timing["peak_extra_mib"]
    t = {m: med(v) for m, v in timing["times"].items()}
    print(f"\n(a) loss forward+backward, {tokens} tokens x {VOCAB} vocab, bf16, mask_ratio={MASK_RATIO}")
    print(f"    kernels compiled: {timing['compiled']}, warm-up (compile or cache load) {timing['compile_s']:.1f} s")
    print(f"    {'method':<34}{'time s':>9}{'x stock':>9}{'peak extra MiB':>16}{'x stock':>9}")
    names = {
        "stock": "ForCausalLMLoss (transformers)",
        "fused": "SLowED fused_masked_causal_lm_loss",
        "reference": "SLowED masked_causal_lm_loss (ref)",
    }
    for m in methods:
        print(f"    {names[m]:<34}{t[m]:>9.3f}{t[m] / t['stock']:>9.2f}{mem[m]:>16.0f}{mem[m] / mem['stock']:>9.2f}")
    ratios["loss_time"] = t["fused"] / t["stock"]
    ratios["loss_mem"] = mem["fused"] / mem["stock"]
