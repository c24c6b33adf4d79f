"""The safety monitor's rules on the states it measures: which to save, when to stop, what to put back.

:class:`SafeStates` gets every evaluation's record from
:class:`~slowed_plugin.trainer.monitor.SafetyMonitorCallback` and applies the two optional rules:

- ``min_safety_ratio``: an evaluation that meets it is the new last safe state (saved to
  ``{output_dir}/slowed-last-safe``, its trainable weights kept in CPU memory with ``restore_on_stop``); the first
  one below it stops training, skips that step's checkpoint and puts the last safe weights back.
- ``keep_safest``: the highest ratio so far (ties go to the later state, which has trained longer) is saved to
  ``{output_dir}/slowed-safest``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from transformers import Trainer, TrainerControl

SAFEST_DIR = "slowed-safest"
LAST_SAFE_DIR = "slowed-last-safe"
SUMMARY_FILE = "slowed_safety.json"


class SafeStates:
    """The save, stop and restore policy of one monitored run; ``best``, ``last_safe`` and ``stopped`` are the
    records it acted on (None until then)."""

    def __init__(self, min_safety_ratio: float | None, keep_safest: bool, restore_on_stop: bool, log: Any) -> None:
        self.min_safety_ratio = min_safety_ratio
        self.keep_safest = keep_safest
        self.restore_on_stop = restore_on_stop
        self.log = log
        self.best: dict[str, Any] | None = None
        self.last_safe: dict[str, Any] | None = None
        self.stopped: dict[str, Any] | None = None
        self._weights: dict[str, Any] | None = None

    def starting(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """The evaluation before the first step: a safe start is remembered (not saved; it is the input model);
        an unsafe one is only announced, since it cannot stop a run that has not begun."""
        if self.min_safety_ratio is None:
            return
        if record["safety_ratio"] >= self.min_safety_ratio:
            self._remember(trainer, record, save=False)
        elif trainer.state.is_world_process_zero:
            self.log.warning(
                f"slowed: safety monitor: the starting model's safety ratio {record['safety_ratio']:.4f} is already "
                f"below min_safety_ratio={self.min_safety_ratio:g}; training stops at the first evaluation "
                "that is still below it."
            )

    def after_training_began(self, trainer: Trainer, record: dict[str, Any], control: TrainerControl) -> None:
        """Apply both rules to an evaluation of a trained state."""
        ratio = record["safety_ratio"]
        if self.keep_safest and (self.best is None or ratio >= self.best["safety_ratio"]):
            self.best = record
            _save(trainer, SAFEST_DIR, record)
        if self.min_safety_ratio is None:
            return
        if ratio >= self.min_safety_ratio:
            self._remember(trainer, record, save=True)
            return
        # Below the bound: stop, no checkpoint of this state, and the last safe weights back in the model.
        self.stopped = record
        control.should_training_stop = True
        control.should_save = False
        restored = self._restore(trainer.model)
        if trainer.state.is_world_process_zero:
            self.log.warning(
                f"slowed: safety monitor: safety ratio {ratio:.4f} at step {record['step']} is below "
                f"min_safety_ratio={self.min_safety_ratio:g}: training stops ({self._where(restored)})."
            )

    def _where(self, restored: bool) -> str:
        if self.last_safe is None:
            return "no evaluation met it"
        where = f"last safe: step {self.last_safe['step']} (ratio {self.last_safe['safety_ratio']:.4f})"
        if self.last_safe.get("path"):
            where += f", saved in {self.last_safe['path']}"
        return where + ("; its weights are back in the model" if restored else "")

    def _remember(self, trainer: Trainer, record: dict[str, Any], save: bool) -> None:
        self.last_safe = record
        if save:
            _save(trainer, LAST_SAFE_DIR, record)
        if self.restore_on_stop:
            self._weights = {
                name: p.detach().to("cpu", copy=True) for name, p in trainer.model.named_parameters() if p.requires_grad
            }

    def _restore(self, model: Any) -> bool:
        import torch

        from ..core.weight_access import is_zero3_param

        if not self.restore_on_stop or self._weights is None:
            return False
        params = dict(model.named_parameters())
        sharded = any(is_zero3_param(p) for p in params.values())
        if sharded or any(params[n].shape != w.shape for n, w in self._weights.items() if n in params):
            self.log.warning(
                "slowed: safety monitor: the model's parameters are sharded (DeepSpeed ZeRO-3 / FSDP); the last safe "
                "state stays in its saved folder and is not copied back."
            )
            return False
        with torch.no_grad():
            for name, weight in self._weights.items():
                params[name].copy_(weight.to(params[name].device))
        return True


def _save(trainer: Trainer, folder: str, record: dict[str, Any]) -> None:
    """``trainer.save_model`` into ``{output_dir}/{folder}``, with the record's summary beside the weights."""
    path = os.path.join(trainer.args.output_dir, folder)
    trainer.save_model(path)
    record["path"] = path
    if trainer.state.is_world_process_zero:
        summary = {k: v for k, v in record.items() if k not in ("answers", "verdicts")}
        with open(os.path.join(path, SUMMARY_FILE), "w") as handle:
            json.dump(summary, handle, indent=2)
