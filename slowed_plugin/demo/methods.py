"""What the demo runs: the method catalogue, the training settings every run shares, and the run list."""

from __future__ import annotations

from dataclasses import dataclass

from ..anchor import DEFAULTS, MODES

# The product's default anchor (`safety_anchor` with only prompts given), read from the product, not restated.
DEFAULT_ANCHOR_MODE: str = DEFAULTS["mode"]
DEFAULT_ANCHOR_RATIO: float = DEFAULTS["ratio"]
ANCHOR_MODES = MODES


@dataclass(frozen=True)
class Method:
    """One way to distil: LoRA (or full fine-tuning) with or without each SLowED mechanism and the safety
    anchor, or the anchor's placebo control."""

    key: str
    label: str
    tau: float | None = None
    mask_ratio: float = 0.0
    full: bool = False  # full fine-tuning instead of LoRA
    anchor: str | None = None  # the safety anchor's mode (replay or gradient); None: no anchor
    # Replay: share of anchor rows in the mixed training set. Placebo: the same share of extra rows,
    # duplicated distillation chains.
    anchor_ratio: float = DEFAULT_ANCHOR_RATIO
    placebo: bool = False
    subspace: int | None = None  # the safety subspace's directions per stream; None: no subspace projection

    def __post_init__(self) -> None:
        if self.anchor is not None and self.anchor not in ANCHOR_MODES:
            raise ValueError(f"anchor mode must be one of {ANCHOR_MODES}, got {self.anchor!r}")
        if self.placebo and self.anchor is not None:
            raise ValueError("a placebo run has no anchor: it only adds as many duplicated chains as replay adds rows")

    @property
    def uses_slowed(self) -> bool:
        """Whether the run registers ``SLowEDCallback`` (Slow Tuning, masking or the anchor)."""
        return self.tau is not None or self.mask_ratio > 0 or self.anchor is not None or self.subspace is not None

    @property
    def extra_rows(self) -> bool:
        """Whether rows are added to the distillation set (replay's anchor rows or the placebo's duplicates)."""
        return self.anchor == "replay" or self.placebo

    def anchor_text(self) -> str:
        """The anchor column of the table: ``replay 5 %``, ``gradient``, ``placebo 5 %`` or ``-``."""
        if self.placebo:
            return f"placebo {self.anchor_ratio * 100:g} %"
        if self.anchor in ("replay", "kl"):
            return f"{self.anchor} {self.anchor_ratio * 100:g} %"
        return self.anchor or "-"


def anchor_methods(
    tau: float, mask_ratio: float, ratio: float = DEFAULT_ANCHOR_RATIO, mode: str = DEFAULT_ANCHOR_MODE
) -> list[Method]:
    """The safety anchor alone (replay, gradient), with SLowED (the default anchor, ``mode``), and the placebo
    (as many extra rows as replay adds, duplicated distillation chains)."""
    return [
        Method("anchor-replay", "anchor replay", anchor="replay", anchor_ratio=ratio),
        Method("anchor-gradient", "anchor gradient", anchor="gradient", anchor_ratio=ratio),
        Method("slowed-anchor", "SLowED + anchor", tau=tau, mask_ratio=mask_ratio, anchor=mode, anchor_ratio=ratio),
        Method("placebo", "placebo", anchor_ratio=ratio, placebo=True),
    ]


def subspace_methods(
    tau: float, mask_ratio: float, ratio: float = DEFAULT_ANCHOR_RATIO, directions: int = 1
) -> list[Method]:
    """Issue 29's candidates: the safety-subspace projection alone, with SLowED and with anchor replay; the KL
    anchor alone and with SLowED. Not in the default comparison: run them by key (``--methods plain,subspace``)."""
    methods = []
    for k, suffix in ((directions, ""), (8, "-k8")):  # one direction per stream, and eight (a wider subspace)
        methods += [
            Method(f"subspace{suffix}", f"safety subspace{suffix}", subspace=k),
            Method(
                f"slowed-subspace{suffix}", f"SLowED + subspace{suffix}", tau=tau, mask_ratio=mask_ratio, subspace=k
            ),
            Method(
                f"anchor-subspace{suffix}",
                f"anchor replay + subspace{suffix}",
                anchor="replay",
                anchor_ratio=ratio,
                subspace=k,
            ),
        ]
    return [
        *methods,
        # The KL anchor (candidate 2): the starting model's whole next-token distribution on its own answers.
        Method("anchor-kl", "anchor KL", anchor="kl", anchor_ratio=ratio),
        Method(
            "slowed-anchor-kl", "SLowED + anchor KL", tau=tau, mask_ratio=mask_ratio, anchor="kl", anchor_ratio=ratio
        ),
    ]


