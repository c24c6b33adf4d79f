"""What SLowED refuses and why: one table of rules, read by the TRL and the Axolotl front ends alike.

Each :class:`Rule` is one setting under which SLowED would not run as configured. It states, once, which
mechanism the setting breaks (``applies``: Slow Tuning, Low-Entropy Masking, online masking) and why; then,
for each front end that has the setting, how to find it and how to say so in that front end's own words
(TRL argument names such as ``use_liger_kernel=True``, or Axolotl YAML keys such as ``deepspeed:``):

- ``trl_args(args)``: on ``TrainingArguments`` / ``SFTConfig`` alone, so a TRL script fails before it loads a
  model (:func:`check_training_args`);
- ``trl_trainer(trainer)``: on the built trainer, for what only it knows (the model's kind, an engine enabled
  by an accelerate config file); rules without it run ``trl_args`` on ``trainer.args`` (:func:`check_trainer`);
- ``axolotl(cfg)``: on the Axolotl config alone, no model, no axolotl import (:func:`axolotl_problems`), at
  config validation, in ``slowed check``, and when the plugin meets a config that was not validated.

Every finder returns the full one-line message, naming the setting, its value and what SLowED accepts, or None.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import SLowEDConfig, SLowEDConfigError

if TYPE_CHECKING:
    from transformers import Trainer, TrainingArguments

__all__ = [
    "AXOLOTL_KEYS",
    "RULES",
    "Rule",
    "axolotl_facts",
    "axolotl_problems",
    "check_trainer",
    "check_training_args",
    "deepspeed_file_config",
    "deepspeed_plan",
    "listed_plugin",
    "resolved",
]

SLOWED = "SLowED (slowed_plugin.SLowEDPlugin)"
CCE_PLUGIN = "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"
LIGER_PLUGIN = "axolotl.integrations.liger.LigerPlugin"
KD_PLUGIN = "axolotl.integrations.kd.KDPlugin"

# peft_init_lora_weights values that start the adapter at ΔW = 0 (B = 0).
_ZERO_START_INITS = (None, True, "gaussian")


# ---------------------------------------------------------------------------------------------- the mechanisms
def _slow_tuning(config: SLowEDConfig) -> bool:
    return config.slow_tuning


def _masking(config: SLowEDConfig) -> bool:
    return config.masking


def _online_masking(config: SLowEDConfig) -> bool:
    # The reference mask is written into the labels before training: any loss trains on it.
    return config.masking and config.entropy_source == "online"


def _active(config: SLowEDConfig) -> bool:
    return config.active


@dataclass(frozen=True)
class Rule:
    """One setting SLowED refuses: the mechanism it breaks, why, and how each front end finds and words it."""

    name: str
    applies: Callable[[SLowEDConfig], bool]
    why: str
    trl_args: Callable[[Any], str | None] | None = None
    trl_trainer: Callable[[Any], str | None] | None = None
    axolotl: Callable[[Mapping[str, Any]], str | None] | None = None
    reads: tuple[str, ...] = ()  # the Axolotl keys ``axolotl`` reads


# ---------------------------------------------------------------------------------------------- helpers
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


def _axolotl_fsdp_version(cfg: Mapping[str, Any]) -> Any:
    # As Axolotl resolves it: the top-level key, else `fsdp_config.fsdp_version`, else 1.
    version = cfg.get("fsdp_version")
    if version is None:
        fsdp_config = cfg.get("fsdp_config")
        version = fsdp_config.get("fsdp_version") if isinstance(fsdp_config, Mapping) else None
    return 1 if version is None else version


def _shown(value: Any) -> str:
    return "true" if value is True else "false" if value is False else "null" if value is None else str(value)


# ---------------------------------------------------------------------------------------------- finders
def _sft_only_axolotl(cfg: Mapping[str, Any]) -> str | None:
    for key in ("rl", "reward_model", "process_reward_model"):
        value = cfg.get(key)
        if value:
            value = getattr(value, "value", value)
            return (
                f"{SLOWED} supports supervised fine-tuning of causal language models; got `{key}: {_shown(value)}`. "
                f"Remove `{key}` or remove the `slowed:` key."
            )
    return None


def _encoder_decoder_trainer(trainer: Trainer) -> str | None:
    if getattr(getattr(trainer.model, "config", None), "is_encoder_decoder", False):
        return (
            f"SLowED's Low-Entropy Masking supports causal language models; got an encoder-decoder model "
            f"({type(trainer.model).__name__}). Use a decoder-only model or set `mask_ratio: 0`."
        )
    return None


def _adapter_kind_axolotl(cfg: Mapping[str, Any]) -> str | None:
    adapter = cfg.get("adapter")
    if adapter not in (None, "", "lora", "qlora"):
        return (
            f"Slow Tuning (`slowed.tau`) bounds LoRA adapters (`adapter: lora` or `adapter: qlora`) and full "
            f"fine-tuning (no `adapter`); got `adapter: {adapter}`, whose weight change it cannot project exactly. "
            "Use one of those, or set `slowed.tau: null`."
        )
    return None


def _dora_axolotl(cfg: Mapping[str, Any]) -> str | None:
    if cfg.get("peft_use_dora"):
        return (
            "Slow Tuning (`slowed.tau`) cannot bound DoRA: its magnitude vector changes W outside scaling·B@A. "
            "Set `peft_use_dora: false`, or set `slowed.tau: null`."
        )
    return None


def _adapter_start_axolotl(cfg: Mapping[str, Any]) -> str | None:
    if cfg.get("adapter") not in ("lora", "qlora"):
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


def _relora_axolotl(cfg: Mapping[str, Any]) -> str | None:
    if cfg.get("relora"):
        return (
            "Slow Tuning (`slowed.tau`) cannot bound ReLoRA: each restart merges the adapter into the base "
            "weights, out of the projection's reach. Set `relora: false`, or set `slowed.tau: null`."
        )
    return None


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


def _deepspeed_message(setting: str, config: Mapping[str, Any], off: str = "`tau: null`") -> str | None:
    # Slow Tuning reads and writes ZeRO's fp32 master weights through DeepSpeed's API (core/zero.py); what it
    # cannot reach is refused, before any model is loaded.
    zero = config.get("zero_optimization") or {}
    stage = zero.get("stage", 0)
    if stage not in (1, 2, 3):
        return (
            f"Slow Tuning supports DeepSpeed ZeRO stages 1, 2 and 3; got {setting} with zero_optimization.stage="
            f"{stage!r}. Set the stage to 2 or 3, use DDP, or set {off}."
        )
    offload = (zero.get("offload_optimizer") or {}).get("device", "none")
    if offload not in (None, "none"):
        return (
            f"Slow Tuning does not support DeepSpeed optimizer offload (got {setting} with "
            f"zero_optimization.offload_optimizer.device={offload!r}). Remove `offload_optimizer`, or set {off}."
        )
    return None


def _deepspeed_args(args: TrainingArguments) -> str | None:
    if getattr(args, "deepspeed", None):
        return _deepspeed_message(f"`deepspeed={args.deepspeed!r}`", _deepspeed_config(args))
    plugin = getattr(args, "deepspeed_plugin", None)
    if plugin is not None:
        return _deepspeed_message("`ACCELERATE_USE_DEEPSPEED=true`", getattr(plugin, "deepspeed_config", None) or {})
    return None


def _deepspeed_trainer(trainer: Trainer) -> str | None:
    # The trainer's flag covers both ways of enabling DeepSpeed: the arguments and the accelerate config.
    if getattr(trainer, "is_deepspeed_enabled", False):
        args = trainer.args
        deepspeed = getattr(args, "deepspeed", None)
        plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
        config = _deepspeed_config(args) or getattr(plugin, "deepspeed_config", None) or {}
        setting = f"`deepspeed={deepspeed!r}`" if deepspeed else "DeepSpeed from the accelerate config"
        return _deepspeed_message(setting, config)
    return None


def _deepspeed_axolotl(cfg: Mapping[str, Any]) -> str | None:
    value = cfg.get("deepspeed")
    if not value:
        return None
    config = deepspeed_file_config(value)
    if config is None:  # not readable from here: the trainer's parsed config is checked when training starts
        return None
    return _deepspeed_message(f"`deepspeed: {value}`", config, off="`slowed.tau: null`")


def deepspeed_file_config(value: Any) -> dict | None:
    """The DeepSpeed config an Axolotl ``deepspeed:`` value names (a JSON path, relative to the working folder
    as Axolotl reads it, or the mapping itself), or None when it cannot be read here."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str) and os.path.isfile(value):
        try:
            with open(value, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError):
            return None
        return config if isinstance(config, dict) else None
    return None


