"""The rules on the model, the adapter, the loss and the parallel layout: finders that read one front end's
settings (TRL's arguments or trainer, or an Axolotl config) and return the whole one-line message, or None.

TRL finders speak Python (`` `mask_ratio=0` ``), Axolotl finders YAML (`` `slowed.mask_ratio: 0` ``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .rule import SLOWED, TRL, above_one, listed_plugin, off, shown

if TYPE_CHECKING:
    from transformers import Trainer, TrainingArguments

KD_PLUGIN = "axolotl.integrations.kd.KDPlugin"

# peft_init_lora_weights values that start the adapter at ΔW = 0 (B = 0).
_ZERO_START_INITS = (None, True, "gaussian")


def sft_only_axolotl(cfg: Mapping[str, Any]) -> str | None:
    for key in ("rl", "reward_model", "process_reward_model"):
        value = cfg.get(key)
        if value:
            value = getattr(value, "value", value)
            return (
                f"{SLOWED} supports supervised fine-tuning of causal language models; got `{key}: {shown(value)}`. "
                f"Remove `{key}` or remove the `slowed:` key."
            )
    return None


def encoder_decoder_trainer(trainer: Trainer) -> str | None:
    if getattr(getattr(trainer.model, "config", None), "is_encoder_decoder", False):
        return (
            f"SLowED's Low-Entropy Masking supports causal language models; got an encoder-decoder model "
            f"({type(trainer.model).__name__}). Use a decoder-only model or set {off(TRL, 'mask_ratio')}."
        )
    return None


def adapter_kind_axolotl(cfg: Mapping[str, Any]) -> str | None:
    adapter = cfg.get("adapter")
    if adapter not in (None, "", "lora", "qlora"):
        return (
            f"Slow Tuning (`slowed.tau`) bounds LoRA adapters (`adapter: lora` or `adapter: qlora`) and full "
            f"fine-tuning (no `adapter`); got `adapter: {adapter}`, whose weight change it cannot project exactly. "
            "Use one of those, or set `slowed.tau: null`."
        )
    return None


def dora_axolotl(cfg: Mapping[str, Any]) -> str | None:
    if cfg.get("peft_use_dora"):
        return (
            "Slow Tuning (`slowed.tau`) cannot bound DoRA: its magnitude vector changes W outside scaling·B@A. "
            "Set `peft_use_dora: false`, or set `slowed.tau: null`."
        )
    return None


def adapter_start_axolotl(cfg: Mapping[str, Any]) -> str | None:
    if cfg.get("adapter") not in ("lora", "qlora"):
        return None
    init = cfg.get("peft_init_lora_weights")
    if init not in _ZERO_START_INITS:
        return (
            "Slow Tuning (`slowed.tau`) needs LoRA adapters that start at ΔW = 0; "
            f"`peft_init_lora_weights: {shown(init)}` starts elsewhere. "
            "Use `peft_init_lora_weights: true` (default) or `gaussian`, or set `slowed.tau: null`."
        )
    peft = cfg.get("peft") or {}
    if isinstance(peft, Mapping) and peft.get("loftq_config"):
        return (
            "Slow Tuning (`slowed.tau`) needs LoRA adapters that start at ΔW = 0; LoftQ (`peft.loftq_config`) "
            "starts elsewhere. Remove `peft.loftq_config`, or set `slowed.tau: null`."
        )
    if cfg.get("lora_model_dir") and not cfg.get("inference"):
        return (
            f"Slow Tuning (`slowed.tau`) bounds the change from the start of training, and an adapter loaded from "
            f"`lora_model_dir: {cfg.get('lora_model_dir')}` starts at ΔW ≠ 0, which scaling cannot project toward "
            "within rank r. Merge that adapter into the base model first (`axolotl merge-lora`) and train a new "
            "one, or set `slowed.tau: null`."
        )
    return None


def relora_axolotl(cfg: Mapping[str, Any]) -> str | None:
    if cfg.get("relora"):
        return (
            "Slow Tuning (`slowed.tau`) cannot bound ReLoRA: each restart merges the adapter into the base "
            "weights, out of the projection's reach. Set `relora: false`, or set `slowed.tau: null`."
        )
    return None


def tensor_parallel_axolotl(cfg: Mapping[str, Any]) -> str | None:
    if above_one(cfg.get("tensor_parallel_size")):
        return (
            f"Slow Tuning (`slowed.tau`) is not supported with `tensor_parallel_size: "
            f"{cfg.get('tensor_parallel_size')}`: weights are sharded across ranks. Set `tensor_parallel_size: 1`, "
            "or set `slowed.tau: null`."
        )
    return None


def cce_axolotl(cfg: Mapping[str, Any]) -> str | None:
    cce = listed_plugin(cfg, "CutCrossEntropyPlugin")
    # CutCrossEntropyArgs defaults `cut_cross_entropy` to true once the plugin is listed.
    if cce and cfg.get("cut_cross_entropy", True) not in (False, None):
        return (
            f"Low-Entropy Masking of {SLOWED} needs the logits, which Cut Cross Entropy ({cce}) never "
            "materialises, so the masked loss would not be the one that trains. Set `cut_cross_entropy: false` "
            "(or remove that plugin), or set `slowed.mask_ratio: 0` (Slow Tuning alone works with it)."
        )
    return None


def liger_args(args: TrainingArguments) -> str | None:
    if getattr(args, "use_liger_kernel", False):
        return (
            "SLowED's Low-Entropy Masking needs the model's per-token entropies, which `use_liger_kernel=True` "
            f"never materialises. Set `use_liger_kernel=False` (SLowED computes the loss itself) or {off(TRL, 'mask_ratio')}."
        )
    return None


def liger_axolotl(cfg: Mapping[str, Any]) -> str | None:
    liger = listed_plugin(cfg, "LigerPlugin")
    if liger and (cfg.get("liger_fused_linear_cross_entropy") or cfg.get("liger_use_token_scaling")):
        return (
            f"Low-Entropy Masking of {SLOWED} needs the logits, which Liger's fused linear cross-entropy "
            f"({liger}, `liger_fused_linear_cross_entropy: true`) never materialises. Set "
            "`liger_fused_linear_cross_entropy: false` (Liger's other kernels, `liger_cross_entropy` included, "
            "are fine), or set `slowed.mask_ratio: 0` (Slow Tuning alone works with it)."
        )
    return None


def dft_args(args: TrainingArguments) -> str | None:
    if getattr(args, "loss_type", None) == "dft":
        return (
            "SLowED's Low-Entropy Masking is not defined for `loss_type='dft'` (DFT reweights every token). "
            f"Use `loss_type='nll'` or the default `'chunked_nll'`, or set {off(TRL, 'mask_ratio')}."
        )
    return None


# The `loss_type` values whose loss SLowED computes itself (TRL 1.4-1.14: chunked_nll and nll; TRL 1.15+: both
# are the fused LM head's sum of -log p, which SLowED answers with the kept targets only); dft has its own rule.
KNOWN_LOSS_TYPES = (None, "nll", "chunked_nll", "dft")


def unknown_loss_type_args(args: TrainingArguments) -> str | None:
    loss_type = getattr(args, "loss_type", None)
    if loss_type not in KNOWN_LOSS_TYPES:
        return (
            f"SLowED's Low-Entropy Masking does not know `loss_type={loss_type!r}`, so it cannot mask that loss (it "
            f"masks 'nll' and 'chunked_nll'). Use `loss_type='nll'`, or set {off(TRL, 'mask_ratio')}."
        )
    return None


def label_smoothing_args(args: TrainingArguments) -> str | None:
    smoothing = getattr(args, "label_smoothing_factor", 0)
    if smoothing:
        return (
            f"SLowED's Low-Entropy Masking cannot mask a label-smoothed loss: got `label_smoothing_factor={smoothing}`. "
            f"Set it to 0 or set {off(TRL, 'mask_ratio')}."
        )
    return None


def distillation_axolotl(cfg: Mapping[str, Any]) -> str | None:
    if cfg.get("kd_trainer"):
        kd = listed_plugin(cfg, "KDPlugin") or KD_PLUGIN
        return (
            f"Low-Entropy Masking of {SLOWED} cannot mask the distillation loss of {kd} (`kd_trainer: true`), "
            "which its trainer computes itself. Set `slowed.mask_ratio: 0`, or train without `kd_trainer`."
        )
    return None


def orpo_axolotl(cfg: Mapping[str, Any]) -> str | None:
    if cfg.get("orpo_alpha"):
        return (
            f"Low-Entropy Masking of {SLOWED} cannot mask ORPO's loss (`orpo_alpha: {cfg.get('orpo_alpha')}`). "
            "Remove `orpo_alpha`, or set `slowed.mask_ratio: 0`."
        )
    return None


def context_parallel_axolotl(cfg: Mapping[str, Any]) -> str | None:
    for key in ("context_parallel_size", "sequence_parallel_degree"):
        if above_one(cfg.get(key)):
            return (
                f"Low-Entropy Masking of {SLOWED} is not supported with `{key}: {cfg.get(key)}`: each rank sees a "
                f"slice of every sequence, so the lowest-entropy share cannot be taken per sequence. Set `{key}: 1`, "
                "or set `slowed.mask_ratio: 0`."
            )
    return None
