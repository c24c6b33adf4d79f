"""Which trainer settings SLowED cannot honour exactly.

The settings that live in ``TrainingArguments`` / ``SFTConfig`` are checked on the arguments alone, so that
a TRL script can fail before it loads a model (``check_training_args(config, args)``); the callback runs the
same checks again when it attaches, together with those that need the built trainer (the model's kind, a
sharding engine configured by ``accelerate launch`` rather than by the arguments). Every message names the
setting, its value, and what SLowED accepts instead, on one line.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from .config import SLowEDConfig, SLowEDConfigError

if TYPE_CHECKING:
    from transformers import Trainer, TrainingArguments


def check_training_args(config: SLowEDConfig | dict | list | tuple, args: TrainingArguments) -> None:
    """Raise :class:`SLowEDConfigError` if ``args`` holds a setting under which ``config`` would not run as set.

    Needs no model: call it right after building the ``SFTConfig`` to fail before loading one.
    """
    config = SLowEDConfig.from_value(config)
    if config.masking and config.entropy_source == "online":
        _check_masking_args(args)
    if config.slow_tuning:
        fsdp_plugin_args = getattr(args, "fsdp_plugin_args", None)
        if fsdp_plugin_args:
            _check_fsdp_version(fsdp_plugin_args.get("fsdp_version", 1))
        if getattr(args, "deepspeed", None):
            _check_deepspeed(f"`deepspeed={args.deepspeed!r}`", _deepspeed_config(args))
        plugin = getattr(args, "deepspeed_plugin", None)
        if plugin is not None:
            _check_deepspeed("`ACCELERATE_USE_DEEPSPEED=true`", getattr(plugin, "deepspeed_config", None) or {})


def check_trainer(config: SLowEDConfig, trainer: Trainer) -> None:
    """The rules of :func:`check_training_args` on a built trainer, plus those that need it: the model's kind, and
    a sharding engine enabled by an accelerate config file rather than by the arguments."""
    args = trainer.args
    if config.masking and config.entropy_source == "online":
        _check_masking_args(args)
        model_config = getattr(trainer.model, "config", None)
        if getattr(model_config, "is_encoder_decoder", False):
            raise SLowEDConfigError(
                f"SLowED's Low-Entropy Masking supports causal language models; got an encoder-decoder model "
                f"({type(trainer.model).__name__}). Use a decoder-only model or set `mask_ratio: 0`."
            )
    if config.slow_tuning:
        # The trainer's own flags cover both ways of enabling an engine: the arguments and the accelerate config.
        if getattr(trainer, "is_fsdp_enabled", False):
            plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
            _check_fsdp_version(getattr(plugin, "fsdp_version", 1))
        if getattr(trainer, "is_deepspeed_enabled", False):
            deepspeed = getattr(args, "deepspeed", None)
            plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
            config = _deepspeed_config(args) or getattr(plugin, "deepspeed_config", None) or {}
            _check_deepspeed(
                f"`deepspeed={deepspeed!r}`" if deepspeed else "DeepSpeed from the accelerate config", config
            )


def _check_masking_args(args: TrainingArguments) -> None:
    if getattr(args, "use_liger_kernel", False):
        raise SLowEDConfigError(
            "SLowED's Low-Entropy Masking needs the model's per-token entropies, which `use_liger_kernel=True` "
            "never materialises. Set `use_liger_kernel=False` (SLowED computes the loss itself) or `mask_ratio: 0`."
        )
    loss_type = getattr(args, "loss_type", None)
    if loss_type == "dft":
        raise SLowEDConfigError(
            "SLowED's Low-Entropy Masking is not defined for `loss_type='dft'` (DFT reweights every token). "
            "Use `loss_type='nll'` or the default `'chunked_nll'`, or set `mask_ratio: 0`."
        )
    smoothing = getattr(args, "label_smoothing_factor", 0)
    if smoothing:
        raise SLowEDConfigError(
            f"SLowED's Low-Entropy Masking cannot mask a label-smoothed loss: got `label_smoothing_factor={smoothing}`. "
            "Set it to 0 or set `mask_ratio: 0`."
        )


def _check_fsdp_version(version: Any) -> None:
    if version != 2:
        raise SLowEDConfigError(
            f"Slow Tuning supports FSDP2 only (DTensor parameters, gathered for the norm); got fsdp_version={version}, "
            "whose flattened parameters hide each weight. Set `fsdp_config={'version': 2}` (Axolotl: "
            "`fsdp_version: 2`) or `tau: null`."
        )


def _deepspeed_config(args: TrainingArguments) -> dict:
    """The DeepSpeed config dict of ``args`` (transformers parses the file into ``hf_deepspeed_config``)."""
    parsed = getattr(args, "hf_deepspeed_config", None)
    if parsed is not None and isinstance(getattr(parsed, "config", None), dict):
        return parsed.config
    value = getattr(args, "deepspeed", None)
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and os.path.isfile(value):
        with open(value) as f:
            return json.load(f)
    return {}


def _check_deepspeed(setting: str, config: dict) -> None:
    # Slow Tuning reads and writes ZeRO's fp32 master weights through DeepSpeed's API (core/zero.py); what it
    # cannot reach is refused here, before any model is loaded.
    zero = config.get("zero_optimization") or {}
    stage = zero.get("stage", 0)
    if stage not in (1, 2, 3):
        raise SLowEDConfigError(
            f"Slow Tuning supports DeepSpeed ZeRO stages 1, 2 and 3; got {setting} with zero_optimization.stage="
            f"{stage!r}. Set the stage to 2 or 3, use DDP, or set `tau: null`."
        )
    offload = (zero.get("offload_optimizer") or {}).get("device", "none")
    if offload not in (None, "none"):
        raise SLowEDConfigError(
            f"Slow Tuning does not support DeepSpeed optimizer offload (got {setting} with "
            f"zero_optimization.offload_optimizer.device={offload!r}). Remove `offload_optimizer`, or set `tau: null`."
        )