SUBSPACE_KEYS = tuple(m.key for m in subspace_methods(1.0, 0.0))


# The comparison `slowed demo` runs without `--methods`: the collapse (plain LoRA), SLowED, the anchor, and both
# together, in about 10 minutes on 2 cores. `--methods all` runs the whole comparison; every method is one
# `--methods` away. (Full fine-tuning joins with `--full-ft`.)
DEFAULT_KEYS: tuple[str, ...] = ("plain", "slowed", "anchor-replay", "slowed-anchor", "full", "full-slowed")


def comparison_methods(
    tau: float,
    mask_ratio: float,
    full_ft: bool = False,
    anchor: bool = True,
    anchor_ratio: float = DEFAULT_ANCHOR_RATIO,
) -> list[Method]:
    """The issue's comparison: plain LoRA, each mechanism alone, both; the safety anchor alone and with SLowED,
    and its placebo; optionally full fine-tuning."""
    methods = [
        Method("plain", "plain LoRA"),
        Method("slow", "Slow Tuning only", tau=tau),
        Method("mask", "Masking only", mask_ratio=mask_ratio),
        Method("slowed", "SLowED", tau=tau, mask_ratio=mask_ratio),
    ]
    if anchor:
        methods += anchor_methods(tau, mask_ratio, anchor_ratio)
    if full_ft:
        methods += [
            Method("full", "full FT", full=True),
            Method("full-slowed", "full FT + SLowED", tau=tau, mask_ratio=mask_ratio, full=True),
        ]
    return methods


def sweep_methods(
    taus: list[float],
    mask_ratio: float,
    anchor: bool = True,
    anchor_ratio: float = DEFAULT_ANCHOR_RATIO,
    tau: float | None = None,
) -> list[Method]:
    """Plain LoRA (tau = infinity) and SLowED at each tau: the safety-versus-reasoning frontier; and the anchor
    methods (``tau``: SLowED + anchor's radius), drawn as points against it."""
    methods = [Method("plain", "plain LoRA")]
    methods += [Method(f"slowed-tau{t:g}", f"SLowED tau={t:g}", tau=t, mask_ratio=mask_ratio) for t in taus]
    if anchor:
        anchored = anchor_methods(tau if tau is not None else taus[0], mask_ratio, anchor_ratio)
        methods += [m for m in anchored if not m.placebo]
    return methods


@dataclass(frozen=True)
class TrainSettings:
    """Fine-tuning and evaluation settings shared by every run of one demo."""

    epochs: int = 10
    learning_rate: float = 3e-4
    full_learning_rate: float = 3e-4
    batch_size: int = 32
    warmup_steps: int = 20
    lora_r: int = 16
    lora_alpha: int = 32
    cot_train: int | None = None  # None: the whole distillation set
    eval_harmful: int | None = None  # None: every held-out prompt
    eval_cot: int | None = None
    eval_benign: int | None = None
    generation_batch_size: int = 64
    # Anchor prompts, per kind, from the training split (None: all of them; a fixed subset for fast tests).
    anchor_prompts: int | None = None


@dataclass(frozen=True)
class RunSpec:
    index: int
    method: Method
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method.key}-seed{self.seed}"

    @property
    def label(self) -> str:
        return f"{self.method.label} seed {self.seed}"


def make_specs(methods: list[Method], seeds: list[int]) -> list[RunSpec]:
    """Seed-major order, so that with two jobs the first seed of every method finishes first."""
    specs, index = [], 0
    for seed in seeds:
        for method in methods:
            specs.append(RunSpec(index, method, seed))
            index += 1
    return specs
