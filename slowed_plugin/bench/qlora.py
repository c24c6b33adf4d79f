"""A 4-bit NF4 base (bitsandbytes) with LoRA, and one SLowED step on it: QLoRA as the recipes run it, built from
the product's own pieces, shared by ``slowed doctor`` (its 4-bit check) and ``benchmarks/qlora_memory.py``.

The base is built from a config (random weights, no download) and its decoder's linear layers are replaced by
bitsandbytes ``Linear4bit`` (NF4, double quantisation, as ``load_in_4bit`` with Axolotl's defaults); PEFT then
wraps them with its bitsandbytes LoRA layers. A step is the masked loss from hidden states
(:func:`~slowed_plugin.core.hidden_states_loss.chunked_masked_causal_lm_loss`), an optimizer step and
:meth:`~slowed_plugin.core.slow_tuning.SlowTuner.project`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.hidden_states_loss import chunked_masked_causal_lm_loss
from ..core.lm_head import output_head
from ..core.slow_tuning import SlowTuner

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
