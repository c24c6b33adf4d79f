"""The demo's own trainer callback: reasoning accuracy, ``||ΔW||`` and what masking drops, at the start and
after every epoch, and progress messages to the parent process."""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import TrainerCallback

from ..core.slow_tuning import delta_norms, start_weights
from .metrics import dropped_kinds, reasoning_accuracy
from .world import Example


class DemoCallback(TrainerCallback):
    """Registered after ``SLowEDCallback``, so an epoch's measurement sees the projected weights.

    ``queue`` (or None) receives ``(run_index, kind, ...)`` messages: ``("start", max_steps)``,
    ``("step", global_step)`` and, once the safety monitor has logged an epoch,
    ``("eval", epoch, safety_ratio, last history row)``.
    """

    def __init__(
        self,
        cot: list[Example],
        tokenizer,
        batch_size: int,
        queue,
        run_index: int,
        mask_ratio: float = 0.0,
        inspect_rows: list[dict[str, str]] | None = None,
        opener: str = "",
    ) -> None:
        self.cot, self.tokenizer, self.batch_size = cot, tokenizer, batch_size
        self.queue, self.run_index = queue, run_index
        self.mask_ratio, self.inspect_rows, self.opener = mask_ratio, inspect_rows or [], opener
        self.history: list[dict[str, Any]] = []
        self.start: dict[str, torch.Tensor] | None = None  # start values of the dense trainable tensors
        self.samples: list[str] = []
        self.step_seconds = 0.0  # time inside optimizer steps (step begin to step end), evaluations excluded
        self._step_started: float | None = None

    def _post(self, *message) -> None:
        if self.queue is not None:
            self.queue.put((self.run_index, *message))

    def _measure(self, state, model) -> None:
        accuracy, answers = reasoning_accuracy(model, self.tokenizer, self.cot, self.batch_size)
        norms = None
        if self.start is not None:
            norms = torch.stack(list(delta_norms(model, self.start).values()))
        dropped = None
        if self.mask_ratio > 0 and self.inspect_rows:
            dropped = dropped_kinds(model, self.tokenizer, self.inspect_rows, self.mask_ratio, self.opener)
        self.history.append(
            {
                "step": state.global_step,
                "epoch": float(state.epoch or 0.0),
                "reasoning_accuracy": accuracy,
                "n_correct": round(accuracy * len(self.cot)),
                "n": len(self.cot),
                "max_delta_norm": float(norms.max()) if norms is not None else None,
                "mean_delta_norm": float(norms.mean()) if norms is not None else None,
                "dropped_tokens": dropped,
            }
        )
        self.samples = answers

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.start = start_weights(model)  # ||ΔW|| of full fine-tuning is measured from here
        self._post("start", state.max_steps)
        if state.global_step == 0:
            self._measure(state, model)

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._step_started is not None:
            self.step_seconds += time.perf_counter() - self._step_started
            self._step_started = None
        self._post("step", state.global_step)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self._measure(state, model)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "slowed/safety_ratio" in logs and self.history:
            self._post("eval", float(state.epoch or 0.0), logs["slowed/safety_ratio"], self.history[-1])