def deepspeed_plan(value: Any, config: SLowEDConfig) -> str | None:
    """One line for ``slowed check``: what SLowED does under the DeepSpeed config that an Axolotl ``deepspeed:``
    value names, or None without DeepSpeed. A refusal itself is reported by the rule above, with its fix."""
    if not value or not config.active:
        return None
    ds = deepspeed_file_config(value)
    if ds is None:
        return (
            f"`deepspeed: {value}` is not readable from here, so its stage is checked when training starts: ZeRO-1/2 "
            "mask on the hidden states, ZeRO-3 on the logits; Slow Tuning projects through ZeRO's fp32 masters and "
            "refuses stage 0 and `offload_optimizer`."
        )
    zero = ds.get("zero_optimization") or {}
    stage = zero.get("stage", 0)
    if not config.slow_tuning:
        tuning = "Slow Tuning off"
    elif _deepspeed_message("", ds) is not None:
        tuning = "Slow Tuning refused (see the error for the fix)"
    else:
        tuning = "Slow Tuning projects through ZeRO's fp32 masters"
    if not config.masking:
        masking = "masking off"
    elif config.entropy_source != "online":
        masking = "masking in the labels (`entropy_source: reference`)"
    elif stage == 3:
        masking = "masking on the logits (ZeRO-3 partitions the head's weight)"
    else:
        masking = "masking on the hidden states"
    return f"DeepSpeed ZeRO-{stage}: {tuning}; {masking}."


