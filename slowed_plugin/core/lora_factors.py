"""The active LoRA adapters of a model as (A, B) factor pairs: the one discovery that Slow Tuning and the safety
subspace both project through, with the adapters neither can handle refused in the caller's words."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .weight_access import zero_shape


@dataclass(frozen=True)
class LoraFactors:
    name: str  # "module.path[adapter]"
    module_name: str
    module: nn.Module
    adapter: str
    lora_a: torch.Tensor
    lora_b: torch.Tensor
    embedding: bool


def lora_factors(model: nn.Module, cannot: str, off: str, layers: str) -> Iterator[LoraFactors]:
    """Every active adapter of every PEFT ``LoraLayer`` in ``model`` (none without PEFT).

    DoRA, ``lora_bias=True`` and convolution adapters change W outside ``scaling·B@A`` or have no 2-D factors:
    refused with a ValueError in the caller's words: ``cannot`` starts the first two messages ("Slow Tuning cannot
    bound"), ``layers`` the third, and ``off`` says what turns the feature off ("set `tau: null`").
    """
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft is a dependency, but a plain model needs none of it
        return
    for module_name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter in module.active_adapters:
            if adapter in module.lora_A:
                lora_a, lora_b, embedding = module.lora_A[adapter].weight, module.lora_B[adapter].weight, False
            elif adapter in module.lora_embedding_A:
                lora_a, lora_b = module.lora_embedding_A[adapter], module.lora_embedding_B[adapter]
                embedding = True
            else:
                continue
            name = f"{module_name}[{adapter}]"
            if module.use_dora.get(adapter, False):
                raise ValueError(
                    f"{cannot} DoRA layer {name}: its magnitude vector changes W outside scaling·B@A. Set "
                    f"`use_dora=False`, or {off}."
                )
            if getattr(module, "lora_bias", {}).get(adapter, False):
                raise ValueError(
                    f"{cannot} LoRA layer {name} with `lora_bias=True`: the bias is a weight change outside "
                    f"scaling·B@A. Set `lora_bias=False`, or {off}."
                )
            shape = zero_shape(lora_a)
            if len(shape) != 2:
                raise ValueError(
                    f"{layers} supports linear and embedding LoRA layers; {name} is a convolution (lora_A of shape "
                    f"{shape}). Remove it from target_modules, or {off}."
                )
            yield LoraFactors(name, module_name, module, adapter, lora_a, lora_b, embedding)
