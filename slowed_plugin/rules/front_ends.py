"""The rule table read by each front end: TRL's arguments, a built trainer, an Axolotl config."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..config import SLowEDConfig
from ..validate import SLowEDConfigError, Spelling
from .anchor import anchor_source_problem
from .rule import AXOLOTL, TRL, Rule
from .table import RULES

if TYPE_CHECKING:
    from transformers import Trainer, TrainingArguments


def _problems(
    config: SLowEDConfig, spelling: Spelling, find: Callable[[Rule], Callable[[], str | None] | None]
) -> list[str]:
    found = [message] if (message := anchor_source_problem(config, spelling)) is not None else []
    for rule in RULES:
        if rule.applies(config) and (probe := find(rule)) is not None and (message := probe()) is not None:
            found.append(message)
    return found


def check_training_args(config: SLowEDConfig | dict | list | tuple, args: TrainingArguments) -> None:
    """Raise :class:`SLowEDConfigError` if ``args`` holds a setting under which ``config`` would not run as set.

    Needs no model: call it right after building the ``SFTConfig`` to fail before loading one.
    """
    config = SLowEDConfig.from_value(config)
    problems = _problems(config, TRL, lambda rule: rule.trl_args and (lambda: rule.trl_args(args)))
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

    problems = _problems(config, TRL, find)
    if problems:
        raise SLowEDConfigError(problems[0])


def axolotl_problems(cfg: Mapping[str, Any], config: SLowEDConfig) -> list[str]:
    """One line per setting of ``cfg`` (an Axolotl config) that SLowED with ``config`` cannot honour exactly."""
    return _problems(config, AXOLOTL, lambda rule: rule.axolotl and (lambda: rule.axolotl(cfg)))
