"""(c) ``SlowTuner.project()`` as the callback calls it, on a PEFT LoRA model of Llama-3-8B's shape (r=64, all
linear layers; the frozen base on the meta device, real float32 adapters on ``device``; tau=1 leaves the 64
gate/up projections outside the ball), against materialising every ``ΔW = s·B@A``."""

from __future__ import annotations

import time

from harness import med, run_worker, spread

LLAMA3_8B = {  # LlamaConfig of Llama-3-8B; the base weights stay on the meta device (never allocated)
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128_256,
}
TINY = {  # the dry run's shape: every code path, in seconds
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1024,
}
SHAPES = {"llama-3-8b": LLAMA3_8B, "tiny": TINY}


def _lora_model(shape: str, rank: int, alpha: int, dtype, device: str = "cpu", seed: int = 0):
    """A PEFT LoRA model of ``shape`` (all linear layers): the frozen base on the meta device, real adapters (A as
    PEFT initialises it, a trained-looking B) on ``device``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**SHAPES[shape]))
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, target_modules="all-linear"))
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, LoraLayer):
            lora_a, lora_b = module.lora_A["default"], module.lora_B["default"]
            fan_in, fan_out = lora_a.in_features, lora_b.out_features
            bound = fan_in**-0.5
            a = torch.empty(rank, fan_in).uniform_(-bound, bound, generator=generator)
            b = torch.randn(fan_out, rank, generator=generator) * 1e-3  # trained: ΔW != 0
            lora_a.weight = torch.nn.Parameter(a.to(device, dtype))
            lora_b.weight = torch.nn.Parameter(b.to(device, dtype))
    return model


def worker_slow_tuning(
    reps: int, dense_layers: int, bf16: bool, device: str = "cpu", shape: str = "llama-3-8b"
) -> dict:
    """``SlowTuner.project()`` as the callback calls it (r=64, all linear layers; tau=1 puts the 8B shape's 64
    gate/up projections outside the ball); on CUDA each pass is timed to completion (synchronised)."""
    import torch

    from slowed_plugin.core import slow_tuning
    from slowed_plugin.core.slow_tuning import SlowTuner, lora_delta_norm

    rank, alpha, tau = 64, 128, 1.0
    layers = SHAPES[shape]["num_hidden_layers"]

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def timed(tuner, saved, threads: int):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        times, reports, calls = [], [], []
        original = slow_tuning.lora_delta_norm
        counter = [0]

        def counting(*args):
            counter[0] += 1
            return original(*args)

        slow_tuning.lora_delta_norm = counting
        try:
            for _ in range(reps + 1):
                with torch.no_grad():
                    for weight, b in zip(tuner.lora, saved, strict=True):
                        weight.lora_b.copy_(b)
                counter[0] = 0
                sync()
                start = time.perf_counter()
                reports.append(tuner.project())
                sync()
                times.append(time.perf_counter() - start)
                calls.append(counter[0])
        finally:
            slow_tuning.lora_delta_norm = original
            torch.set_num_threads(previous)
        return times[1:], reports[-1], calls[-1]

    result = {"device": device, "shape": shape}
    for name in ["float32", "bfloat16"] if bf16 else ["float32"]:
        model = _lora_model(shape, rank, alpha, getattr(torch, name), device)
        tuner = SlowTuner(model, tau, check_start=False)
        saved = [w.lora_b.detach().clone() for w in tuner.lora]
        # Default threads (what a user gets), then one thread: 448 small GEMMs, each an OpenMP region,
        # suffer from spin-waiting when other processes hold the cores.
        times, report, calls = timed(tuner, saved, torch.get_num_threads())
        times_one, _, _ = timed(tuner, saved, 1)
        result[name] = {
            "times": times,
            "times_one_thread": times_one,
            "max_norm": report.max_norm,
            "projected": report.num_projected,
            "weights": report.num_weights,
            "norm_calls": calls,
            "adapter_params": sum(w.lora_a.numel() + w.lora_b.numel() for w in tuner.lora),
        }
        if name != "float32":
            del model, tuner, saved
            continue
        # Materialising ΔW, for `dense_layers` layers, extrapolated to all of them.
        pairs = [(w.lora_a.detach(), b, w.scaling) for w, b in zip(tuner.lora, saved, strict=True)]
        pairs = pairs[: dense_layers * 7]
        sync()
        start = time.perf_counter()
        check = [float(torch.linalg.vector_norm(s * (b @ a))) for a, b, s in pairs]
        result["dense_s"] = (time.perf_counter() - start) * layers / dense_layers
        result["dense_layers"] = dense_layers
        result["layers"] = layers
        # Accuracy against float64: the Gram identity in float32, and the materialised ΔW in float32.
        truth = [
            float(((b.double().T @ b.double()) * (a.double() @ a.double().T)).sum().sqrt() * s) for a, b, s in pairs
        ]
        gram = [float(lora_delta_norm(a, b, s)) for a, b, s in pairs]
        result["rel_err_gram"] = max(abs(x - y) / y for x, y in zip(gram, truth, strict=True))
        result["rel_err_dense"] = max(abs(x - y) / y for x, y in zip(check, truth, strict=True))
        del model, tuner, saved, pairs
    return result


WORKERS = {"slow_tuning": worker_slow_tuning}


def report(quick: bool, ratios: dict, device: str = "cpu", shape: str = "llama-3-8b") -> dict:
    st = run_worker(
        "slow_tuning", reps=3 if quick else 7, dense_layers=1 if quick else 2, bf16=not quick, device=device,
        shape=shape,
    )  # fmt: skip
    fp32 = st["float32"]
    print(
        f"\n(c) SlowTuner.project(), as the callback calls it: {shape}-shaped PEFT LoRA r=64, all linear layers "
        f"({fp32['weights']} adapters, {fp32['adapter_params'] / 1e6:.0f}M parameters), tau=1, on {device}"
    )
    for name, r in ((k, st[k]) for k in ("float32", "bfloat16") if k in st):
        print(
            f"    {name}: {med(r['times']):.3f} s median ({spread(r['times'])}) on default threads, "
            f"{med(r['times_one_thread']):.3f} s on 1 thread; {r['projected']}/{r['weights']} projected, "
            f"{r['norm_calls']} norms computed ({r['norm_calls'] / r['weights']:.2f} per adapter)"
        )
    print(
        f"    materialising every ΔW instead: {st['dense_s']:.1f} s (measured on {st['dense_layers']} layer(s), "
        f"x {st['layers'] // st['dense_layers']}), {st['dense_s'] / med(fp32['times']):.0f}x slower"
    )
    print(
        f"    largest relative error of the norm against float64: Gram identity {st['rel_err_gram']:.1e}, "
        f"materialised ΔW {st['rel_err_dense']:.1e}"
    )
    ratios["slow_tuning_s"] = med(fp32["times"])
    return st