def _fsdp_message(version: Any) -> str | None:
    if version == 2:
        return None
    return (
        f"Slow Tuning supports FSDP2 only (DTensor parameters, gathered for the norm); got fsdp_version={version}, "
        "whose flattened parameters hide each weight. Set `fsdp_config={'version': 2}` (Axolotl: "
        "`fsdp_version: 2`) or `tau: null`."
    )


def _fsdp_args(args: TrainingArguments) -> str | None:
    fsdp_plugin_args = getattr(args, "fsdp_plugin_args", None)
    return _fsdp_message(fsdp_plugin_args.get("fsdp_version", 1)) if fsdp_plugin_args else None


def _fsdp_trainer(trainer: Trainer) -> str | None:
    # The trainer's flag covers FSDP enabled by the arguments and by the accelerate config.
    if getattr(trainer, "is_fsdp_enabled", False):
        plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
        return _fsdp_message(getattr(plugin, "fsdp_version", 1))
    return None


def _fsdp_axolotl(cfg: Mapping[str, Any]) -> str | None:
    if cfg.get("fsdp_config") or cfg.get("fsdp"):
        version = _axolotl_fsdp_version(cfg)
        if str(version) != "2":
            return (
                f"Slow Tuning (`slowed.tau`) supports FSDP2 only (`fsdp_version: 2`, whose DTensor shards it gathers "
                f"for each ΔW norm); got FSDP{version}, whose flattened parameters hide each weight. Set "
                "`fsdp_version: 2`, or set `slowed.tau: null`."
            )
    return None


def _tensor_parallel_axolotl(cfg: Mapping[str, Any]) -> str | None:
    if _above_one(cfg.get("tensor_parallel_size")):
        return (
            f"Slow Tuning (`slowed.tau`) is not supported with `tensor_parallel_size: "
            f"{cfg.get('tensor_parallel_size')}`: weights are sharded across ranks. Set `tensor_parallel_size: 1`, "
            "or set `slowed.tau: null`."
        )
    return None


