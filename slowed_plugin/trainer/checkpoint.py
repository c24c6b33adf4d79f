"""What Slow Tuning keeps beside a checkpoint, and how it is written so that a failure never loses one.

LoRA needs nothing (its start is ΔW = 0). Full fine-tuning needs its start weights to resume exactly; they are
written right after the model, inside transformers' checkpoint save (see
:func:`slowed_plugin.trainer.patches.install_checkpoint_hook`): before ``trainer_state.json``, so a checkpoint
that transformers can resume always has them, and before ``save_total_limit`` deletes older checkpoints
(``on_save`` runs after that deletion, so a failed write there could leave no resumable checkpoint).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..core.slow_tuning import SlowTuner
from ..files import atomic_write

REFERENCE_FILE = "slowed_reference.pt"


def is_checkpoint_dir(output_dir: str | None) -> bool:
    """Whether ``output_dir`` is one of transformers' ``checkpoint-N`` folders (not the final save)."""
    return output_dir is not None and os.path.basename(os.path.normpath(output_dir)).startswith(PREFIX_CHECKPOINT_DIR)


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` through :func:`slowed_plugin.files.atomic_write`: a checkpoint never holds a truncated file
    under its real name."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_reference(tuner: SlowTuner, checkpoint_dir: str) -> None:
    atomic_save(tuner.state_dict(), os.path.join(checkpoint_dir, REFERENCE_FILE))


def load_reference(tuner: SlowTuner, output_dir: str, global_step: int) -> None:
    """Restore full fine-tuning's start weights from the checkpoint a run resumes from."""
    path = os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{global_step}", REFERENCE_FILE)
    if not os.path.isfile(path):
        raise ValueError(
            f"Resuming full fine-tuning with Slow Tuning needs the initial weights saved beside the checkpoint "
            f"({path} is missing): this checkpoint was written without SLowED. Start a new run instead."
        )
    tuner.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
