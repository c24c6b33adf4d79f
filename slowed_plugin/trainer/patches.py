"""What SLowED changes in a ``transformers.Trainer``: every runtime replacement, each installed by name and undone.

transformers offers callbacks for events but no hook for the loss of a training step, its token count, the
rows it logs or the files a checkpoint holds, so SLowED replaces these attributes of the trainer (and one of the
model) while it is attached; nothing else is changed:

========================  ===========================================  =========================================
attribute                 why                                          installed by
========================  ===========================================  =========================================
model ``forward``         the training loss over the kept targets      :func:`install_masked_forward`
                          (also bypasses TRL's ``chunked_nll``
                          forward, which never builds logits)
``compute_loss`` and      a custom loss receives the masked labels     :func:`install_custom_loss_masking`
``compute_loss_func``     (and the packed layout it is not handed)
``get_batch_samples``     ``num_items_in_batch`` = kept targets of     :func:`install_kept_token_count`
                          the step, so GA and DDP stay exact
``log``                   SLowED's metrics on the trainer's own rows   :func:`install_metrics_log`
``save_model``            project before a checkpoint; full FT's       :func:`install_checkpoint_hook`
                          start weights inside the checkpoint
``train_dataset``         the safety anchor's replay rows appended;    :func:`replace_train_dataset`
                          ``entropy_source: reference`` masks the
                          dataset's labels once
========================  ===========================================  =========================================

Every replacement passes through to the original once its :class:`Patches` is undone (at train end, by
``SLowEDCallback.detach()``, or on the first call after the callback was removed from the trainer); where
nothing wrapped it since, the original attribute is put back. The private attributes these replacements call
are reached through :mod:`.private_api`, which refuses a signature it does not know.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Trainer

from ..config import SLowEDConfig
from ..core.masking import MaskStats, kept_token_count
from .checkpoint import is_checkpoint_dir
from .loss import MaskedCausalLMLoss, masked_labels
from .private_api import GET_BATCH_SAMPLES, GET_NUM_ITEMS_IN_BATCH, require

_MISSING = object()


@dataclass
class _Patch:
    owner: Any
    name: str
    previous: Any  # the owner's own attribute before, or _MISSING when it came from the class
    replacement: Any


class Patches:
    """The replacements installed on one trainer, undone in reverse order.

    ``registered`` tells whether the owner (the callback) is still registered on the trainer; a replacement
    called after it was removed undoes every patch and passes through.
    """

    def __init__(self, registered: Callable[[], bool] = lambda: True) -> None:
        self._patches: list[_Patch] = []
        self._registered = registered
        self._undone = False

    @property
    def active(self) -> bool:
        if not self._undone and not self._registered():
            self.undo()
        return not self._undone

    @property
    def names(self) -> list[str]:
        return [p.name for p in self._patches]

    def replace(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        """Set ``owner.name`` to ``make(current value)``."""
        if self._undone:
            raise RuntimeError("These patches were undone; build a new Patches to install again.")
        replacement = make(getattr(owner, name))
        self._patches.append(_Patch(owner, name, vars(owner).get(name, _MISSING), replacement))
        setattr(owner, name, replacement)

    def undo(self) -> None:
        """Put back every original attribute that nothing wrapped since; the others pass through from now on."""
        self._undone = True
        for patch in reversed(self._patches):
            if vars(patch.owner).get(patch.name, _MISSING) is not patch.replacement:
                continue  # wrapped again after us: our layer stays, inactive
            if patch.previous is _MISSING:
                delattr(patch.owner, patch.name)
            else:
                setattr(patch.owner, patch.name, patch.previous)
        self._patches.clear()


# ---------------------------------------------------------------------------------------------- the loss
def install_masked_forward(patches: Patches, causal: torch.nn.Module, loss: MaskedCausalLMLoss) -> None:
    """``causal.forward`` computes :class:`MaskedCausalLMLoss` in training steps that pass labels."""

    def make(previous: Callable[..., Any]) -> Callable[..., Any]:
        def forward(self_model, *args, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
            if not patches.active or not self_model.training or (labels is None and shift_labels is None):
                passed = {"labels": labels, "shift_labels": shift_labels, "num_items_in_batch": num_items_in_batch}
                return previous(*args, **kwargs, **{k: v for k, v in passed.items() if v is not None})
            return loss(previous, args, kwargs, labels, shift_labels, num_items_in_batch)

        # `previous` is bound: re-add `self`, so that once the wrapper is bound its signature still starts with
        # `input_ids` (Trainer._remove_unused_columns keeps only the columns that `forward` names).
        signature = inspect.signature(previous)
        owner = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        forward.__signature__ = signature.replace(parameters=[owner, *signature.parameters.values()])
        return types.MethodType(forward, causal)

    patches.replace(causal, "forward", make)


def install_custom_loss_masking(
    patches: Patches, trainer: Trainer, config: SLowEDConfig, record: Callable[[MaskStats], None]
) -> None:
    """Compose with a custom ``compute_loss_func``: hand it the masked labels instead of replacing it.

    ``compute_loss_func`` is never handed the inputs, so ``compute_loss`` keeps the packed layout (the
    ``sequence`` scope needs ``position_ids``) for the duration of the call.
    """
    packed: dict[str, Any] = {}

    def make_compute_loss(compute_loss: Callable[..., Any]) -> Callable[..., Any]:
        def compute_loss_with_positions(model, inputs, *args, **kwargs):
            if patches.active:
                packed["position_ids"] = inputs.get("position_ids")
            try:
                return compute_loss(model, inputs, *args, **kwargs)
            finally:
                packed.clear()

        return compute_loss_with_positions

    def make_loss_func(inner: Callable[..., Any]) -> Callable[..., Any]:
        def compute_loss_func(outputs, labels, num_items_in_batch=None, **kwargs):
            if patches.active and outputs.logits is not None and trainer.model.training:
                labels, stats = masked_labels(config, outputs.logits, labels, packed.get("position_ids"))
                record(stats)
            return inner(outputs, labels, num_items_in_batch=num_items_in_batch, **kwargs)

        return compute_loss_func

    patches.replace(trainer, "compute_loss", make_compute_loss)
    patches.replace(trainer, "compute_loss_func", make_loss_func)


def install_kept_token_count(patches: Patches, trainer: Trainer, config: SLowEDConfig) -> None:
    """``num_items_in_batch`` of each optimizer step becomes the count of *kept* targets.

    That count depends on the labels only (``n - floor(k n)`` per scope), so it is known before the forward.
    The trainer's own counter does the cross-device reduction: it is handed stand-in batches whose
    ``shift_labels`` hold exactly as many non-ignored entries as the real batches keep.
    """
    signature = inspect.signature(require(trainer, GET_BATCH_SAMPLES))
    count = require(trainer, GET_NUM_ITEMS_IN_BATCH)

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def get_batch_samples(*args: Any, **kwargs: Any):
            batch_samples, num_items = original(*args, **kwargs)
            if num_items is None or not patches.active:
                return batch_samples, num_items
            device = signature.bind(*args, **kwargs).arguments.get("device", trainer.args.device)
            stand_ins = [
                {
                    "labels": batch["labels"],
                    "shift_labels": torch.zeros(
                        int(
                            kept_token_count(
                                batch["labels"],
                                config.mask_ratio,
                                config.mask_scope,
                                batch.get("position_ids"),
                                batch.get("shift_labels"),
                            )
                        ),
                        dtype=torch.long,
                    ),
                }
                for batch in batch_samples
            ]
            return batch_samples, count(stand_ins, device)

        return get_batch_samples

    patches.replace(trainer, "get_batch_samples", make)


# ---------------------------------------------------------------------------------------------- logs, saves, data
def install_metrics_log(patches: Patches, trainer: Trainer, drain: Callable[[], dict[str, float]]) -> None:
    """Every training log row carries SLowED's metrics accumulated since the previous row (not eval rows)."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def log(logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            if patches.active and not any(key.startswith("eval_") for key in logs):
                logs.update(drain())
            return original(logs, *args, **kwargs)

        return log

    patches.replace(trainer, "log", make)


