"""The training loss SLowED computes in place of the model's: which core path, on what inputs.

Two paths, both in :mod:`slowed_plugin.core`:

- from hidden states (:func:`~slowed_plugin.core.hidden_states_loss.chunked_masked_causal_lm_loss`): the
  default, for a decoder + linear head. Like TRL's default ``chunked_nll`` it never builds the full logits. A
  head that FSDP2 made a unit of its own is gathered only by its own forward, so there the loss runs as that
  module's forward (:func:`~slowed_plugin.core.lm_head.in_head_forward`).
- on logits (:func:`~slowed_plugin.core.logits_loss.fused_masked_causal_lm_loss`): for TRL's ``loss_type="nll"``
  (its metrics read the logits), MoE models (the router's aux loss needs the model's own forward), multimodal
  models, PEFT-adapted or quantised heads, and DeepSpeed ZeRO-3 (whose partitioned head weight only the head
  module's own forward and backward gather).

TRL 1.15+ computes SFT's training loss from a fused LM head instead (``model(**inputs, fused_lm_head=True)``, whose
per-token ``log_probs`` it sums itself): :meth:`MaskedCausalLMLoss.fused` answers those calls with the same two paths
in per-token form (``-log p`` of the kept targets, zero elsewhere), so TRL's own sum is the masked loss.

Evaluation never comes here (the forward patch passes through when the model is not training), so eval loss
stays the plain cross-entropy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import ModelOutput

from ..config import SLowEDConfig
from ..core.hidden_states_loss import chunked_masked_causal_lm_loss, chunked_masked_token_losses
from ..core.kernels import normalise
from ..core.lm_head import OutputHead, in_head_forward, output_head
from ..core.logits_loss import fused_masked_causal_lm_loss, fused_masked_token_losses
from ..core.masking import IGNORE_INDEX, MaskStats, mask_low_entropy_targets
from ..core.weight_access import is_zero3_param


@dataclass
class SLowEDCausalLMOutput(CausalLMOutputWithPast):
    """The model output of a masked training step, with the fields TRL's ``chunked_nll`` metrics read."""

    num_valid_tokens: torch.Tensor | None = None
    entropy_sum: torch.Tensor | None = None
    num_correct_tokens: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    router_logits: tuple[torch.Tensor, ...] | None = None


_OUTPUT_FIELDS = {f.name for f in fields(SLowEDCausalLMOutput)}


@dataclass
class SLowEDFusedOutput(ModelOutput):
    """The answer to a fused-LM-head call (TRL >= 1.15, ``fused_lm_head=True``): the fields of TRL's
    ``FusedCausalLMOutput``, as TRL's fused head computes them on the labels with the dropped targets set to -100.
    ``loss`` is the masked loss (as the model's own loss would be); TRL's SFT sums ``-log_probs`` itself."""

    loss: torch.Tensor | None = None
    log_probs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    log_sum_sq_probs: torch.Tensor | None = None  # not computed (TRL's SFT does not ask for it)
    mean_logits: torch.Tensor | None = None  # not computed (TRL's SFT does not ask for it)
    is_top1: torch.Tensor | None = None
    label_mask: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


def hidden_states_head(causal: torch.nn.Module, loss_type: str | None) -> OutputHead | None:
    """The head the hidden-states path uses for ``causal``, or None where the loss must be taken on logits."""
    config = causal.config
    if loss_type == "nll" or getattr(config, "output_router_logits", False):
        return None
    if getattr(config, "text_config", None) is not None:
        return None
    return output_head(causal)


