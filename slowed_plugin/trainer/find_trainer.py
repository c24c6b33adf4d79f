"""How a callback finds the trainer it is registered on.

transformers hands callbacks the arguments, the state and a few objects (model, optimizer, dataloaders), never
the trainer itself, and SLowED must change the trainer (its loss, its step count, its logs) when it is built, so
that a bad combination fails at construction. Two ways in, in order of preference:

1. explicit: ``callback.attach(trainer)`` (Axolotl's plugin does this; TRL users may too);
2. fallback, for ``SFTTrainer(..., callbacks=[callback])``: the trainer whose method is calling the event, found
   on the call stack. Every transformers version calls ``on_init_end`` from ``Trainer.__init__`` and
   ``on_train_begin`` from ``Trainer.train``, so the trainer is always a frame above the event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .private_api import caller_frames

if TYPE_CHECKING:
    from transformers import Trainer, TrainerCallback


def calling_trainer(callback: TrainerCallback) -> Trainer | None:
    """The Trainer, registered with ``callback``, whose method is on the call stack; None if there is none."""
    from transformers import Trainer

    for frame in caller_frames(1):
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer) and callback in candidate.callback_handler.callbacks:
            return candidate
    return None
