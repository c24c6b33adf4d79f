"""(d) The real shape on CPU: a Qwen2.5-0.5B-shaped model built locally, stock ``SFTTrainer`` (TRL's default loss:
the fused LM head from TRL 1.15, ``chunked_nll`` before; the path taken is printed) and the same + ``SLowEDCallback`` in forks taking turns step by step (:mod:`slowed_plugin.bench.step_pairs`);
the callback's one-off kernel compile (cold and from inductor's cache); the chunked loss at mask_ratio 0.2
against the same kernels at 0."""

from __future__ import annotations

import shutil
import tempfile
import time

from harness import MASK_RATIO, VOCAB, load, med, run_worker, spread

from slowed_plugin.bench.step_pairs import SHAPES, run_pairs, save_model

SHAPE = "qwen2.5-0.5b"
DTYPES = ("float32", "bfloat16")


def worker_real_model(path: str) -> dict:
    """Build the Qwen2.5-0.5B-shaped model once and save it, so that every step process loads the same
    weights (a memory map) instead of initialising 494M parameters again."""
    return {"params": save_model(SHAPE, path)}


def worker_real_steps(model_dir: str, dtype: str, pairs: int, length: int) -> dict:
    return run_pairs(SHAPE, dtype, pairs, batch=1, length=length, device="cpu", rank=16, model_dir=model_dir)


def worker_compile(dtypes: list[str]) -> dict:
    """The callback's warm-up in a fresh process (TORCHINDUCTOR_CACHE_DIR set by the caller)."""
    import torch

    from slowed_plugin.core.kernels import KERNELS, warmup

    seconds = warmup(VOCAB, tuple(getattr(torch, d) for d in dtypes))
    return {"compile_s": seconds, "compiled": KERNELS.failed is None}


def worker_chunked_loss(tokens: int, reps: int) -> dict:
    """The chunked loss from hidden states at Qwen2.5-0.5B's head (896 x 151,936, frozen, bf16), at
    mask_ratio 0.2 and at 0 (the same kernels keeping every target): what the masking itself costs or saves."""
    import torch

    from slowed_plugin.core.hidden_states_loss import chunked_masked_causal_lm_loss
    from slowed_plugin.core.kernels import warmup

    hidden_size = SHAPES[SHAPE]["hidden_size"]
    warmup(VOCAB, (torch.bfloat16,), paths=("hidden_states",))
    torch.manual_seed(0)
    hidden = torch.randn(1, tokens, hidden_size, dtype=torch.bfloat16, requires_grad=True)
    head = (torch.randn(VOCAB, hidden_size) * 0.05).bfloat16()
    labels = torch.randint(0, VOCAB, (1, tokens))
    labels[0, : tokens // 4] = -100
    times: dict[str, list[float]] = {"masked": [], "unmasked": []}
    for rep in range(reps + 1):
        for name, ratio in (("masked", MASK_RATIO), ("unmasked", 0.0)):
            start = time.perf_counter()
            chunked_masked_causal_lm_loss(hidden, head, labels, ratio)[0].backward()
            if rep:
                times[name].append(time.perf_counter() - start)
            hidden.grad = None
    return times


WORKERS = {
    "real_model": worker_real_model,
    "real_steps": worker_real_steps,
    "compile": worker_compile,
    "chunked_loss": worker_chunked_loss,
}


def report(
    quick: bool, ratios: dict, pairs: int | None = None, dtypes: tuple[str, ...] = DTYPES, steps_only: bool = False
) -> None:
    """``pairs`` step pairs per dtype (default 3 with ``quick``, else 5); ``steps_only`` leaves out the compile and
    the chunked loss alone, for a run that must end within minutes."""
    print(f"\n(d) real shape: Qwen2.5-0.5B-shaped model (load average now {load()})")
    if not steps_only:
        _compile_and_loss(quick, ratios)
    _steps(quick, ratios, pairs, dtypes)


def _compile_and_loss(quick: bool, ratios: dict) -> None:
    cache = tempfile.mkdtemp(prefix="slowed-bench-inductor-")
    try:
        env = {"TORCHINDUCTOR_CACHE_DIR": cache}
        cold = run_worker("compile", env_extra=env, dtypes=["float32"])
        warm = run_worker("compile", env_extra=env, dtypes=["float32"])
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(
        f"    one-off compile of the loss kernels (the callback's warm-up, fp32, both loss paths), per process: "
        f"{cold['compile_s']:.1f} s with an empty inductor cache, {warm['compile_s']:.1f} s from the cache "
        f"(compiled: {cold['compiled']})"
    )
    ratios["compile_s"] = cold["compile_s"]
    ratios["compile_warm_s"] = warm["compile_s"]

    loss = run_worker("chunked_loss", tokens=512, reps=3 if quick else 6)
    ratio = [m / u for m, u in zip(loss["masked"], loss["unmasked"], strict=True)]
    print(
        f"    chunked loss from hidden states, 1 x 512 tokens (first quarter prompt), head 896 x {VOCAB} bf16: "
        f"mask_ratio={MASK_RATIO} {med(loss['masked']):.3f} s vs mask_ratio=0 (same kernels) "
        f"{med(loss['unmasked']):.3f} s: x{spread(ratio)} (min-median-max of pairs)"
    )
    ratios["mask_vs_unmasked"] = med(ratio)


def _steps(quick: bool, ratios: dict, pairs: int | None, dtypes: tuple[str, ...]) -> None:
    model_dir = tempfile.mkdtemp(prefix="slowed-bench-qwen-")
    try:
        params = run_worker("real_model", path=model_dir)["params"]
        pairs = pairs or (3 if quick else 5)
        print(
            f"    SFTTrainer step, {params / 1e6:.0f}M parameters (24 layers, hidden 896, vocab {VOCAB}, tied "
            f"head), LoRA r=16 all linear, batch 1 x 512 (first quarter prompt); stock (TRL's default loss) and "
            f"+ SLowEDCallback(tau=10, mask_ratio={MASK_RATIO}) in two forks taking turns, {pairs} step pairs "
            "after one warm-up step each"
        )
        print(
            f"    {'weights':<10}{'stock s':>9}{'SLowED s':>10}{'x stock, per pair min-median-max':>36}"
            f"{'RSS MiB':>10}{'x stock':>9}{'load':>7}"
        )
        for dtype in dtypes:
            key = {"float32": "real", "bfloat16": "real_bf16"}[dtype]
            run = run_worker("real_steps", model_dir=model_dir, dtype=dtype, pairs=pairs, length=512)
            stock, slowed = run["stock"], run["slowed"]
            ratio = [x / y for x, y in zip(slowed["step_times"][1:], stock["step_times"][1:], strict=True)]
            rss = slowed["peak_mib"] / stock["peak_mib"]
            print(
                f"    {dtype:<10}{med(stock['step_times'][1:]):>9.2f}{med(slowed['step_times'][1:]):>10.2f}"
                f"{spread(ratio):>36}{slowed['peak_mib']:>10.0f}{rss:>9.2f}{load():>7}"
            )
            print(
                f"    {'':<10}first step s: stock {stock['step_times'][0]:.1f}, SLowED {slowed['step_times'][0]:.1f}; "
                f"whole process s: stock {stock['process_s']:.0f}, SLowED {slowed['process_s']:.0f}"
            )
            print(f"    {'':<10}loss path: stock {stock['loss_path']}; SLowED over {slowed['loss_path']}")
            ratios[f"step_time_{key}"] = med(ratio)
            ratios[f"step_rss_{key}"] = rss
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