def _cce_axolotl(cfg: Mapping[str, Any]) -> str | None:
    cce = listed_plugin(cfg, "CutCrossEntropyPlugin")
    # CutCrossEntropyArgs defaults `cut_cross_entropy` to true once the plugin is listed.
    if cce and cfg.get("cut_cross_entropy", True) not in (False, None):
        return (
            f"Low-Entropy Masking of {SLOWED} needs the logits, which Cut Cross Entropy ({cce}) never "
            "materialises, so the masked loss would not be the one that trains. Set `cut_cross_entropy: false` "
            "(or remove that plugin), or set `slowed.mask_ratio: 0` (Slow Tuning alone works with it)."
        )
    return None


def _liger_args(args: TrainingArguments) -> str | None:
    if getattr(args, "use_liger_kernel", False):
        return (
            "SLowED's Low-Entropy Masking needs the model's per-token entropies, which `use_liger_kernel=True` "
            "never materialises. Set `use_liger_kernel=False` (SLowED computes the loss itself) or `mask_ratio: 0`."
        )
    return None


def _liger_axolotl(cfg: Mapping[str, Any]) -> str | None:
    liger = listed_plugin(cfg, "LigerPlugin")
    if liger and (cfg.get("liger_fused_linear_cross_entropy") or cfg.get("liger_use_token_scaling")):
        return (
            f"Low-Entropy Masking of {SLOWED} needs the logits, which Liger's fused linear cross-entropy "
            f"({liger}, `liger_fused_linear_cross_entropy: true`) never materialises. Set "
            "`liger_fused_linear_cross_entropy: false` (Liger's other kernels, `liger_cross_entropy` included, "
            "are fine), or set `slowed.mask_ratio: 0` (Slow Tuning alone works with it)."
        )
    return None


def _dft_args(args: TrainingArguments) -> str | None:
    if getattr(args, "loss_type", None) == "dft":
        return (
            "SLowED's Low-Entropy Masking is not defined for `loss_type='dft'` (DFT reweights every token). "
            "Use `loss_type='nll'` or the default `'chunked_nll'`, or set `mask_ratio: 0`."
        )
    return None


def _label_smoothing_args(args: TrainingArguments) -> str | None:
    smoothing = getattr(args, "label_smoothing_factor", 0)
    if smoothing:
        return (
            f"SLowED's Low-Entropy Masking cannot mask a label-smoothed loss: got `label_smoothing_factor={smoothing}`. "
            "Set it to 0 or set `mask_ratio: 0`."
        )
    return None


def _distillation_axolotl(cfg: Mapping[str, Any]) -> str | None:
    if cfg.get("kd_trainer"):
        kd = listed_plugin(cfg, "KDPlugin") or KD_PLUGIN
        return (
            f"Low-Entropy Masking of {SLOWED} cannot mask the distillation loss of {kd} (`kd_trainer: true`), "
            "which its trainer computes itself. Set `slowed.mask_ratio: 0`, or train without `kd_trainer`."
        )
    return None


def _orpo_axolotl(cfg: Mapping[str, Any]) -> str | None:
    if cfg.get("orpo_alpha"):
        return (
            f"Low-Entropy Masking of {SLOWED} cannot mask ORPO's loss (`orpo_alpha: {cfg.get('orpo_alpha')}`). "
            "Remove `orpo_alpha`, or set `slowed.mask_ratio: 0`."
        )
    return None


def _context_parallel_axolotl(cfg: Mapping[str, Any]) -> str | None:
    for key in ("context_parallel_size", "sequence_parallel_degree"):
        if _above_one(cfg.get(key)):
            return (
                f"Low-Entropy Masking of {SLOWED} is not supported with `{key}: {cfg.get(key)}`: each rank sees a "
                f"slice of every sequence, so the lowest-entropy share cannot be taken per sequence. Set `{key}: 1`, "
                "or set `slowed.mask_ratio: 0`."
            )
    return None


# ---------------------------------------------------------------------------------------------- the safety anchor
def _gradient_anchor(config: SLowEDConfig) -> bool:
    return config.anchored and config.safety_anchor["mode"] == "gradient"


