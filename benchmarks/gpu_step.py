"""(e) The GPU cases: at Qwen2.5-0.5B and Qwen2.5-1.5B shapes, bf16, LoRA r=64 on all linear layers, batch
4 x 1024: a step with ``SLowEDCallback`` against stock ``SFTTrainer`` (``chunked_nll``) and, where the
``liger-kernel`` package is installed, against Liger's fused linear cross-entropy (``use_liger_kernel``), in forks
taking turns (:mod:`slowed_plugin.bench.step_pairs`); peak GPU memory; and the loss alone against its matmul floor.

The floor: SLowED's chunked loss from hidden states with a frozen head does one ``(rows x H) @ (H x V)`` product
per candidate row (the entropy pass) and two per kept row (the recomputed logits and the gradient of the hidden
states). The floor is that many rows of one full-size bf16 matmul, timed on the same device; the ratio says how
far the loss is from the cost of its own matmuls (the bandwidth of the logits chunks and the kernels come on top).

``--device cpu`` runs the same code at the tiny shape (the GPU check's dry run); its timings mean nothing.
"""

from __future__ import annotations

import importlib.util
import time

from harness import MASK_RATIO, med, run_worker, spread

from slowed_plugin.bench.step_pairs import SHAPES, VARIANTS, run_pairs

GPU_SHAPES = ("qwen2.5-0.5b", "qwen2.5-1.5b")
RANK = 64


def settings(device: str) -> dict:
    if device == "cuda":
        return {"shapes": GPU_SHAPES, "batch": 4, "length": 1024, "pairs": 4, "reps": 10}
    return {"shapes": ("tiny",), "batch": 2, "length": 64, "pairs": 1, "reps": 2}


def liger_available(device: str) -> bool:
    return device == "cuda" and importlib.util.find_spec("liger_kernel") is not None


def worker_gpu_pairs(shape: str, pairs: int, batch: int, length: int, device: str, variants: list[str]) -> dict:
    return run_pairs(shape, "bfloat16", pairs, batch, length, device=device, rank=RANK, variants=tuple(variants))


def worker_loss_floor(shape: str, batch: int, length: int, reps: int, device: str) -> dict:
    """The chunked loss (forward + backward, frozen bf16 head) against its matmul floor, medians of ``reps``."""
    import torch

    from slowed_plugin.core import IGNORE_INDEX
    from slowed_plugin.core.hidden_states_loss import chunked_masked_causal_lm_loss
    from slowed_plugin.core.kernels import KERNELS, warmup
    from slowed_plugin.core.masking import kept_token_count

    hidden_size, vocab = SHAPES[shape]["hidden_size"], SHAPES[shape]["vocab_size"]
    warmup(vocab, (torch.bfloat16,), device=device, paths=("hidden_states",))
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(batch, length, hidden_size, generator=g).to(device, torch.bfloat16).requires_grad_(True)
    head = (torch.randn(vocab, hidden_size, generator=g) * 0.05).to(device, torch.bfloat16)
    labels = torch.randint(0, vocab, (batch, length), generator=g)
    labels[:, : length // 4] = IGNORE_INDEX
    labels = labels.to(device)
    candidates = int((labels[:, 1:] != IGNORE_INDEX).sum())
    kept = int(kept_token_count(labels, MASK_RATIO, "sequence"))
    rows = hidden.detach().reshape(-1, hidden_size)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def timed(fn) -> list[float]:
        times = []
        for rep in range(reps + 1):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if rep:
                times.append(time.perf_counter() - start)
        return times

    def loss():
        chunked_masked_causal_lm_loss(hidden, head, labels, MASK_RATIO)[0].backward()
        hidden.grad = None

    loss_times = timed(loss)
    matmul_times = timed(lambda: rows @ head.T)
    products = candidates + 2 * kept  # rows of (rows x H) @ (H x V)
    floor = med(matmul_times) * products / rows.shape[0]
    return {
        "loss_s": loss_times,
        "matmul_s": matmul_times,
        "floor_s": floor,
        "products_rows": products,
        "tokens": rows.shape[0],
        "tflops": 2 * hidden_size * vocab * products / med(loss_times) / 1e12,
        "compiled": KERNELS.failed is None,
    }


WORKERS = {"gpu_pairs": worker_gpu_pairs, "loss_floor": worker_loss_floor}


def report(quick: bool, ratios: dict, device: str = "cuda", timeout: float | None = None) -> dict:
    s = settings(device)
    variants = ["stock", "slowed"] + (["liger"] if liger_available(device) else [])
    print(
        f"\n(e) GPU cases on {device}: bf16, LoRA r={RANK} all linear, batch {s['batch']} x {s['length']} (first "
        f"quarter prompt), {s['pairs']} step pairs after a warm-up step, forks taking turns"
    )
    if "liger" not in variants:
        why = "not a CUDA run" if device != "cuda" else "the liger-kernel package is not installed"
        print(f"    Liger's fused linear cross-entropy: skipped ({why})")
    results: dict = {"device": device, "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()}}
    for shape in s["shapes"]:
        runs = run_worker(
            "gpu_pairs", timeout=timeout, shape=shape, pairs=s["pairs"], batch=s["batch"], length=s["length"],
            device=device, variants=variants,
        )  # fmt: skip
        stock = runs["stock"]
        tokens = s["batch"] * s["length"]
        print(
            f"    {shape}: {'variant':<64}{'step s':>8}{'tokens/s':>10}{'peak MiB':>10}  x stock (time per pair; memory)"
        )
        for variant in variants:
            run = runs[variant]
            step = med(run["step_times"][1:])
            line = f"    {'':<{len(shape) + 1}} {VARIANTS[variant]:<64}{step:>8.3f}{tokens / step:>10,.0f}{run['peak_mib']:>10,.0f}"
            if variant != "stock":
                ratio = [x / y for x, y in zip(run["step_times"][1:], stock["step_times"][1:], strict=True)]
                memory = run["peak_mib"] / stock["peak_mib"]
                line += f"  x{spread(ratio)}; x{memory:.2f}"
                ratios[f"{variant}_vs_stock_{shape}"] = med(ratio)
                ratios[f"{variant}_mem_vs_stock_{shape}"] = memory
            print(line)
        if "liger" in runs:
            ratio = [
                x / y for x, y in zip(runs["slowed"]["step_times"][1:], runs["liger"]["step_times"][1:], strict=True)
            ]
            print(f"    {'':<{len(shape) + 1}} SLowED / Liger: step time x{spread(ratio)}")
            ratios[f"slowed_vs_liger_{shape}"] = med(ratio)
        floor = run_worker(
            "loss_floor", timeout=timeout, shape=shape, batch=s["batch"], length=s["length"], reps=s["reps"],
            device=device,
        )  # fmt: skip
        loss = med(floor["loss_s"])
        print(
            f"    {'':<{len(shape) + 1}} the loss alone (chunked from hidden states, frozen bf16 head "
            f"{SHAPES[shape]['hidden_size']} x {SHAPES[shape]['vocab_size']}, mask_ratio {MASK_RATIO}, compiled: "
            f"{floor['compiled']}): {loss * 1e3:.1f} ms, {floor['tflops']:.1f} TFLOP/s; its matmul floor "
            f"({floor['products_rows']} rows of products for {floor['tokens']} tokens) {floor['floor_s'] * 1e3:.1f} ms: "
            f"x{loss / floor['floor_s']:.2f}"
        )
        ratios[f"loss_vs_floor_{shape}"] = loss / floor["floor_s"]
        results[shape] = {"pairs": runs, "loss_floor": floor}
    return results
