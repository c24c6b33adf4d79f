"""Which Axolotl settings SLowED cannot honour exactly, checked on the config alone (no model, no axolotl import).

Every rule states the requirement, then the fix, in one line that names the keys involved. The same
rules run at config validation (:mod:`.args`), in ``slowed check`` and once more when the plugin
attaches to the trainer, so a config that reaches training unvalidated is refused too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from ..config import SLowEDConfig

SLOWED = "SLowED (slowed_plugin.SLowEDPlugin)"
CCE_PLUGIN = "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"
LIGER_PLUGIN = "axolotl.integrations.liger.LigerPlugin"
KD_PLUGIN = "axolotl.integrations.kd.KDPlugin"

# peft_init_lora_weights values that start the adapter at ΔW = 0 (B = 0).
_ZERO_START_INITS = (None, True, "gaussian")


def listed_plugin(cfg: Mapping[str, Any], class_name: str) -> str | None:
    """The entry of ``plugins:`` whose class is ``class_name`` (Axolotl accepts full or short module paths)."""
    for name in cfg.get("plugins") or ():
        if isinstance(name, str) and name.rsplit(".", 1)[-1] == class_name:
            return name
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):  # includes the read-only mappings the config keeps
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def resolved(config: SLowEDConfig) -> dict[str, Any]:
    """The mapping form of ``config`` with every key, as stored in the validated Axolotl config."""
    return {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _above_one(value: Any) -> bool:
    try:
        return value is not None and int(value) > 1
    except (TypeError, ValueError):
        return False


def _fsdp_version(cfg: Mapping[str, Any]) -> Any:
    # As Axolotl resolves it: the top-level key, else `fsdp_config.fsdp_version`, else 1.
    version = cfg.get("fsdp_version")
    if version is None:
        fsdp_config = cfg.get("fsdp_config")
        version = fsdp_config.get("fsdp_version") if isinstance(fsdp_config, Mapping) else None
    return 1 if version is None else version


def _shown(value: Any) -> str:
    return "true" if value is True else "false" if value is False else "null" if value is None else str(value)


# ---------------------------------------------------------------------------------------------- rules
# Each rule: (cfg, config) -> message or None.


def _sft_only(cfg: Mapping[str, Any], config: SLowEDConfig) -> str | None:
    for key in ("rl", "reward_model", "process_reward_model"):
        value = cfg.get(key)
        if value:
            value = getattr(value, "value", value)
            return (
                f"{SLOWED} supports supervised fine-tuning of causal language models; got `{key}: {_shown(value)}`. "
                f"Remove `{key}` or remove the `slowed:` key."
            )
    return None


def _adapter(cfg: Mapping[str, Any], config: SLowEDConfig) -> str | None:
    adapter = cfg.get("adapter")
    if config.slow_tuning and adapter not in (None, "", "lora", "qlora"):
        return (
            f"Slow Tuning (`slowed.tau`) bounds LoRA adapters (`adapter: lora` or `adapter: qlora`) and full "
            f"fine-tuning (no `adapter`); got `adapter: {adapter}`, whose weight change it cannot project exactly. "
            "Use one of those, or set `slowed.tau: null`."
        )
    return None


def _dora(cfg: Mapping[str, Any], config: SLowEDConfig) -> str | None:
    if config.slow_tuning and cfg.get("peft_use_dora"):
        return (
            "Slow Tuning (`slowed.tau`) cannot bound DoRA: its magnitude vector changes W outside scaling·B@A. "
            "Set `peft_use_dora: false`, or set `slowed.tau: null`."
        )
    return None


def _adapter_start(cfg: Mapping[str, Any], config: SLowEDConfig) -> str | None:
    if not config.slow_tuning or cfg.get("adapter") not in ("lora", "qlora"):
        return None
    init = cfg.get("peft_init_lora_weights")
    if init not in _ZERO_START_INITS:
        return (
            "Slow Tuning (`slowed.tau`) needs LoRA adapters that start at ΔW = 0; "
            f"`peft_init_lora_weights: {_shown(init)}` starts elsewhere. "
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


def _relora(cfg: Mapping[str, Any], config: SLowEDConfig) -> str | None:
    if config.slow_tuning and cfg.get("relora"):
        return (
            "Slow Tuning (`slowed.tau`) cannot bound ReLoRA: each restart merges the adapter into the base "
            "weights, out of the projection's reach. Set `relora: false`, or set `slowed.tau: null`."
        )
    return None


def _sharded(cfg: Mapping[str, Any], config: SLowEDConfig) -> str | None:
    if not config.slow_tuning:
        return None
    if cfg.get("deepspeed"):
        return (
            "Slow Tuning (`slowed.tau`) is not supported with `deepspeed`: every ZeRO stage steps its own fp32 "
            "master copy of the weights and copies it back over the model's after each step, which undoes an "
            "in-place projection. Train with DDP or FSDP2 (`fsdp_version: 2`), or set `slowed.tau: null`."
        )
    if cfg.get("fsdp_config") or cfg.get("fsdp"):
        version = _fsdp_version(cfg)
        if str(version) != "2":
            return (
                f"Slow Tuning (`slowed.tau`) supports FSDP2 only (`fsdp_version: 2`, whose DTensor shards it gathers "
                f"for each ΔW norm); got FSDP{version}, whose flattened parameters hide each weight. Set "
                "`fsdp_version: 2`, or set `slowed.tau: null`."
            )
    if _above_one(cfg.get("tensor_parallel_size")):
        return (
            f"Slow Tuning (`slowed.tau`) is not supported with `tensor_parallel_size: "
            f"{cfg.get('tensor_parallel_size')}`: weights are sharded across ranks. Set `tensor_parallel_size: 1`, "
            "or set `slowed.tau: null`."
        )
    return None


def _fused_losses(cfg: Mapping[str, Any], config: SLowEDConfig) -> str | None:
    if not config.masking:
        return None
    cce = listed_plugin(cfg, "CutCrossEntropyPlugin")
    # CutCrossEntropyArgs defaults `cut_cross_entropy` to true once the plugin is listed.
    if cce and cfg.get("cut_cross_entropy", True) not in (False, None):
        return (
            f"Low-Entropy Masking of {SLOWED} needs the logits, which Cut Cross Entropy ({cce}) never "
            "materialises, so the masked loss would not be the one that trains. Set `cut_cross_entropy: false` "
            "(or remove that plugin), or set `slowed.mask_ratio: 0` (Slow Tuning alone works with it)."
        )
    liger = listed_plugin(cfg, "LigerPlugin")
    if liger and (cfg.get("liger_fused_linear_cross_entropy") or cfg.get("liger_use_token_scaling")):
        return (
            f"Low-Entropy Masking of {SLOWED} needs the logits, which Liger's fused linear cross-entropy "
            f"({liger}, `liger_fused_linear_cross_entropy: true`) never materialises. Set "
            "`liger_fused_linear_cross_entropy: false` (Liger's other kernels, `liger_cross_entropy` included, "
            "are fine), or set `slowed.mask_ratio: 0` (Slow Tuning alone works with it)."
        )
    return None


def _own_losses(cfg: Mapping[str, Any], config: SLowEDConfig) -> str | None:
    if not config.masking:
        return None
    if cfg.get("kd_trainer"):
        kd = listed_plugin(cfg, "KDPlugin") or KD_PLUGIN
        return (
            f"Low-Entropy Masking of {SLOWED} cannot mask the distillation loss of {kd} (`kd_trainer: true`), "
            "which its trainer computes itself. Set `slowed.mask_ratio: 0`, or train without `kd_trainer`."
        )
    if cfg.get("orpo_alpha"):
        return (
            f"Low-Entropy Masking of {SLOWED} cannot mask ORPO's loss (`orpo_alpha: {cfg.get('orpo_alpha')}`). "
            "Remove `orpo_alpha`, or set `slowed.mask_ratio: 0`."
        )
    return None


def _context_parallel(cfg: Mapping[str, Any], config: SLowEDConfig) -> str | None:
    if not config.masking:
        return None
    for key in ("context_parallel_size", "sequence_parallel_degree"):
        if _above_one(cfg.get(key)):
            return (
                f"Low-Entropy Masking of {SLOWED} is not supported with `{key}: {cfg.get(key)}`: each rank sees a "
                f"slice of every sequence, so the lowest-entropy share cannot be taken per sequence. Set `{key}: 1`, "
                "or set `slowed.mask_ratio: 0`."
            )
    return None


RULES: tuple[Callable[[Mapping[str, Any], SLowEDConfig], str | None], ...] = (
    _sft_only,
    _adapter,
    _dora,
    _adapter_start,
    _relora,
    _sharded,
    _fused_losses,
    _own_losses,
    _context_parallel,
)


def incompatibilities(cfg: Mapping[str, Any], config: SLowEDConfig) -> list[str]:
    """One line per setting of ``cfg`` (an Axolotl config) that SLowED with ``config`` cannot honour exactly."""
    if not config.active:
        return []
    return [message for rule in RULES if (message := rule(cfg, config)) is not None]