def install_checkpoint_hook(
    patches: Patches,
    trainer: Trainer,
    before: Callable[[], None] | None,
    after_model: Callable[[str], None] | None,
) -> None:
    """Around the model save of each checkpoint (``save_model(dir, _internal_call=True)``, called by
    transformers' ``_save_checkpoint`` whatever the save strategy): ``before()`` runs first (Slow Tuning
    projects, so every checkpoint satisfies the bound and a run resumed from it continues the same run), and
    ``after_model(dir)`` runs after the model files, before ``trainer_state.json`` (see :mod:`.checkpoint`)."""

    def make(save_model: Callable[..., Any]) -> Callable[..., Any]:
        def save_model_around(output_dir: str | None = None, _internal_call: bool = False) -> None:
            checkpoint = patches.active and _internal_call and is_checkpoint_dir(output_dir)
            if checkpoint and before is not None:
                before()
            save_model(output_dir, _internal_call=_internal_call)
            if checkpoint and after_model is not None:
                after_model(output_dir)

        return save_model_around

    patches.replace(trainer, "save_model", make)


def replace_train_dataset(patches: Patches, trainer: Trainer, make: Callable[[Any], Any]) -> None:
    """``trainer.train_dataset = make(trainer.train_dataset)`` (anchor rows, the reference mask), put back when
    undone."""
    patches.replace(trainer, "train_dataset", make)
