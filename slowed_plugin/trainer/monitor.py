"""Safety monitor: the safety ratio on held-out harmful prompts, measured during training.

    monitor = SafetyMonitorCallback(prompts, judge="refusal", every="epoch", min_safety_ratio=0.6)
    trainer = SFTTrainer(model, args=args, train_dataset=ds, callbacks=[monitor])

At each epoch end (or every ``every`` optimizer steps, and once before the first step) the
monitor generates greedy answers to its prompts with the model being trained, has the judge
rule on them, and logs ``slowed/safety_ratio`` with its 95 % Wilson interval through the
trainer's own ``log``, so the paper's safety-per-epoch curve reaches every reporter (W&B,
TensorBoard, ``trainer.state.log_history``). ``history`` keeps one dict per evaluation.

Optional rules, on the evaluations after training has begun (:class:`~slowed_plugin.trainer.safe_states.SafeStates`):

- ``min_safety_ratio``: every evaluation that meets it saves the model to
  ``{output_dir}/slowed-last-safe`` (and keeps its trainable weights in CPU memory). The first
  one that falls below stops training, skips the trainer's checkpoint for that step and puts
  the last safe weights back into the model, so whatever the run saves at the end (Axolotl's
  final save, your ``trainer.save_model()``) met the bound.
- ``keep_safest``: the evaluation with the highest ratio so far (ties go to the later one, which
  has trained longer) is saved to ``{output_dir}/slowed-safest``.

Evaluations run on every process (generation under ZeRO-3/FSDP needs them all); the trainer logs
and saves from the main process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..evaluation.judges import Judge, load_judge
from ..log import get_logger
from ..monitor.settings import CONFIG_KEYS, LOG_KEY, check_monitor_config, check_monitor_values, evaluated_limit
from ..validate import PYTHON
from .find_trainer import calling_trainer
from .safe_states import LAST_SAFE_DIR, SAFEST_DIR, SafeStates

__all__ = ["CONFIG_KEYS", "LAST_SAFE_DIR", "LOG_KEY", "SAFEST_DIR", "SafetyMonitorCallback"]

logger = get_logger()


class SafetyMonitorCallback(TrainerCallback):
    """Measures the safety ratio during training and logs it through the trainer.

    Args:
        prompts: held-out harmful prompts (list of strings), or a file / hub dataset id for
            :func:`slowed_plugin.evaluation.prompts.load_prompts`.
        judge: a :class:`~slowed_plugin.evaluation.judges.Judge` or a spec for
            :func:`~slowed_plugin.evaluation.judges.load_judge` (``"refusal"``, a guard path or id).
        every: ``"epoch"`` or a positive number of optimizer steps.
        max_new_tokens: tokens generated per answer.
        batch_size: prompts generated together.
        min_safety_ratio: stop below this ratio and keep the last state that met it (see module doc).
        keep_safest: save the safest evaluated state to ``{output_dir}/slowed-safest``.
        eval_at_start: evaluate once before training (step 0); that point is logged but is not a
            candidate for ``keep_safest`` and cannot stop training.
        limit, seed, prompt_column: subset of a prompt file or hub set (default 32 prompts).
        use_chat_template: ``None`` (auto), True or False; see :func:`generate_answers`.
        tokenizer: the tokenizer to generate with; default the trainer's ``processing_class``.
        restore_on_stop: with ``min_safety_ratio``, put the last safe weights back when stopping.
        log_key: metric name; the interval goes to ``{log_key}_ci_low`` / ``_ci_high``.
        judge_format: ``input_format`` of a guard built from a spec.
        progress: show a progress bar while generating.
        log: where its lines go (default: SLowED's logger); a front end with its own console hands its logger
            (Axolotl shows INFO lines only from ``axolotl*`` loggers).
    """

    def __init__(
        self,
        prompts: Sequence[str] | str,
        judge: Judge | str | None = "refusal",
        every: int | str = "epoch",
        max_new_tokens: int = 64,
        batch_size: int = 16,
        min_safety_ratio: float | None = None,
        keep_safest: bool = False,
        eval_at_start: bool = True,
        limit: int | None = None,
        seed: int = 0,
        prompt_column: str | None = None,
        use_chat_template: bool | None = None,
        tokenizer: Any = None,
        restore_on_stop: bool = True,
        log_key: str = LOG_KEY,
        judge_format: str | None = None,
        progress: bool = False,
        log: Any = None,
    ) -> None:
        from ..evaluation.prompts import load_prompts

        # The settings' one check (slowed_plugin.monitor.settings), worded for keywords; numbers as users write
        # them. SLowEDConfigError is a ValueError.
        checked = check_monitor_values(
            {
                "prompts": prompts,
                "judge": judge,
                "every": every,
                "max_new_tokens": max_new_tokens,
                "batch_size": batch_size,
                "min_safety_ratio": min_safety_ratio,
                "keep_safest": keep_safest,
                "eval_at_start": eval_at_start,
                "limit": limit,
                "seed": seed,
                "prompt_column": prompt_column,
                "use_chat_template": use_chat_template,
                "restore_on_stop": restore_on_stop,
                "log_key": log_key,
                "judge_format": judge_format,
            },
            PYTHON,
        )
        every, max_new_tokens, batch_size = checked["every"], checked["max_new_tokens"], checked["batch_size"]
        min_safety_ratio, limit, seed = checked["min_safety_ratio"], checked["limit"], checked["seed"]
        self.prompts = load_prompts(prompts, limit=evaluated_limit(prompts, limit), seed=seed, column=prompt_column)
        self.judge = load_judge(judge, input_format=judge_format)
        self.every = every
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.use_chat_template = use_chat_template
        self.tokenizer = tokenizer
        self.log_key = log_key
        self.progress = progress
        # The save, stop and restore rules (slowed_plugin.trainer.safe_states); `best`, `last_safe` and
        # `stopped` below read its records, and `log` is its logger.
        self.states = SafeStates(
            None if min_safety_ratio is None else float(min_safety_ratio),
            bool(keep_safest),
            bool(restore_on_stop),
            logger if log is None else log,
        )
        self.eval_at_start = bool(eval_at_start)

        self.history: list[dict[str, Any]] = []
        self.trainer: Trainer | None = None
        self._announced = False

    @property
    def log(self) -> Any:
        """Where its lines go (one logger for the monitor and its save, stop and restore rules)."""
        return self.states.log

    @log.setter
    def log(self, value: Any) -> None:
        self.states.log = value

    @property
    def min_safety_ratio(self) -> float | None:
        return self.states.min_safety_ratio

    @property
    def keep_safest(self) -> bool:
        return self.states.keep_safest

    @property
    def best(self) -> dict[str, Any] | None:
        """The record of the safest evaluated state (with ``keep_safest``)."""
        return self.states.best

    @property
    def last_safe(self) -> dict[str, Any] | None:
        """The record of the last state that met ``min_safety_ratio``."""
        return self.states.last_safe

    @property
    def stopped(self) -> dict[str, Any] | None:
        """The record of the evaluation that stopped training."""
        return self.states.stopped

    # ------------------------------------------------------------------ construction from config
    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], key: str = "slowed.safety_monitor", log: Any = None
    ) -> SafetyMonitorCallback:
        """Build from a plain mapping (the Axolotl ``slowed.safety_monitor`` block); keys in :data:`CONFIG_KEYS`.

        ``key`` is how the user wrote the mapping's place and prefixes every error; ``log`` as in the constructor.
        """
        kwargs = check_monitor_config(config, key)
        try:
            return cls(**kwargs, log=log)
        except (ValueError, FileNotFoundError) as err:
            message = str(err)
            raise ValueError(
                f"`{key}.{message.lstrip('`')}" if message.startswith("`") else f"{key}: {message}"
            ) from None

    # ------------------------------------------------------------------ attaching
    def attach(self, trainer: Trainer) -> None:
        """Bind to ``trainer`` (found automatically when the callback is registered on it)."""
        if self.trainer is not None and self.trainer is not trainer:
            raise ValueError(
                "This SafetyMonitorCallback is already attached to another trainer; create one per trainer."
            )
        self.trainer = trainer
        self._run_last()

    def _run_last(self) -> None:
        """Move this callback behind every other one, so that it measures the state an epoch or step
        leaves behind (after Slow Tuning's projection) and has the last word on saving and stopping.

        A new list, not an in-place move: the handler may be iterating over the old one right now.
        """
        handler = self.trainer.callback_handler
        if self in handler.callbacks and handler.callbacks[-1] is not self:
            handler.callbacks = [c for c in handler.callbacks if c is not self] + [self]

    def _trainer(self) -> Trainer:
        if self.trainer is None:
            trainer = calling_trainer(self)
            if trainer is None:
                raise RuntimeError("SafetyMonitorCallback could not find its trainer; call `monitor.attach(trainer)`.")
            self.attach(trainer)
        return self.trainer

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if self.trainer is None:
            trainer = calling_trainer(self)
            if trainer is not None:
                self.attach(trainer)

    # ------------------------------------------------------------------ events
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self._trainer()
        self._run_last()  # callbacks added after the trainer was built (Axolotl adds some) come after us
        seconds = None
        if self.eval_at_start and state.global_step == 0:
            record = self.evaluate(args, state, **kwargs)
            seconds = record["seconds"]
            self.states.starting(self.trainer, record)
        if not self._announced and state.is_world_process_zero:
            self.log.info(self._announcement(args, state, seconds))
        self._announced = True

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if self.every != "epoch" and state.global_step % self.every == 0:
            self._evaluate_and_apply(args, state, control, **kwargs)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if self.every == "epoch" and self.stopped is None:
            self._evaluate_and_apply(args, state, control, **kwargs)

    # ------------------------------------------------------------------ measuring
    def evaluate(self, args: TrainingArguments, state: TrainerState, **kwargs: Any) -> dict[str, Any]:
        """Measure now, log through the trainer, append to and return the new ``history`` entry."""
        from ..evaluation.generation import model_device
        from ..evaluation.safety import evaluate_safety

        trainer = self._trainer()
        model = kwargs.get("model") if kwargs.get("model") is not None else trainer.model
        tokenizer = self._tokenizer(trainer, kwargs)
        if getattr(self.judge, "source", None) is not None and getattr(self.judge, "device", "set") is None:
            # A guard loaded by the monitor lives on this process's training device, not on cuda:0 of every rank.
            self.judge.device = str(model_device(model))
        # The pipeline of `slowed eval safety`: greedy answers, the judge's verdicts, the ratio and its interval.
        result = evaluate_safety(
            model,
            tokenizer,
            self.prompts,
            judge=self.judge,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            progress=self.progress and state.is_world_process_zero,
            use_chat_template=self.use_chat_template,
        )
        low, high = result.interval
        record = {
            "step": state.global_step,
            "epoch": float(state.epoch or 0.0),
            "safety_ratio": result.ratio,
            "ci_low": low,
            "ci_high": high,
            "n_safe": result.n_safe,
            "n": result.n,
            "seconds": result.generation_seconds + result.judge_seconds,
            "judge": result.judge,
            "answers": [r["answer"] for r in result.records],
            "verdicts": [r["safe"] for r in result.records],
        }
        self.history.append(record)
        # The base class's log: a row of its own, without draining a subclass's accumulated train metrics.
        # Its `on_log` clears `control.should_log`; keep the log the epoch or step had scheduled (loss rows,
        # Slow Tuning's projection metrics).
        should_log = trainer.control.should_log
        Trainer.log(
            trainer,
            {self.log_key: record["safety_ratio"], f"{self.log_key}_ci_low": low, f"{self.log_key}_ci_high": high},
        )
        trainer.control.should_log = should_log
        return record

    def _evaluate_and_apply(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        record = self.evaluate(args, state, **kwargs)
        self.states.after_training_began(self._trainer(), record, control)

    # ------------------------------------------------------------------ helpers
    def _tokenizer(self, trainer: Trainer, kwargs: dict[str, Any]) -> Any:
        tokenizer = self.tokenizer or kwargs.get("processing_class") or getattr(trainer, "processing_class", None)
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a multimodal processor holds one
        if tokenizer is None:
            raise ValueError(
                "SafetyMonitorCallback needs a tokenizer to generate answers and the trainer has none; pass "
                "`SafetyMonitorCallback(..., tokenizer=tokenizer)`."
            )
        return tokenizer

    def _announcement(self, args: TrainingArguments, state: TrainerState, seconds: float | None) -> str:
        """The start line: when it evaluates, what one evaluation costs, and the time the first one took."""
        n = len(self.prompts)
        batches = -(-n // self.batch_size)
        if self.every == "epoch":
            planned = int(round(args.num_train_epochs)) if state.max_steps <= 0 else None
            epochs = getattr(state, "num_train_epochs", None) or planned
            when, count = "after each epoch", epochs
        else:
            when, count = f"every {self.every} steps", state.max_steps // self.every if state.max_steps > 0 else None
        cost = (
            f"{n} prompts in {batches} batch{'es' if batches != 1 else ''} of up to {self.batch_size}, "
            f"up to {self.max_new_tokens} new tokens each ({batches * self.max_new_tokens} decoding steps at most), "
            f"then {self.judge.describe()}"
        )
        timing = f"; the starting evaluation took {seconds:.1f} s" if seconds is not None else ""
        total = ""
        if count and seconds is not None:
            total = f", about {count * seconds:.0f} s for the {count} planned evaluations"
        return f"slowed: safety monitor {when}: one evaluation = {cost}{timing}{total}."