_SHARDED_GRADIENT = (
    "The safety anchor's `mode: gradient` is not supported with {setting}: the engine shards or partitions the "
    "gradients the constraint projects as one vector. Use `mode: replay` (the default), or train without it."
)


def _sharded_args(args: TrainingArguments) -> str | None:
    if getattr(args, "deepspeed", None) or getattr(args, "deepspeed_plugin", None):
        return _SHARDED_GRADIENT.format(setting="DeepSpeed")
    if getattr(args, "fsdp_plugin_args", None) or getattr(args, "fsdp", None):
        return _SHARDED_GRADIENT.format(setting="FSDP")
    return None


def _sharded_trainer(trainer: Trainer) -> str | None:
    if getattr(trainer, "is_deepspeed_enabled", False):
        return _SHARDED_GRADIENT.format(setting="DeepSpeed")
    if getattr(trainer, "is_fsdp_enabled", False):
        return _SHARDED_GRADIENT.format(setting="FSDP")
    return None


def _sharded_axolotl(cfg: Mapping[str, Any]) -> str | None:
    for key in ("deepspeed", "fsdp", "fsdp_config"):
        if cfg.get(key):
            return _SHARDED_GRADIENT.format(setting=f"`{key}`")
    return None


def _anchored(config: SLowEDConfig) -> bool:
    return config.anchored


ANCHOR_DATASET_TYPES = ("alpaca", "chat_template")


def _first_dataset_type(cfg: Mapping[str, Any]) -> Any:
    # A mapping as written, or the dataset model Axolotl's validation has already built from it.
    datasets = cfg.get("datasets") or []
    first = datasets[0] if datasets else None
    return first.get("type") if isinstance(first, Mapping) else getattr(first, "type", None)


