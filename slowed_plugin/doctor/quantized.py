"""A 4-bit NF4 base (bitsandbytes) with LoRA, trained a few steps under SLowED: QLoRA as the recipes run it.

The base is built from a config (random weights, no download) and its decoder's linear layers are replaced by
bitsandbytes ``Linear4bit`` (NF4, double quantisation, as ``load_in_4bit`` with Axolotl's defaults); PEFT then
wraps them with its bitsandbytes LoRA layers. The build and the step are :mod:`slowed_plugin.bench.qlora`'s,
which ``benchmarks/qlora_memory.py`` uses to train the QLoRA recipes' shapes.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from ..bench.qlora import build_qlora, random_batch, slowed_step
from ..core.slow_tuning import SlowTuner
from .findings import Finding


@dataclass(frozen=True)
class QuantizedResult:
    quantized_layers: int
    lora_layers: int
    losses: list[float]
    projected: int
    adapters: int
    max_norm_after: float
    tau: float


def run_4bit(device: str, steps: int = 3, tau: float = 0.05) -> QuantizedResult:
    """A 2-layer Llama (hidden 256) in NF4 with LoRA r=8 on ``device``: ``steps`` SLowED steps at a learning rate
    that takes every adapter past ``tau`` at once, so each step's projection has work to do."""
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1024,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = build_qlora(config, device, rank=8, compute_dtype=dtype)
    quantized = sum(type(m).__name__ == "Linear4bit" and not isinstance(m, LoraLinear4bit) for m in model.modules())
    lora = sum(isinstance(m, LoraLinear4bit) for m in model.modules())
    tuner = SlowTuner(model, tau)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses, projected = [], 0
    for step in range(steps):
        ids, labels = random_batch(config.vocab_size, 2, 64, device, seed=step)
        loss, report = slowed_step(model, ids, labels, optimizer, tuner, dtype)
        losses.append(loss)
        projected = max(projected, report.num_projected)
    return QuantizedResult(quantized, lora, losses, projected, len(tuner.weights), float(tuner.norms().max()), tau)


def quantized_findings(device: str, force: bool = False) -> list[Finding]:
    """The 4-bit check where bitsandbytes is installed and the device is a CUDA GPU (``force``: on any device,
    for the tests and the GPU check's dry run); otherwise one line saying why it was skipped."""
    name = "qlora.4bit"
    if importlib.util.find_spec("bitsandbytes") is None:
        return [Finding(name, "skip", "bitsandbytes is not installed (pip install 'slowed-plugin[bnb]')")]
    if device != "cuda" and not force:
        return [Finding(name, "skip", f"needs a CUDA GPU (QLoRA's 4-bit kernels); this run is on {device}")]
    try:
        r = run_4bit(device)
    except Exception as err:  # noqa: BLE001 - a failure here is the finding
        return [Finding(name, "FAIL", f"raised {type(err).__name__}: {err}")]
    inside = r.max_norm_after <= r.tau * (1 + 1e-4)
    finite = all(loss == loss and abs(loss) != float("inf") for loss in r.losses)
    problems = []
    if r.quantized_layers == 0 or r.lora_layers != r.quantized_layers:
        problems.append(f"{r.lora_layers} LoRA layers on {r.quantized_layers} 4-bit layers")
    if not finite:
        problems.append("a non-finite loss")
    if not inside:
        problems.append(f"an adapter outside tau after the projection (||ΔW|| {r.max_norm_after:.4g} > {r.tau})")
    if r.projected == 0:
        problems.append("no adapter reached tau, so the projection was not exercised")
    message = (
        f"NF4 base, {r.lora_layers} LoRA layers on 4-bit linears, {len(r.losses)} SLowED steps, losses "
        f"{', '.join(f'{x:.3f}' for x in r.losses)}; up to {r.projected}/{r.adapters} adapters projected per step, "
        f"largest ||ΔW||_F after {r.max_norm_after:.4g} (tau {r.tau})"
    )
    if problems:
        return [Finding(name, "FAIL", "; ".join(problems) + f" ({message})", vars(r))]
    return [Finding(name, "ok", message, vars(r))]
