"""A 4-bit NF4 base (bitsandbytes) with LoRA, trained a few steps under SLowED: QLoRA as the recipes run it.

The base is built from a config (random weights, no download) and its decoder's linear layers are replaced by
bitsandbytes ``Linear4bit`` (NF4, double quantisation, as ``load_in_4bit`` with Axolotl's defaults); PEFT then
wraps them with its bitsandbytes LoRA layers. A step is the product's own pieces: the masked loss from hidden
states (:func:`~slowed_plugin.core.hidden_states_loss.chunked_masked_causal_lm_loss`), an optimizer step and
:meth:`~slowed_plugin.core.slow_tuning.SlowTuner.project`. ``benchmarks/qlora_memory.py`` trains the QLoRA
recipes' shapes with the same functions.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
from torch import nn

from ..core.hidden_states_loss import chunked_masked_causal_lm_loss
from ..core.lm_head import output_head
from ..core.slow_tuning import SlowTuner
from .findings import Finding

MASK_RATIO = 0.2


def quantize_linears(model: nn.Module, device: str, compute_dtype: torch.dtype) -> int:
    """Replace every ``nn.Linear`` except the output head by a bitsandbytes NF4 ``Linear4bit`` on ``device``;
    returns how many. Each layer is quantised as it is replaced, so a large base never holds two copies."""
    import bitsandbytes as bnb

    head = model.get_output_embeddings()
    # (parent, name) pairs only: holding the children themselves would keep every full-precision weight alive.
    targets = [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear and child is not head
    ]
    for parent, name in targets:
        child = getattr(parent, name)
        layer = bnb.nn.Linear4bit(
            child.in_features,
            child.out_features,
            bias=child.bias is not None,
            compute_dtype=compute_dtype,
            compress_statistics=True,
            quant_type="nf4",
            device="meta",
        )
        weight = child.weight.data.to(compute_dtype)
        layer.weight = bnb.nn.Params4bit(
            weight, requires_grad=False, compress_statistics=True, quant_type="nf4", module=layer
        ).to(device)
        if child.bias is not None:
            layer.bias = nn.Parameter(child.bias.data.to(device, compute_dtype), requires_grad=False)
        setattr(parent, name, layer)
        del child, weight
    return len(targets)


def build_qlora(config, device: str, rank: int, compute_dtype: torch.dtype, checkpointing: bool = False):
    """A PEFT LoRA model (all linear layers, ``lora_alpha = rank``) on an NF4 base built from ``config``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=compute_dtype)
    quantize_linears(model, device, compute_dtype)
    model.requires_grad_(False)
    # What transformers sets when it loads in 4-bit; PEFT reads it to pick its bitsandbytes LoRA layers.
    model.is_loaded_in_4bit = True
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules="all-linear"))


def slowed_step(model, input_ids: torch.Tensor, labels: torch.Tensor, optimizer, tuner: SlowTuner, dtype):
    """One SLowED step: masked loss from hidden states, backward, optimizer step, projection. Returns
    ``(loss, ProjectionReport)``."""
    causal = model.get_base_model()
    parts = output_head(causal)
    if parts is None:
        raise RuntimeError(f"{type(causal).__name__} is not a backbone + linear head; the check needs one")
    with torch.autocast(input_ids.device.type, dtype=dtype, enabled=dtype != torch.float32):
        hidden = parts.backbone(input_ids=input_ids).last_hidden_state
        loss, _, _ = chunked_masked_causal_lm_loss(
            hidden,
            parts.head,
            labels,
            MASK_RATIO,
            "sequence",
            logit_scale=parts.logit_scale,
            final_logit_softcapping=parts.softcap,
        )
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach()), tuner.project()


def random_batch(vocab: int, batch: int, length: int, device: str, seed: int = 0):
    """Token ids and labels with the first quarter (the prompt) ignored."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (batch, length), generator=g)
    labels = ids.clone()
    labels[:, : length // 4] = -100
    return ids.to(device), labels.to(device)


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