def anchor_dataset_type(cfg: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(base type, prompt style)`` of an Axolotl recipe's first dataset, parsed as Axolotl parses ``type:``."""
    kind = _first_dataset_type(cfg)
    if not isinstance(kind, str):
        return None, None
    base, _, style = kind.partition(":")
    return base, style or None


def unsupported_anchor_dataset(cfg: Mapping[str, Any]) -> str | None:
    """Why the anchor cannot write its rows in this recipe's data format, or None."""
    if anchor_dataset_type(cfg)[0] in ANCHOR_DATASET_TYPES:
        return None
    return (
        "`slowed.safety_anchor` writes its rows in the format of the first dataset and supports "
        f"`type: {' / '.join(ANCHOR_DATASET_TYPES)}` (alpaca with its styles); got `type: {_first_dataset_type(cfg)}`. "
        "Put an alpaca or chat_template dataset first, or drop the anchor."
    )


def anchor_missing_file(config: SLowEDConfig) -> str | None:
    """The refusal of an anchor prompt source that names a local file that is not there, or None (before the model
    loads: otherwise the name would be taken for a hub dataset id and fail after it)."""
    if not config.anchored:
        return None
    from .evaluation.prompts import LOCAL_SUFFIXES

    for key in ("prompts", "benign_prompts"):
        source = config.safety_anchor[key]
        if isinstance(source, str) and source.lower().endswith(LOCAL_SUFFIXES) and not os.path.isfile(source):
            return (
                f"`safety_anchor.{key}` names a local file that does not exist: {source!r} (relative paths resolve "
                f"against the folder you run from, here {os.getcwd()!r}); give an existing .txt/.csv/.jsonl/.json "
                "file, a list of prompts, or a hub dataset id."
            )
    return None


def anchor_overlap(config: SLowEDConfig) -> str | None:
    """The refusal of an anchor whose prompts are also the safety monitor's (evaluated) prompts, or None.

    Reads both prompt sources (lists, local files or hub ids) as the anchor and the monitor will."""
    if not (config.anchored and config.safety_monitor):
        return None
    from .anchor.answers import overlap_count
    from .evaluation.prompts import load_prompts
    from .monitor_settings import evaluated_limit

    anchor, monitor = config.safety_anchor, config.safety_monitor
    anchored = load_prompts(anchor["prompts"], column=anchor["prompt_column"])
    if anchor["benign_prompts"] is not None:
        anchored += load_prompts(anchor["benign_prompts"], column=anchor["prompt_column"])
    limit = evaluated_limit(monitor["prompts"], monitor.get("limit"))
    evaluated = load_prompts(
        monitor["prompts"], limit=limit, seed=monitor.get("seed", 0), column=monitor.get("prompt_column")
    )
    count = overlap_count(anchored, evaluated)
    if count:
        return (
            f"The safety anchor's prompts overlap the safety monitor's: {count} of the {len(set(evaluated))} "
            "evaluated prompts are anchor prompts, so the monitor would measure answers the anchor trains on and "
            "overstate safety. Give `safety_anchor.prompts` a disjoint set (e.g. AdvBench rows not among the "
            "evaluated ones)."
        )
    return None


# ---------------------------------------------------------------------------------------------- the table
RULES: tuple[Rule, ...] = (
    Rule(
        "supervised fine-tuning only",
        _active,
        "SLowED changes the supervised next-token loss and bounds the weights it trains; RL and reward-model "
        "trainers compute other losses.",
        axolotl=_sft_only_axolotl,
        reads=("rl", "reward_model", "process_reward_model"),
    ),
    Rule(
        "causal language models only",
        _online_masking,
        "the online mask is taken over a causal LM's next-token targets.",
        trl_trainer=_encoder_decoder_trainer,
    ),
    Rule(
        "LoRA or full fine-tuning",
        _slow_tuning,
        "the projection is exact for ΔW = scaling·B@A and for W - W0; other adapters change W otherwise.",
        axolotl=_adapter_kind_axolotl,
        reads=("adapter",),
    ),
    Rule(
        "no DoRA",
        _slow_tuning,
        "DoRA's magnitude vector changes W outside scaling·B@A (the TRL side refuses it when SlowTuner meets the model).",
        axolotl=_dora_axolotl,
        reads=("peft_use_dora",),
    ),
    Rule(
        "adapters start at ΔW = 0",
        _slow_tuning,
        "the ball is around the start; an adapter that starts elsewhere cannot be scaled back into it within rank r.",
        axolotl=_adapter_start_axolotl,
        reads=("adapter", "peft_init_lora_weights", "peft", "lora_model_dir", "inference"),
    ),
    Rule(
        "no ReLoRA",
        _slow_tuning,
        "each restart merges the adapter into the base weights, out of the projection's reach.",
        axolotl=_relora_axolotl,
        reads=("relora",),
    ),
    Rule(
        "DeepSpeed ZeRO 1-3 without optimizer offload",
        _slow_tuning,
        "the projection is written to ZeRO's fp32 masters through DeepSpeed's API; stage 0 keeps no such copy, "
        "and an offloaded optimizer's copy was not tested.",
        trl_args=_deepspeed_args,
        trl_trainer=_deepspeed_trainer,
        axolotl=_deepspeed_axolotl,
        reads=("deepspeed",),
    ),
    Rule(
        "FSDP2 only",
        _slow_tuning,
        "FSDP1's flattened parameters hide each weight; FSDP2's DTensor shards are gathered for each norm.",
        trl_args=_fsdp_args,
        trl_trainer=_fsdp_trainer,
        axolotl=_fsdp_axolotl,
        reads=("fsdp", "fsdp_config", "fsdp_version"),
    ),
    Rule(
        "no tensor parallelism",
        _slow_tuning,
        "weights sharded across ranks are not gathered for the norm.",
        axolotl=_tensor_parallel_axolotl,
        reads=("tensor_parallel_size",),
    ),
    Rule(
        "no Cut Cross Entropy",
        _online_masking,
        "the online mask needs the logits (their entropies), which Cut Cross Entropy never materialises.",
        axolotl=_cce_axolotl,
        reads=("plugins", "cut_cross_entropy"),
    ),
    Rule(
        "no Liger fused linear cross-entropy",
        _online_masking,
        "the online mask needs the logits (their entropies), which Liger's fused loss never materialises.",
        trl_args=_liger_args,
        axolotl=_liger_axolotl,
        reads=("plugins", "liger_fused_linear_cross_entropy", "liger_use_token_scaling"),
    ),
    Rule(
        "no DFT loss",
        _online_masking,
        "DFT reweights every token; masking is defined for the plain next-token loss.",
        trl_args=_dft_args,
    ),
    Rule(
        "no label smoothing",
        _online_masking,
        "a label-smoothed loss spreads each target over the vocabulary; SLowED's loss is the plain one.",
        trl_args=_label_smoothing_args,
    ),
    Rule(
        "no distillation loss",
        _masking,
        "the KD trainer computes its own loss, which the mask does not reach.",
        axolotl=_distillation_axolotl,
        reads=("plugins", "kd_trainer"),
    ),
    Rule(
        "no ORPO",
        _masking,
        "ORPO's loss is not the supervised loss SLowED masks.",
        axolotl=_orpo_axolotl,
        reads=("orpo_alpha",),
    ),
    Rule(
        "safety anchor's gradient mode without DeepSpeed or FSDP",
        _gradient_anchor,
        "the constraint projects the step's whole gradient as one vector; ZeRO and FSDP shard it.",
        trl_args=_sharded_args,
        trl_trainer=_sharded_trainer,
        axolotl=_sharded_axolotl,
        reads=("deepspeed", "fsdp", "fsdp_config"),
    ),
    Rule(
        "safety anchor: alpaca or chat_template data (Axolotl)",
        _anchored,
        "the anchor rows are written in the first dataset's format and tokenized by its Axolotl prompt strategy.",
        axolotl=unsupported_anchor_dataset,
        reads=("datasets",),
    ),
    Rule(
        "no context parallelism",
        _masking,
        "each rank sees a slice of every sequence, so the lowest-entropy share cannot be taken per sequence.",
        axolotl=_context_parallel_axolotl,
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
        facts[key] = facts[key] if _above_one(facts[key]) else None
    # The rules read only the first dataset's type (written as a mapping, or already Axolotl's dataset model).
    facts["datasets"] = anchor_dataset_type(cfg)
    return facts


# ---------------------------------------------------------------------------------------------- front ends
def _problems(config: SLowEDConfig, find: Callable[[Rule], Callable[[], str | None] | None]) -> list[str]:
    found = [message] if (message := anchor_missing_file(config) or anchor_overlap(config)) is not None else []
    for rule in RULES:
        if rule.applies(config) and (probe := find(rule)) is not None and (message := probe()) is not None:
            found.append(message)
    return found


def check_training_args(config: SLowEDConfig | dict | list | tuple, args: TrainingArguments) -> None:
    """Raise :class:`SLowEDConfigError` if ``args`` holds a setting under which ``config`` would not run as set.

    Needs no model: call it right after building the ``SFTConfig`` to fail before loading one.
    """
    config = SLowEDConfig.from_value(config)
    problems = _problems(config, lambda rule: rule.trl_args and (lambda: rule.trl_args(args)))
    if problems:
        raise SLowEDConfigError(problems[0])


def check_trainer(config: SLowEDConfig, trainer: Trainer) -> None:
    """The rules on a built trainer: those of :func:`check_training_args` on its arguments, and those that need
    the trainer (the model's kind, a sharding engine enabled by an accelerate config file)."""

    def find(rule: Rule) -> Callable[[], str | None] | None:
        if rule.trl_trainer is not None:
            return lambda: rule.trl_trainer(trainer)
        if rule.trl_args is not None:
            return lambda: rule.trl_args(trainer.args)
        return None

    problems = _problems(config, find)
    if problems:
        raise SLowEDConfigError(problems[0])


def axolotl_problems(cfg: Mapping[str, Any], config: SLowEDConfig) -> list[str]:
    """One line per setting of ``cfg`` (an Axolotl config) that SLowED with ``config`` cannot honour exactly."""
    return _problems(config, lambda rule: rule.axolotl and (lambda: rule.axolotl(cfg)))
