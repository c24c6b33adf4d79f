"""What :class:`~slowed_plugin.trainer.callback.SLowEDCallback` builds when it attaches to a trainer: one function
per feature, each from the config and the trainer, None when the config leaves the feature off.

They run in the order ``attach`` calls them, before any patch is installed, so that a setting one of them cannot
honour fails at the trainer's construction and leaves the trainer as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import Trainer

from ..config import SLowEDConfig
from ..core.slow_tuning import SlowTuner
from .loss import MaskedCausalLMLoss
from .private_api import fused_lm_head_trl
from .safety_anchor import RowFormat, SafetyAnchor

RowFormatFactory = Callable[[Trainer, dict], RowFormat]


def slow_tuner(config: SLowEDConfig, trainer: Trainer) -> SlowTuner | None:
    """The ball around the starting weights (``tau``)."""
    if not config.slow_tuning:
        return None
    return SlowTuner(
        trainer.model,
        config.tau,
        config.tau_scope,
        config.reference_device,
        engine=lambda: getattr(trainer, "deepspeed", None),  # DeepSpeed's engine, once training started
    )


def masked_loss(config: SLowEDConfig, trainer: Trainer, record_mask: Callable[..., None]) -> MaskedCausalLMLoss | None:
    """Low-Entropy Masking computed during training (``entropy_source: online``)."""
    if not config.online_masking:
        return None
    model = trainer.model
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    return MaskedCausalLMLoss(
        config,
        causal,
        # Under TRL's fused LM head (1.15+) no loss type reads logits: the hidden-states path serves them all.
        None if fused_lm_head_trl() else getattr(trainer.args, "loss_type", None),
        record_mask,
        lambda: trainer.state.global_step + 1,
    )


def safety_subspace(config: SLowEDConfig, trainer: Trainer, row_format: RowFormatFactory, log: Any) -> Any:
    """The safety subspace's projector, its directions taken from the starting model (adapters off)."""
    if not config.subspace:
        return None
    from .safety_subspace import build_projector

    settings = dict(config.safety_subspace)
    use_template = settings["use_chat_template"]
    if use_template is None and config.anchored:
        use_template = config.safety_anchor["use_chat_template"]
    rows = row_format(trainer, {"use_chat_template": use_template})
    return build_projector(trainer, settings, rows.render, rows.add_special_tokens, config.reference_device, log=log)


def safety_anchor(
    config: SLowEDConfig, trainer: Trainer, row_format: RowFormatFactory, log: Any
) -> SafetyAnchor | None:
    """The anchor, its rows generated (or read from the cache) and tokenized the trainer's way."""
    if not config.anchored:
        return None
    anchor = SafetyAnchor(config.safety_anchor, log=log)
    anchor.build(trainer, row_format(trainer, anchor.settings))
    return anchor


def training_set(config: SLowEDConfig, trainer: Trainer, anchor: SafetyAnchor | None) -> Any:
    """The training set SLowED trains on instead of the trainer's (replay's mixed rows, labels masked once by the
    reference model), or None when it is the trainer's own."""
    dataset = trainer.train_dataset
    if anchor is not None and anchor.mode == "replay":
        dataset = anchor.mixed(dataset)
    if config.masking and not config.online_masking:
        dataset = _reference_masked(trainer, config, dataset)
    return dataset if dataset is not trainer.train_dataset else None


def _reference_masked(trainer: Trainer, config: SLowEDConfig, dataset: Any) -> Any:
    """`entropy_source: reference`: ``dataset`` masked once with the initial model's entropies."""
    from .reference_dataset import apply_reference_mask

    if not (hasattr(dataset, "map") and hasattr(dataset, "__len__") and "input_ids" in dataset.column_names):
        raise ValueError(
            "`entropy_source: reference` needs a tokenized map-style `datasets.Dataset` (with `input_ids`) as "
            f"train_dataset, got {type(dataset).__name__}. Use `entropy_source: online` for streaming datasets."
        )
    return apply_reference_mask(trainer.model, dataset, config.mask_ratio, config.mask_scope)
