"""The rule table: every setting under which SLowED would not run as configured, one :class:`Rule` each."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .anchor import (
    anchor_dataset_type,
    sharded_args,
    sharded_axolotl,
    sharded_trainer,
    unsupported_anchor_dataset,
)
from .engines import deepspeed_args, deepspeed_axolotl, deepspeed_trainer, fsdp_args, fsdp_axolotl, fsdp_trainer
from .rule import Rule, above_one, active, anchored, gradient_anchor, masking, online_masking, slow_tuning
from .subspace import subspace, subspace_sharded_args, subspace_sharded_axolotl, subspace_sharded_trainer
from .training import (
    adapter_kind_axolotl,
    adapter_start_axolotl,
    cce_axolotl,
    context_parallel_axolotl,
    dft_args,
    distillation_axolotl,
    dora_axolotl,
    encoder_decoder_trainer,
    label_smoothing_args,
    liger_args,
    liger_axolotl,
    orpo_axolotl,
    relora_axolotl,
    sft_only_axolotl,
    tensor_parallel_axolotl,
    unknown_loss_type_args,
)

RULES: tuple[Rule, ...] = (
    Rule(
        "supervised fine-tuning only",
        active,
        "SLowED changes the supervised next-token loss and bounds the weights it trains; RL and reward-model "
        "trainers compute other losses.",
        axolotl=sft_only_axolotl,
        reads=("rl", "reward_model", "process_reward_model"),
    ),
    Rule(
        "causal language models only",
        online_masking,
        "the online mask is taken over a causal LM's next-token targets.",
        trl_trainer=encoder_decoder_trainer,
    ),
    Rule(
        "LoRA or full fine-tuning",
        slow_tuning,
        "the projection is exact for ΔW = scaling·B@A and for W - W0; other adapters change W otherwise.",
        axolotl=adapter_kind_axolotl,
        reads=("adapter",),
    ),
    Rule(
        "no DoRA",
        slow_tuning,
        "DoRA's magnitude vector changes W outside scaling·B@A (the TRL side refuses it when SlowTuner meets the model).",
        axolotl=dora_axolotl,
        reads=("peft_use_dora",),
    ),
    Rule(
        "adapters start at ΔW = 0",
        slow_tuning,
        "the ball is around the start; an adapter that starts elsewhere cannot be scaled back into it within rank r.",
        axolotl=adapter_start_axolotl,
        reads=("adapter", "peft_init_lora_weights", "peft", "lora_model_dir", "inference"),
    ),
    Rule(
        "no ReLoRA",
        slow_tuning,
        "each restart merges the adapter into the base weights, out of the projection's reach.",
        axolotl=relora_axolotl,
        reads=("relora",),
    ),
    Rule(
        "DeepSpeed ZeRO 1-3 without optimizer offload",
        slow_tuning,
        "the projection is written to ZeRO's fp32 masters through DeepSpeed's API; stage 0 keeps no such copy, "
        "and an offloaded optimizer's copy was not tested.",
        trl_args=deepspeed_args,
        trl_trainer=deepspeed_trainer,
        axolotl=deepspeed_axolotl,
        reads=("deepspeed",),
    ),
    Rule(
        "FSDP2 only",
        slow_tuning,
        "FSDP1's flattened parameters hide each weight; FSDP2's DTensor shards are gathered for each norm.",
        trl_args=fsdp_args,
        trl_trainer=fsdp_trainer,
        axolotl=fsdp_axolotl,
        reads=("fsdp", "fsdp_config", "fsdp_version"),
    ),
    Rule(
        "no tensor parallelism",
        slow_tuning,
        "weights sharded across ranks are not gathered for the norm.",
        axolotl=tensor_parallel_axolotl,
        reads=("tensor_parallel_size",),
    ),
    Rule(
        "no Cut Cross Entropy",
        online_masking,
        "the online mask needs the logits (their entropies), which Cut Cross Entropy never materialises.",
        axolotl=cce_axolotl,
        reads=("plugins", "cut_cross_entropy"),
    ),
    Rule(
        "no Liger fused linear cross-entropy",
        online_masking,
        "the online mask needs the logits (their entropies), which Liger's fused loss never materialises.",
        trl_args=liger_args,
        axolotl=liger_axolotl,
        reads=("plugins", "liger_fused_linear_cross_entropy", "liger_use_token_scaling"),
    ),
    Rule(
        "no DFT loss",
        online_masking,
        "DFT reweights every token; masking is defined for the plain next-token loss.",
        trl_args=dft_args,
    ),
    Rule(
        "a loss type SLowED masks",
        online_masking,
        "a loss TRL adds (computed from its fused LM head's per-token fields) would train unmasked.",
        trl_args=unknown_loss_type_args,
    ),
    Rule(
        "no label smoothing",
        online_masking,
        "a label-smoothed loss spreads each target over the vocabulary; SLowED's loss is the plain one.",
        trl_args=label_smoothing_args,
    ),
    Rule(
        "no distillation loss",
        masking,
        "the KD trainer computes its own loss, which the mask does not reach.",
        axolotl=distillation_axolotl,
        reads=("plugins", "kd_trainer"),
    ),
    Rule(
        "no ORPO",
        masking,
        "ORPO's loss is not the supervised loss SLowED masks.",
        axolotl=orpo_axolotl,
        reads=("orpo_alpha",),
    ),
    Rule(
        "safety anchor's gradient and KL modes without DeepSpeed or FSDP",
        gradient_anchor,
        "the constraint projects the step's whole gradient as one vector, and the KL term adds its gradient outside "
        "the engine's backward; ZeRO and FSDP shard both.",
        trl_args=sharded_args,
        trl_trainer=sharded_trainer,
        axolotl=sharded_axolotl,
        reads=("deepspeed", "fsdp", "fsdp_config"),
    ),
    Rule(
        "safety subspace without DeepSpeed or FSDP",
        subspace,
        "the projection reads and writes each weight whole; not tested with sharded weights.",
        trl_args=subspace_sharded_args,
        trl_trainer=subspace_sharded_trainer,
        axolotl=subspace_sharded_axolotl,
        reads=("deepspeed", "fsdp", "fsdp_config"),
    ),
    Rule(
        "safety anchor: alpaca or chat_template data (Axolotl)",
        anchored,
        "the anchor rows are written in the first dataset's format and tokenized by its Axolotl prompt strategy.",
        axolotl=unsupported_anchor_dataset,
        reads=("datasets",),
    ),
    Rule(
        "no context parallelism",
        masking,
        "each rank sees a slice of every sequence, so the lowest-entropy share cannot be taken per sequence.",
        axolotl=context_parallel_axolotl,
        reads=("context_parallel_size", "sequence_parallel_degree"),
    ),
)

# Every Axolotl key a rule reads: what a validated config is remembered by (see axolotl/args.py).
AXOLOTL_KEYS: tuple[str, ...] = tuple(dict.fromkeys(key for rule in RULES for key in rule.reads))
# Parallel sizes: absent, null and 1 mean the same to the rules (Axolotl's validation fills in 1).
_SIZES = ("context_parallel_size", "sequence_parallel_degree", "tensor_parallel_size")


def axolotl_facts(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``cfg`` that the rules read, with values that mean the same to them made equal."""
    facts = {key: cfg.get(key) for key in AXOLOTL_KEYS}
    for key in _SIZES:
        facts[key] = facts[key] if above_one(facts[key]) else None
    # The rules read only the first dataset's type (written as a mapping, or already Axolotl's dataset model).
    facts["datasets"] = anchor_dataset_type(cfg)
    return facts