class MaskedCausalLMLoss:
    """``forward`` of a causal LM in training, with the loss over the kept targets only.

    Args:
        config: the SLowED settings.
        causal: the causal LM (the base model under PEFT) whose forward this replaces.
        loss_type: TRL's ``loss_type`` (None for other trainers, and under TRL's fused LM head, where no ``loss_type``
            reads logits).
        record: receives the :class:`MaskStats` of every call (metrics).
        step: the optimizer step being computed (1-based), for error messages.
    """

    def __init__(
        self,
        config: SLowEDConfig,
        causal: torch.nn.Module,
        loss_type: str | None,
        record: Callable[[MaskStats], None],
        step: Callable[[], int | str],
    ) -> None:
        self.config, self.record, self.step = config, record, step
        self.causal = causal  # the module whose forward is replaced
        self.head = hidden_states_head(causal, loss_type)
        # A fused-head call returns no logits (TRL reads per-token fields), so the hidden-states path serves it
        # whatever `loss_type` says.
        self.fused_head = hidden_states_head(causal, None)
        self.router_coef = getattr(causal.config, "router_aux_loss_coef", 0.0)
        # Set by `patches.redirect_fused_lm_head` around a fused-LM-head call it sends down the forward chain.
        self.fused_call = False

    @staticmethod
    def _partitioned(head: OutputHead) -> bool:
        return any(is_zero3_param(p) for p in head.head.parameters())

    def path(self, fused: bool = False) -> str:
        """``"hidden_states"`` or ``"logits"``: the core loss a training step (``fused``: a fused-LM-head call)
        takes now (MoE forwards that ask for router logits take the logits path whatever this says)."""
        head = self.fused_head if fused else self.head
        return "hidden_states" if head is not None and not self._partitioned(head) else "logits"

    def __call__(
        self,
        forward: Callable[..., Any],
        args: tuple,
        kwargs: dict[str, Any],
        labels: torch.Tensor | None,
        shift_labels: torch.Tensor | None,
        num_items_in_batch: torch.Tensor | int | None,
    ) -> SLowEDCausalLMOutput:
        cfg = self.config
        common = dict(
            num_items_in_batch=num_items_in_batch, position_ids=kwargs.get("position_ids"), shift_labels=shift_labels
        )
        try:
            # Under ZeRO-3 the head's weight is a partition, gathered only by the head module's own forward (and
            # again for its backward): the model's forward then computes the logits and the loss is taken on them.
            if not kwargs.get("output_router_logits") and self.path() == "hidden_states":
                kwargs.pop("use_cache", None)
                kwargs.pop("logits_to_keep", None)
                outputs = self.head.backbone(*args, use_cache=False, **kwargs)
                logits = None
                head = self.head
                loss, stats, extra = in_head_forward(
                    head.head,
                    lambda hidden: chunked_masked_causal_lm_loss(
                        hidden,
                        head.head,
                        labels,
                        cfg.mask_ratio,
                        cfg.mask_scope,
                        **common,
                        logit_scale=head.logit_scale,
                        final_logit_softcapping=head.softcap,
                    ),
                    outputs.last_hidden_state,
                )
            else:
                # No labels: the model (or TRL's chunked forward, which then falls back) returns logits.
                outputs = forward(*args, **kwargs)
                logits = outputs.logits
                loss, stats, extra = fused_masked_causal_lm_loss(
                    logits, labels, cfg.mask_ratio, cfg.mask_scope, **common, return_extra=True
                )
        except FloatingPointError as err:  # stop before the optimizer writes NaN into the weights
            raise FloatingPointError(f"{err} (optimizer step {self.step()}); the weights were not updated.") from None
        if getattr(outputs, "aux_loss", None) is not None and self.router_coef:
            loss = loss + self.router_coef * outputs.aux_loss.to(loss.device)
        self.record(stats)
        # TRL's chunked_nll metrics read these fields instead of logits. They must be declared fields:
        # accelerate's fp32 output conversion rebuilds the output from its keys.
        kept = {k: v for k, v in outputs.items() if k in _OUTPUT_FIELDS}
        return SLowEDCausalLMOutput(**{**kept, "loss": loss, "logits": logits}, **extra)

    def fused(
        self,
        forward: Callable[..., Any],
        args: tuple,
        kwargs: dict[str, Any],
        labels: torch.Tensor | None,
        shift_labels: torch.Tensor | None,
        num_items_in_batch: torch.Tensor | int | None,
    ) -> SLowEDFusedOutput:
        """A training call of TRL's fused LM head (``fused_lm_head=True``), answered with the masked per-token
        fields: ``-log_probs.sum()`` over the batch, divided by ``num_items_in_batch`` (the step's kept count, see
        :func:`.patches.install_kept_token_count`) or by ``label_mask.sum()`` (the kept count) is the masked loss.
        ``forward`` (without labels) is the model's forward, used on the logits path."""
        cfg = self.config
        common = dict(position_ids=kwargs.get("position_ids"), shift_labels=shift_labels)
        try:
            if not kwargs.get("output_router_logits") and self.path(fused=True) == "hidden_states":
                kwargs.pop("use_cache", None)
                kwargs.pop("logits_to_keep", None)
                head = self.fused_head
                outputs = head.backbone(*args, use_cache=False, **kwargs)
                tokens, stats = in_head_forward(
                    head.head,
                    lambda hidden: chunked_masked_token_losses(
                        hidden,
                        head.head,
                        labels,
                        cfg.mask_ratio,
                        cfg.mask_scope,
                        **common,
                        logit_scale=head.logit_scale,
                        final_logit_softcapping=head.softcap,
                    ),
                    outputs.last_hidden_state,
                )
            else:
                outputs = forward(*args, **kwargs)
                tokens, stats = fused_masked_token_losses(
                    outputs.logits, labels, cfg.mask_ratio, cfg.mask_scope, **common
                )
        except FloatingPointError as err:  # stop before the optimizer writes NaN into the weights
            raise FloatingPointError(f"{err} (optimizer step {self.step()}); the weights were not updated.") from None
        loss = normalise(tokens.nll.sum(), tokens.kept.sum().clamp_min(1), num_items_in_batch)
        aux_loss = getattr(outputs, "aux_loss", None)
        if aux_loss is not None and self.router_coef:
            loss = loss + self.router_coef * aux_loss.to(loss.device)
        self.record(stats)
        return SLowEDFusedOutput(
            loss=loss,
            log_probs=-tokens.nll,
            entropy=tokens.entropy,
            is_top1=tokens.hit,
            label_mask=tokens.kept,
            aux_loss=aux_loss,
        )


def masked_labels(
    config: SLowEDConfig, logits: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor | None
) -> tuple[torch.Tensor, MaskStats]:
    """Unshifted labels with the dropped targets set to -100, for a custom ``compute_loss_func``."""
    masked, stats = mask_low_entropy_targets(
        logits, labels, config.mask_ratio, config.mask_scope, position_ids=position_ids
    )
    return torch.nn.functional.pad(masked, (1, 0), value=IGNORE_INDEX), stats
