"""What SLowED changes in a ``transformers.Trainer`` and its config: every change, each installed by name and undone.

transformers offers callbacks for events but no hook for the loss of a training step, its token count, the
rows it logs or the files a checkpoint holds, so SLowED replaces these attributes of the trainer (and one of the
model) while it is attached. This table is every change SLowED makes at run time to an object of another library
(a trainer, its model or config, a tokenizer, the interpreter's hook); the last rows are made where they must
happen (a core function, the evaluation, Axolotl's process), every other by this module.
``tests/trainer/test_patches.py`` fails on an assignment to another library's object that this table misses:

=============================  ======================================  ===========================  ==============
what                           why                                     installed by                 undone
=============================  ======================================  ===========================  ==============
model ``forward``              the training loss over the kept         :func:`install_masked_       train end
                               targets (also bypasses TRL's            forward`
                               ``chunked_nll`` forward, which never
                               builds logits; answers TRL 1.15+'s
                               ``fused_lm_head=True`` calls)
model ``forward``, on top      TRL 1.15+'s ``SFTTrainer`` wraps the    :func:`redirect_fused_lm_    train end
(TRL 1.15+)                    forward with its fused LM head after    head` (train begin)
                               SLowED attached: its fused calls are
                               sent down to the masked forward
``compute_loss`` and           a custom loss receives the masked       :func:`install_custom_       train end
``compute_loss_func``          labels (and the packed layout it is     loss_masking`
                               not handed)
``get_batch_samples``          ``num_items_in_batch`` = kept targets   :func:`install_kept_         train end
                               of the step, so GA and DDP stay exact   token_count`
``log``                        SLowED's metrics on the trainer's own   :func:`install_metrics_log`  train end
                               rows
``save_model``                 project before a checkpoint; full FT's  :func:`install_checkpoint_   train end
                               start weights inside the checkpoint     hook`
``train_dataset``              the safety anchor's replay rows         :func:`replace_train_        train end
                               appended; ``entropy_source: reference`` dataset`
                               masks the dataset's labels once
``args.max_steps``; Axolotl    Axolotl fixed the step count before     :func:`slowed_plugin.        train end
config ``total_num_tokens``,   the replay rows existed: recounted by   axolotl.anchor_row_format.
``total_supervised_tokens``    Axolotl's own ``calculate_total_num_    step_recount` (through
                               steps``                                 :meth:`Patches.replace`,
                                                                       :meth:`Patches.set_item`)
``callback_handler.callbacks`` the ``safety_monitor`` key's            :meth:`Patches.add_callback` ``detach()``
                               ``SafetyMonitorCallback`` registered    (``SLowEDCallback.attach``)
                               (kept across ``train()`` calls: it
                               holds the run's safety records)
callback order                 a ``SafetyMonitorCallback`` moves       ``SafetyMonitorCallback.     never: it moves
                               itself behind every other callback, so  _run_last``                  only itself; the
                               it measures what Slow Tuning left                                    others keep their
                                                                                                    order
``head.forward`` of an FSDP2   the masked loss runs inside the head's  :func:`slowed_plugin.core.   inside the same
output head (a unit of its     own call, so FSDP2 gathers its weight   lm_head.in_head_forward`     call, first
own)                           and reduces its gradient over ranks                                  thing
tokenizer ``padding_side``,    batched generation of the safety        ``slowed_plugin.evaluation.  the end of the
``pad_token`` (the caller's)   evaluation pads on the left; the        generation.padding``         call
                               safety subspace's hidden states on
                               the right
``sys.excepthook`` (the        SLowED's config error under ``axolotl   ``slowed_plugin.axolotl.     never: once per
``axolotl train`` process)     train`` prints one line, then exits     guard._install_excepthook``  process; every
                               by ``os._exit`` after the telemetry's   (only when SLowED's own      other error goes
                               grace period                            error is raised)             to the previous
                                                                                                    hook
=============================  ======================================  ===========================  ==============

"Train end" changes are undone at train end, by ``SLowEDCallback.detach()``, or, when the callback was removed
from the trainer, at the next safe point (a step's batch fetch or log row; until then every replacement already
passes through). A second ``train()`` installs them again. Where something wrapped an attribute after SLowED, the
original is not put back: SLowED's layer stays, inactive, and passes through.
The private attributes these replacements call are reached through :mod:`.private_api`, which refuses a
signature it does not know.
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
from .loss import MaskedCausalLMLoss, SLowEDFusedOutput, masked_labels
from .private_api import GET_BATCH_SAMPLES, GET_NUM_ITEMS_IN_BATCH, require

_MISSING = object()


@dataclass
class _Change:
    name: str  # as the table above names it
    undo: Callable[[], None]


class Patches:
    """The changes installed on one trainer, undone in reverse order.

    ``registered`` tells whether the owner (the callback) is still registered on the trainer; once it is not, every
    replacement passes through (:attr:`active`), and :meth:`undo_if_unregistered`, called at a safe point, puts the
    originals back.
    """

    def __init__(self, registered: Callable[[], bool] = lambda: True) -> None:
        self._changes: list[_Change] = []
        self._registered = registered
        self._undone = False

    @property
    def active(self) -> bool:
        """Whether the replacements act (a plain read: it changes nothing, so it is safe inside a forward)."""
        return not self._undone and self._registered()

    def undo_if_unregistered(self) -> bool:
        """Undo everything if the owner was removed from the trainer; call only between steps. Returns
        :attr:`active`."""
        if not self._undone and not self._registered():
            self.undo()
        return not self._undone

    @property
    def names(self) -> list[str]:
        return [c.name for c in self._changes]

    def _add(self, name: str, undo: Callable[[], None]) -> None:
        if self._undone:
            raise RuntimeError("These patches were undone; build a new Patches to install again.")
        self._changes.append(_Change(name, undo))

    def replace(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        """Set ``owner.name`` to ``make(current value)``; undone by putting the owner's own value back (or deleting
        it, when the value came from the class), unless something replaced it since."""
        previous = vars(owner).get(name, _MISSING)
        replacement = make(getattr(owner, name))

        def undo() -> None:
            if vars(owner).get(name, _MISSING) is not replacement:
                return  # wrapped again after us: our layer stays, inactive
            if previous is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, previous)

        self._add(name, undo)
        setattr(owner, name, replacement)

    def set_item(self, mapping: Any, key: str, value: Any) -> None:
        """``mapping[key] = value`` (a config key); undone by putting the previous value back, or removing the key."""
        had, previous = key in mapping, mapping.get(key)

        def undo() -> None:
            if had:
                mapping[key] = previous
            else:
                mapping.pop(key, None)

        self._add(f"config[{key!r}]", undo)
        mapping[key] = value

    def add_callback(self, trainer: Trainer, callback: Any) -> None:
        """Register ``callback`` on ``trainer``; undone by removing it (into a new list, so that a handler iterating
        over the old one right now still calls it for this event)."""
        handler = trainer.callback_handler

        def undo() -> None:
            handler.callbacks = [c for c in handler.callbacks if c is not callback]

        self._add("callback_handler.callbacks", undo)
        trainer.add_callback(callback)

    def undo(self) -> None:
        """Undo every change; replacements that something wrapped since pass through from now on."""
        self._undone = True
        for change in reversed(self._changes):
            change.undo()
        self._changes.clear()


# ---------------------------------------------------------------------------------------------- the loss
def _keep_signature(forward: Callable[..., Any], previous: Callable[..., Any]) -> None:
    # `previous` is bound: re-add `self`, so that once the wrapper is bound its signature still starts with
    # `input_ids` (Trainer._remove_unused_columns keeps only the columns that `forward` names).
    signature = inspect.signature(previous)
    owner = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    forward.__signature__ = signature.replace(parameters=[owner, *signature.parameters.values()])
    forward.slowed_forward = True  # recognised by `redirect_fused_lm_head`


def _is_slowed_forward(forward: Any) -> bool:
    return getattr(getattr(forward, "__func__", forward), "slowed_forward", False)


def install_masked_forward(patches: Patches, causal: torch.nn.Module, loss: MaskedCausalLMLoss) -> None:
    """``causal.forward`` computes :class:`MaskedCausalLMLoss` in training steps that pass labels; a call of TRL
    1.15+'s fused LM head (``fused_lm_head=True``, or one :func:`redirect_fused_lm_head` sends down) gets the masked
    per-token fields (:meth:`MaskedCausalLMLoss.fused`)."""

    def make(previous: Callable[..., Any]) -> Callable[..., Any]:
        def forward(
            self_model, *args, labels=None, shift_labels=None, num_items_in_batch=None, fused_lm_head=False, **kwargs
        ):
            if not patches.active or not self_model.training or (labels is None and shift_labels is None):
                passed = {"labels": labels, "shift_labels": shift_labels, "num_items_in_batch": num_items_in_batch}
                if fused_lm_head:  # only TRL's fused head knows the keyword: passed on only when given
                    passed["fused_lm_head"] = True
                return previous(*args, **kwargs, **{k: v for k, v in passed.items() if v is not None})
            if fused_lm_head or loss.fused_call:
                return loss.fused(previous, args, kwargs, labels, shift_labels, num_items_in_batch)
            return loss(previous, args, kwargs, labels, shift_labels, num_items_in_batch)

        _keep_signature(forward, previous)
        return types.MethodType(forward, causal)

    patches.replace(causal, "forward", make)


def redirect_fused_lm_head(patches: Patches, causal: torch.nn.Module, loss: MaskedCausalLMLoss) -> bool:
    """With TRL 1.15+, send TRL's fused-LM-head calls down to the masked forward. Called at train begin; returns
    whether it installed (not when a SLowED forward is already the outermost one).

    TRL 1.15+'s ``SFTTrainer`` wraps the model's forward with its fused LM head (``add_fused_lm_head``) at the end of
    its ``__init__``, after the callbacks' ``on_init_end`` installed the masked forward; accelerate may then wrap it
    again for mixed precision. A ``fused_lm_head=True`` call runs the backbone and the head inside TRL's wrapper and
    never reaches the layer below. This layer, on top, turns such a training call into a plain labelled call down
    the same chain (accelerate's autocast included; TRL's wrapper hands a call without ``fused_lm_head`` to the
    forward it wrapped), flagged so that the masked forward answers it with the fused fields. A call that comes
    back without them stops with one line instead of training unmasked.
    """
    if _is_slowed_forward(vars(causal).get("forward")):
        return False

    def make(previous: Callable[..., Any]) -> Callable[..., Any]:
        def forward(self_model, *args, fused_lm_head=False, **kwargs):
            labelled = kwargs.get("labels") is not None or kwargs.get("shift_labels") is not None
            if not (fused_lm_head and patches.active and self_model.training and labelled):
                return previous(*args, **kwargs, **({"fused_lm_head": True} if fused_lm_head else {}))
            loss.fused_call = True
            try:
                outputs = previous(*args, **kwargs)
            finally:
                loss.fused_call = False
            if not isinstance(outputs, SLowEDFusedOutput):
                raise RuntimeError(
                    "SLowED: TRL's fused LM head call did not reach SLowED's masked loss (the model's forward returned "
                    f"{type(outputs).__name__}), so it would train unmasked. Remove the component that wraps the "
                    "model's forward, or set `mask_ratio: 0`."
                )
            return outputs

        _keep_signature(forward, previous)
        return types.MethodType(forward, causal)

    patches.replace(causal, "forward", make)
    return True


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
            if num_items is None or not patches.undo_if_unregistered():  # between steps: a safe point
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
            if patches.undo_if_unregistered() and not any(key.startswith("eval_") for key in logs):
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
