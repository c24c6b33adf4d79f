"""What the demo runs: the method catalogue, the training settings every run shares, and the run list."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """One way to distil: LoRA (or full fine-tuning) with or without each SLowED mechanism."""

    key: str
    label: str
    tau: float | None = None
    mask_ratio: float = 0.0
    full: bool = False  # full fine-tuning instead of LoRA

    @property
    def uses_slowed(self) -> bool:
        return self.tau is not None or self.mask_ratio > 0


def comparison_methods(tau: float, mask_ratio: float, full_ft: bool = False) -> list[Method]:
    """The issue's comparison: plain LoRA, each mechanism alone, both; optionally full fine-tuning."""
    methods = [
        Method("plain", "plain LoRA"),
        Method("slow", "Slow Tuning only", tau=tau),
        Method("mask", "Masking only", mask_ratio=mask_ratio),
        Method("slowed", "SLowED", tau=tau, mask_ratio=mask_ratio),
    ]
    if full_ft:
        methods += [
            Method("full", "full FT", full=True),
            Method("full-slowed", "full FT + SLowED", tau=tau, mask_ratio=mask_ratio, full=True),
        ]
    return methods


def sweep_methods(taus: list[float], mask_ratio: float) -> list[Method]:
    """Plain LoRA (tau = infinity) and SLowED at each tau: the safety-versus-reasoning frontier."""
    methods = [Method("plain", "plain LoRA")]
    methods += [Method(f"slowed-tau{t:g}", f"SLowED tau={t:g}", tau=t, mask_ratio=mask_ratio) for t in taus]
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
