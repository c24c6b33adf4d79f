"""The one SLowED configuration object, shared by every front end (TRL, Axolotl, CLI).

It is built from keywords, from a mapping (``slowed: {tau: 10, mask_ratio: 0.2}``) or from the
short form ``[tau, mask_ratio]`` (``slowed: [10, 0.2]``); all three validate to equal objects.
Validation happens here, once, before any model is loaded, and every error is one line that
names the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from .validate import (
    PYTHON,
    SLowEDConfigError,
    Spelling,
    check_choice,
    check_every,
    check_mask_ratio,
    check_reference_scope,
    check_tau,
    yaml_spelling,
)

__all__ = ["MaskScope", "SLowEDConfig", "SLowEDConfigError", "TauScope"]

MaskScope = Literal["batch", "sequence"]
TauScope = Literal["layer", "global"]

_MASK_SCOPES = ("batch", "sequence")
_TAU_SCOPES = ("layer", "global")
_ENTROPY_SOURCES = ("online", "reference")
_REFERENCE_DEVICES = ("cpu", "model")


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

    safety_anchor: Mapping[str, Any] | None = field(
        default=None,
        hash=False,
        metadata={
            "help": "Safety anchor (beyond the paper): a mapping with `prompts` (required: harmful requests, not the "
            "evaluated ones) and optional benign_prompts, mode (`replay` default, or `gradient`), ratio (default "
            "0.05), replay_batch_size, seed, max_new_tokens, batch_size, use_chat_template, min_refusal_share, cache, "
            "prompt_column (docs/anchor.md). The starting model's own greedy answers are replayed in training, or "
            "constrain each step's gradient. Works with or without tau and mask_ratio. null: no anchor."
        },
    )

    safety_subspace: Mapping[str, Any] | None = field(
        default=None,
        hash=False,
        metadata={
            "help": "Safety-subspace projection (beyond the paper): a mapping with `prompts` and `benign_prompts` "
            "(required; the anchor's files serve) and optional directions (default 1), prompt_column, "
            "use_chat_template, batch_size (docs/anchor.md). Before training, the starting model's hidden states "
            "on them give per residual stream the direction(s) that tell harmful from benign; wherever Slow "
            "Tuning projects (or each epoch without tau), every weight change is projected off them: "
            "ΔW <- (I - P_out) ΔW (I - P_in), before the ball. null: no projection."
        },
    )

    def __post_init__(self) -> None:
        # Checked and converted once (numbers as users write them, ints to floats so that `[10, 0.2]` and
        # `{tau: 10.0, ...}` compare equal); from_value has already checked YAML values in YAML wording.
        for key, value in _checked({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, PYTHON).items():
            object.__setattr__(self, key, value)

    @property
    def slow_tuning(self) -> bool:
        """Whether Slow Tuning is on."""
        return self.tau is not None

    @property
    def masking(self) -> bool:
        """Whether Low-Entropy Masking is on."""
        return self.mask_ratio > 0

    @property
    def online_masking(self) -> bool:
        """Whether masking runs in each training step (``entropy_source: online``), not once on the dataset
        (``reference``, whose mask is written into the labels, so that any loss trains on it)."""
        return self.masking and self.entropy_source == "online"

    @property
    def anchored(self) -> bool:
        """Whether the safety anchor is on."""
        return self.safety_anchor is not None

    @property
    def subspace(self) -> bool:
        """Whether the safety-subspace projection is on."""
        return self.safety_subspace is not None

    @property
    def active(self) -> bool:
        """Whether SLowED changes training at all."""
        return self.slow_tuning or self.masking or self.anchored or self.subspace

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def help(cls) -> dict[str, str]:
        """Help string of every key, in declaration order (the docs' key reference)."""
        return {f.name: f.metadata["help"] for f in dataclasses.fields(cls)}

    @classmethod
    def from_value(cls, value: Any, key: str | None = None) -> SLowEDConfig:
        """Build from a mapping, the short form ``[tau, mask_ratio]``, or an existing config.

        ``key`` is where the user wrote the value in YAML (``slowed``): errors then name ``slowed.tau`` and suggest
        YAML syntax. Without it the value came from Python (``SLowEDCallback(tau=...)``, ``check_training_args``):
        errors name the keyword (``tau``) and suggest Python syntax.
        """
        if isinstance(value, SLowEDConfig):
            return value
        spelling = yaml_spelling(key) if key is not None else PYTHON
        whole = spelling.key() if key is not None else "`config`"
        if isinstance(value, Mapping):
            unknown = [k for k in value if k not in cls.keys()]
            if unknown:
                raise SLowEDConfigError(
                    f"{spelling.key(str(unknown[0]))} is not a SLowED key (got {value[unknown[0]]!r}); "
                    f"allowed keys: {', '.join(cls.keys())}."
                )
            missing = [k for k in ("tau", "mask_ratio") if k not in value]
            if missing:
                example = (
                    f"`{key}: {{tau: 10.0, mask_ratio: 0.2}}`" if key is not None else "`tau=10.0, mask_ratio=0.2`"
                )
                raise SLowEDConfigError(
                    f"{spelling.key(missing[0])} is required (got {dict(value)!r}); write it explicitly, "
                    f"e.g. {example} ({spelling.setting('tau', None)} or {spelling.setting('mask_ratio', 0)} "
                    "turns a mechanism off)."
                )
            return cls(**_checked(dict(value), spelling))
        if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
            if len(value) != 2:
                raise SLowEDConfigError(
                    f"{whole} short form must be [tau, mask_ratio] with 2 values, got {len(value)}: {list(value)!r}."
                )
            return cls(**_checked({"tau": value[0], "mask_ratio": value[1]}, spelling))
        kind = "a mapping such as {tau: 10.0, mask_ratio: 0.2}"
        if key is None:
            kind = "a SLowEDConfig, a mapping such as {'tau': 10.0, 'mask_ratio': 0.2}"
        raise SLowEDConfigError(f"{whole} must be {kind} or the short form [tau, mask_ratio], got {value!r}.")

    def resolved(self) -> dict[str, Any]:
        """The mapping form with every key, in plain dicts and lists (as stored in a validated Axolotl config)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def describe(self) -> str:
        """One line with the resolved settings, for startup logs."""
        slow = (
            f"Slow Tuning tau={self.tau:g} ({self.tau_scope}, every {_every(self.project_every)})"
            if self.slow_tuning
            else "Slow Tuning off"
        )
        mask = (
            f"Low-Entropy Masking mask_ratio={self.mask_ratio:g} (scope {self.mask_scope})"
            if self.masking
            else "Low-Entropy Masking off"
        )
        monitor = "; safety monitor on" if self.safety_monitor else ""
        anchor = ""
        if self.anchored:
            a = self.safety_anchor
            anchor = f"; safety anchor {a['mode']}" + (f" (ratio {a['ratio']:g})" if a["mode"] == "replay" else "")
        subspace = ""
        if self.subspace:
            subspace = f"; safety subspace ({self.safety_subspace['directions']} direction(s) per stream)"
        return f"SLowED: {slow}; {mask}{monitor}{anchor}{subspace}"


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):  # includes the read-only mappings the config keeps
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _checked(values: dict[str, Any], spelling: Spelling) -> dict[str, Any]:
    """``values`` (any subset of the keys) checked and converted, errors worded for ``spelling``."""
    out = dict(values)
    if "tau" in values:
        out["tau"] = check_tau(values["tau"], spelling)
    if "mask_ratio" in values:
        out["mask_ratio"] = check_mask_ratio(values["mask_ratio"], spelling)
    for key, allowed in (
        ("mask_scope", _MASK_SCOPES),
        ("tau_scope", _TAU_SCOPES),
        ("entropy_source", _ENTROPY_SOURCES),
    ):
        if key in values:
            check_choice(key, values[key], allowed, spelling)
    if values.get("entropy_source") == "reference":
        check_reference_scope(values.get("mask_scope", "sequence"), spelling)
    if "reference_device" in values:
        check_choice("reference_device", values["reference_device"], _REFERENCE_DEVICES, spelling)
    if "project_every" in values:
        out["project_every"] = check_every(values["project_every"], "project_every", spelling)
    if values.get("safety_monitor") is not None:
        from .monitor.settings import check_monitor_config  # pure Python, like this module

        checked = check_monitor_config(values["safety_monitor"], spelling=spelling.child("safety_monitor"))
        out["safety_monitor"] = MappingProxyType(checked)
    if values.get("safety_anchor") is not None:
        from .anchor.settings import check_anchor_config  # pure Python, like this module

        checked = check_anchor_config(values["safety_anchor"], spelling=spelling.child("safety_anchor"))
        out["safety_anchor"] = MappingProxyType(checked)
    if values.get("safety_subspace") is not None:
        from .anchor.subspace_settings import check_subspace_config  # pure Python, like this module

        checked = check_subspace_config(values["safety_subspace"], spelling=spelling.child("safety_subspace"))
        out["safety_subspace"] = MappingProxyType(checked)
    return out


def _every(project_every: int | str) -> str:
    if project_every == "epoch":
        return "epoch"
    return f"{project_every} optimizer step" + ("s" if project_every != 1 else "")
