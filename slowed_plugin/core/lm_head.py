"""A causal LM seen as ``backbone -> hidden states -> linear head -> logits``, for the losses that never build
the full logits (:mod:`.hidden_states_loss`, the reference mask's entropies).

transformers' ``*ForCausalLM`` classes compute ``logits = lm_head(hidden) * logit_scale`` (Cohere) and then
``softcap * tanh(logits / softcap)`` (Gemma 2); :class:`OutputHead` carries both, so a chunked loss reproduces
the model's own logits exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class OutputHead:
    """The pieces of a decoder + linear head: ``logits = softcap(head(backbone(...).last_hidden_state) * scale)``."""

    backbone: nn.Module
    head: nn.Module
    logit_scale: float
    softcap: float | None


def lm_head_parameters(lm_head: nn.Module | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight, bias)`` of an output projection, or ``ValueError`` when it is not a plain linear map."""
    if isinstance(lm_head, torch.Tensor):
        weight, bias = lm_head, None
    else:
        try:
            from peft.tuners.tuners_utils import BaseTunerLayer
        except ImportError:  # pragma: no cover - peft is a dependency
            BaseTunerLayer = ()  # noqa: N806
        if BaseTunerLayer and isinstance(lm_head, BaseTunerLayer):
            raise ValueError(
                "SLowED's chunked loss reads the output projection's weight directly, so it cannot train a PEFT "
                "adapter on `lm_head` (e.g. `target_modules='all-linear'` or one that lists `lm_head`). Remove "
                "`lm_head` from `target_modules` (use `modules_to_save=['lm_head']` to train it fully), or compute "
                "the loss on logits with `fused_masked_causal_lm_loss`."
            )
        # A PEFT ModulesToSaveWrapper resolves `.weight` to its active copy, as TRL relies on too.
        weight, bias = getattr(lm_head, "weight", None), getattr(lm_head, "bias", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(
            f"SLowED's chunked loss needs an `lm_head` with a floating-point (vocab, hidden) weight; got "
            f"{type(lm_head).__name__} with weight {getattr(weight, 'dtype', None)} "
            f"{tuple(getattr(weight, 'shape', ()))}. Quantised heads need the loss on logits "
            "(`fused_masked_causal_lm_loss`)."
        )
    if bias is not None and not isinstance(bias, torch.Tensor):
        bias = None
    return weight, bias


def _is_fsdp_unit(module: nn.Module) -> bool:
    """Whether FSDP2 (``fully_shard``) made ``module`` a unit of its own: its parameters are DTensor shards outside
    its own forward."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return False
    return isinstance(module, FSDPModule)


def in_head_forward(head: nn.Module, loss: Callable[[torch.Tensor], Any], hidden: torch.Tensor) -> Any:
    """``loss(hidden)``, a loss that reads ``head.weight`` directly, run as ``head``'s own forward when the head is
    an FSDP2 unit of its own.

    FSDP2 gathers a unit's weight only around that module's forward (and again for its backward, through hooks
    on the forward's inputs and outputs), and reduces its gradient over the ranks only after that backward.
    Read outside, ``head.weight`` is this rank's DTensor shard; ``full_tensor()`` would give the whole value,
    but the gradient through it lands on the shard without being summed over ranks. So the loss runs inside the
    head's ``__call__`` with the forward redirected to it: the weight it reads is the gathered one, and the
    gradient takes FSDP's own reduction. Anywhere else (one process, DDP, a head that belongs to the root FSDP
    unit, which the model's own forward has gathered) the loss is called directly.
    """
    if not _is_fsdp_unit(head):
        return loss(hidden)

    def forward(hooked: torch.Tensor) -> Any:
        # Put the module's forward back first: the loss or a later caller may run the head normally.
        restore()
        return loss(hooked)  # `hooked`: the hidden states as FSDP's pre-forward returned them (its backward hook)

    had_own = "forward" in vars(head)
    previous = vars(head).get("forward")

    def restore() -> None:
        if had_own:
            head.forward = previous
        else:
            vars(head).pop("forward", None)

    head.forward = forward
    try:
        return head(hidden)
    finally:
        restore()


def output_head(causal: nn.Module, adapters_disabled: bool = False) -> OutputHead | None:
    """``causal`` as backbone + linear head, or None when it is not one (no separate backbone, a quantised or
    PEFT-adapted head); callers then compute the loss on the model's logits instead.

    ``adapters_disabled``: the caller runs the model with its adapters off (the initial model), so a PEFT layer
    on the head, or a ``modules_to_save`` copy of it, stands for its original module.
    """
    head = causal.get_output_embeddings() if hasattr(causal, "get_output_embeddings") else None
    backbone = getattr(causal, "base_model", None)
    if head is None or backbone is None or backbone is causal:
        return None
    if adapters_disabled:
        base_layer = getattr(head, "get_base_layer", None)
        if callable(base_layer):
            head = base_layer()
        original = getattr(head, "original_module", None)
        if isinstance(original, nn.Module):
            head = original
    try:
        lm_head_parameters(head)
    except ValueError:
        return None
    config = getattr(causal, "config", None)
    config = getattr(config, "text_config", None) or config
    return OutputHead(
        backbone=backbone,
        head=head,
        logit_scale=float(getattr(config, "logit_scale", None) or 1.0),
        softcap=getattr(config, "final_logit_softcapping", None),
    )
