"""The one SLowED configuration object, shared by every front end (TRL, Axolotl, CLI).

It is built from keywords, from a mapping (``slowed: {tau: 10, mask_ratio: 0.2}``) or from the
short form ``[tau, mask_ratio]`` (``slowed: [10, 0.2]``); all three validate to equal objects.
Validation happens here, once, before any model is loaded, and every error is one line that
names the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

MaskScope = Literal["batch", "sequence"]
TauScope = Literal["layer", "global"]

_MASK_SCOPES = ("batch", "sequence")
_TAU_SCOPES = ("layer", "global")
_REFERENCE_DEVICES = ("cpu", "model")


class SLowEDConfigError(ValueError):
    """A SLowED setting that cannot be honoured; the message is one line naming key, value and what is allowed."""


def _is_number(value: Any) -> bool:
    # bool is an int subclass; `tau: true` in YAML is a typo, not 1.0.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class SLowEDConfig:
    """Settings of SLowED (Slow Tuning and Low-Entropy Masking, arXiv 2508.09666).

    Slow Tuning:
        tau: Frobenius-norm bound on each weight change.
        tau_scope: one bound per adapted weight, or one bound on all of them together.
        project_every: when the projection runs.
        reference_device: where full fine-tuning keeps its copy of the initial weights.

    Low-Entropy Masking:
        mask_ratio: share of target tokens, the most confident ones, left out of the loss.
        mask_scope: the group of tokens among which that share is taken.
    """

    tau: float | None = field(
        metadata={
            "help": "Slow Tuning radius: after each projection every weight change ΔW (for LoRA, "
            "scaling·B@A) satisfies ||ΔW||_F <= tau. A positive number, or null to turn Slow "
            "Tuning off. The paper discusses values up to 10."
        }
    )
    mask_ratio: float = field(
        metadata={
            "help": "Low-Entropy Masking ratio k, 0 <= k < 1: in each masking scope with n target "
            "tokens, the floor(k·n) tokens of lowest predictive entropy are left out of the "
            "training loss. 0 turns masking off (plain SFT, bit for bit)."
        }
    )
    mask_scope: MaskScope = field(
        default="sequence",
        metadata={
            "help": "Group within which the lowest-entropy share is taken: `sequence` (each "
            "training example on its own; with sample packing, each packed example) or `batch` "
            "(all target tokens of the micro-batch on this process). Default `sequence`: an "
            "example's mask then does not depend on batch size, gradient accumulation or the "
            "number of processes."
        },
    )
    project_every: int | Literal["epoch"] = field(
        default="epoch",
        metadata={
            "help": "When Slow Tuning projects: `epoch` (after every epoch, as in the paper) or a "
            "positive number of optimizer steps. It always projects once more at the end of "
            "training, so the saved model satisfies the bound even when `max_steps` stops "
            "mid-epoch."
        },
    )
    tau_scope: TauScope = field(
        default="layer",
        metadata={
            "help": "`layer`: each adapted weight (each LoRA layer, or each trainable tensor in "
            "full fine-tuning) is bounded by tau on its own. `global`: one norm over all weight "
            "changes together is bounded by tau, and all of them are scaled by the same factor."
        },
    )
    entropy_source: Literal["online", "reference"] = field(
        default="online",
        metadata={
            "help": "Whose entropies choose the masked tokens. `online` (default, as in the paper): the "
            "model being trained, at every step, so the mask follows the model as it learns. "
            "`reference`: the initial model (adapters disabled), once before training; the mask is "
            "written into the dataset's labels as -100, so any loss backend trains on it at no "
            "per-step cost, but tokens that become confident during training stay in the loss. "
            "`reference` masks each example on its own (`mask_scope: sequence`)."
        },
    )
    reference_device: Literal["cpu", "model"] = field(
        default="cpu",
        metadata={
            "help": "Full fine-tuning only: where the copy of the initial trainable weights "
            "lives, `cpu` (default, costs host memory) or `model` (the weights' own device, "
            "faster, costs accelerator memory). LoRA needs no copy: its start is ΔW = 0."
        },
    )

    safety_monitor: Mapping[str, Any] | None = field(
        default=None,
        hash=False,
        metadata={
            "help": "In-training safety monitor: a mapping with `prompts` (required: held-out harmful prompts as a "
            "list, a local file or a hub dataset id) and optional limit, seed, prompt_column, judge, judge_format, "
            "every, eval_at_start, max_new_tokens, batch_size, use_chat_template, min_safety_ratio, keep_safest, "
            "restore_on_stop, log_key (docs/evaluation.md). It logs `slowed/safety_ratio` each epoch. null: no monitor."
        },
    )

    def __post_init__(self) -> None:
        _check_tau(self.tau)
        _check_mask_ratio(self.mask_ratio)
        _check_choice("mask_scope", self.mask_scope, _MASK_SCOPES)
        _check_choice("tau_scope", self.tau_scope, _TAU_SCOPES)
        _check_choice("entropy_source", self.entropy_source, ("online", "reference"))
        if self.entropy_source == "reference" and self.mask_scope != "sequence":
            raise SLowEDConfigError(
                "`entropy_source: reference` masks each example before batches exist, so it needs "
                f"`mask_scope: sequence`; got `mask_scope: {self.mask_scope}`."
            )
        _check_choice("reference_device", self.reference_device, _REFERENCE_DEVICES)
        _check_project_every(self.project_every)
        if self.safety_monitor is not None:
            from .evaluation.monitor_config import check_monitor_config  # light: no torch

            try:
                checked = check_monitor_config(self.safety_monitor, key="safety_monitor")
            except ValueError as err:
                raise SLowEDConfigError(str(err)) from None
            object.__setattr__(self, "safety_monitor", MappingProxyType(checked))
        # Normalise ints to floats so that `[10, 0.2]` and `{tau: 10.0, ...}` compare equal.
        if self.tau is not None:
            object.__setattr__(self, "tau", float(self.tau))
        object.__setattr__(self, "mask_ratio", float(self.mask_ratio))

    @property
    def slow_tuning(self) -> bool:
        """Whether Slow Tuning is on."""
        return self.tau is not None

    @property
    def masking(self) -> bool:
        """Whether Low-Entropy Masking is on."""
        return self.mask_ratio > 0

    @property
    def active(self) -> bool:
        """Whether SLowED changes training at all."""
        return self.slow_tuning or self.masking

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def help(cls) -> dict[str, str]:
        """Help string of every key, in declaration order (the docs' key reference)."""
        return {f.name: f.metadata["help"] for f in dataclasses.fields(cls)}

    @classmethod
    def from_value(cls, value: Any, key: str = "slowed") -> SLowEDConfig:
        """Build from a mapping, the short form ``[tau, mask_ratio]``, or an existing config.

        ``key`` is the name the user wrote (``slowed`` in YAML) and prefixes every error.
        """
        if isinstance(value, SLowEDConfig):
            return value
        if isinstance(value, Mapping):
            unknown = [k for k in value if k not in cls.keys()]
            if unknown:
                raise SLowEDConfigError(
                    f"`{key}.{unknown[0]}` is not a SLowED key (got {value[unknown[0]]!r}); "
                    f"allowed keys: {', '.join(cls.keys())}."
                )
            missing = [k for k in ("tau", "mask_ratio") if k not in value]
            if missing:
                raise SLowEDConfigError(
                    f"`{key}.{missing[0]}` is required (got {dict(value)!r}); write it explicitly, "
                    f"e.g. `{key}: {{tau: 10.0, mask_ratio: 0.2}}` (`tau: null` or "
                    "`mask_ratio: 0` turns a mechanism off)."
                )
            try:
                return cls(**dict(value))
            except SLowEDConfigError as err:
                raise SLowEDConfigError(f"`{key}.{str(err).lstrip('`')}") from None
        if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
            if len(value) != 2:
                raise SLowEDConfigError(
                    f"`{key}` short form must be [tau, mask_ratio] with 2 values, got {len(value)}: {list(value)!r}."
                )
            try:
                return cls(tau=value[0], mask_ratio=value[1])
            except SLowEDConfigError as err:
                raise SLowEDConfigError(f"`{key}.{str(err).lstrip('`')}") from None
        raise SLowEDConfigError(
            f"`{key}` must be a mapping such as {{tau: 10.0, mask_ratio: 0.2}} or the short form "
            f"[tau, mask_ratio], got {value!r}."
        )

    def describe(self) -> str:
        """One line with the resolved settings, for startup logs."""
        slow = (
            f"Slow Tuning tau={self.tau:g} ({self.tau_scope}, every {self.project_every})"
            if self.slow_tuning
            else "Slow Tuning off"
        )
        mask = (
            f"Low-Entropy Masking mask_ratio={self.mask_ratio:g} (scope {self.mask_scope})"
            if self.masking
            else "Low-Entropy Masking off"
        )
        monitor = "; safety monitor on" if self.safety_monitor else ""
        return f"SLowED: {slow}; {mask}{monitor}"


def _check_tau(tau: Any) -> None:
    if tau is None:
        return
    if not _is_number(tau) or not math.isfinite(tau) or tau <= 0:
        raise SLowEDConfigError(f"`tau` must be a finite number > 0, or null to turn Slow Tuning off; got {tau!r}.")


def _check_mask_ratio(mask_ratio: Any) -> None:
    if not _is_number(mask_ratio) or not math.isfinite(mask_ratio) or not 0 <= mask_ratio < 1:
        raise SLowEDConfigError(
            f"`mask_ratio` must be a number with 0 <= mask_ratio < 1 (0 turns masking off); got {mask_ratio!r}."
        )


def _check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SLowEDConfigError(f"`{key}` must be one of {', '.join(allowed)}; got {value!r}.")


def _check_project_every(value: Any) -> None:
    if value == "epoch" and isinstance(value, str):
        return
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return
    raise SLowEDConfigError(f"`project_every` must be `epoch` or a positive number of optimizer steps; got {value!r}.")
