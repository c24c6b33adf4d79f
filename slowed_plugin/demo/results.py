"""``results.json``: its schema, written down as types, and the payload ``slowed demo`` (and ``--merge``) builds.

The report (:mod:`.report`), the tables and ``--merge`` read these keys; a run's record is what
:func:`~slowed_plugin.demo.run.run_one` returns plus the worker's ``numerics``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypedDict

FORMAT = 1


class EpochRecord(TypedDict, total=False):
    """One evaluation of a run (epoch 0: before training)."""

    epoch: int
    step: int
    safety_ratio: float
    safety_ci: list[float]
    reasoning_accuracy: float
    max_delta_norm: float
    mean_delta_norm: float
    dropped_tokens: dict[str, Any]
    loss: float
    slowed_masked_fraction: float
    slowed_entropy_threshold: float
    safety_by_family: dict[str, dict[str, float]]  # the hard world


class RunRecord(TypedDict, total=False):
    """One method with one seed."""

    name: str  # "<method>-seed<seed>"
    method: str
    label: str
    seed: int
    tau: float | None
    mask_ratio: float
    full_fine_tuning: bool
    anchor_mode: str | None  # "replay", "gradient", "placebo" or None
    anchor_ratio: float | None
    anchor_text: str
    learning_rate: float
    anchor: dict[str, Any] | None  # rows, refusal share, projected steps, samples (anchor and placebo runs)
    steps: int
    timing: dict[str, float]  # build_seconds, train_seconds, step_seconds
    epochs: list[EpochRecord]
    final: dict[str, Any]  # last evaluation with intervals, benign helpfulness, kinds of harmful answers
    before: dict[str, Any]  # the base model's numbers, measured by this run
    samples: dict[str, list[list[Any]]]
    answers: dict[str, list[str]]  # every answer of the last evaluation
    seconds: float
    numerics: dict[str, Any]  # where the run was computed (numerics.numerics_record)


class SettingsRecord(TypedDict):
    world: dict[str, Any]  # WorldSettings or HardWorldSettings fields
    base: dict[str, Any]  # BaseSettings fields
    train: dict[str, Any]  # TrainSettings fields
    methods: list[dict[str, Any]]  # Method fields
    seeds: list[int]


class BaseModelRecord(TypedDict):
    path: str
    key: str  # BaseSettings.key(): the cache key
    source: str  # "cached", "shipped" (the package's copy) or "built" (by this run)
    parameters: int
    state_sha256: str
    reference_sha256: str | None  # the documented (shipped) weights of these settings; None for other settings
    numerics: dict[str, Any] | None
    settings: dict[str, Any]
    train_seconds: float


class TimingRecord(TypedDict):
    total_seconds: float
    base_model_seconds: float
    runs_seconds: float
    jobs: int | None  # None for a merge


class Results(TypedDict, total=False):
    format: int
    mode: str  # "comparison" or "sweep"
    command: str
    synthetic_toy: bool
    settings: SettingsRecord
    full_ft: bool
    quick: bool
    world_sizes: dict[str, int]
    eval_sizes: dict[str, int]
    tokens: dict[str, int]
    inspected_rows: int
    base_model: BaseModelRecord
    base_eval: dict[str, Any]
    numerics: dict[str, Any]
    summary: dict[str, Any]  # per method: summary.summarize
    findings: list[str]
    goal: list[dict[str, Any]]
    runs: list[RunRecord]
    timing: TimingRecord
    merged_from: list[str]  # --merge: the folders combined


def derived(runs: list[RunRecord]) -> dict[str, Any]:
    """What the payload computes from its runs: the summary, the findings, the goal check, the base model's
    numbers and where they were made."""
    from . import families as fam
    from .goals import findings, goal_check
    from .summary import summarize

    summary = summarize(runs)  # type: ignore[arg-type]
    return {
        "base_eval": runs[0]["before"],
        # Where the numbers were made (CPU, ATen dispatch, MKL branch): equal on every run's worker.
        "numerics": runs[0]["numerics"],
        "summary": summary,
        "findings": findings(summary),
        # The hard world's goal is relative to the base model's own safety per family.
        "goal": fam.relative_goal_check(runs) if fam.has_families(runs) else goal_check(summary),  # type: ignore[arg-type]
    }


def build_payload(
    command: str,
    sweep: bool,
    settings: tuple[Any, Any, Any, list, list[int]],
    base: tuple[str | Path, str],
    runs: list[RunRecord],
    timing: TimingRecord,
    flags: dict[str, bool],
) -> Results:
    """``results.json`` of one ``slowed demo``: ``settings`` is (world, base model, training, methods, seeds),
    ``base`` the base model's folder and source, ``flags`` ``full_ft`` and ``quick``."""
    from .base_model import load_meta, reference_sha256
    from .metrics import COT_TOKENS, INSPECTED_ROWS, SAFETY_TOKENS, eval_sets
    from .world import build_world

    world_settings, base_settings, train, methods, seeds = settings
    base_dir, base_source = base
    meta = load_meta(base_dir)
    world = build_world(world_settings)
    sets = eval_sets(world, train)
    payload: Results = {
        "format": FORMAT,
        "mode": "sweep" if sweep else "comparison",
        "command": command,
        "synthetic_toy": True,
        "settings": {
            "world": world_settings.__dict__,
            "base": meta["settings"],
            "train": train.__dict__,
            "methods": [m.__dict__ for m in methods],
            "seeds": seeds,
        },
        "full_ft": flags["full_ft"],
        "quick": flags["quick"],
        "world_sizes": {
            **{f"{k}_train" if k in ("harmful", "benign") else k: len(v) for k, v in world.base.items()},
            "cot_train": len(sets.train),
        },
        "eval_sizes": {"harmful": len(sets.harmful), "cot": len(sets.cot), "benign": len(sets.benign)},
        "tokens": {"safety": SAFETY_TOKENS, "cot": COT_TOKENS},
        "inspected_rows": INSPECTED_ROWS,
        "base_model": {
            "path": str(base_dir),
            "key": meta["key"],
            "source": base_source,
            "parameters": meta["parameters"],
            "state_sha256": meta["state_sha256"],
            "reference_sha256": reference_sha256(base_settings),
            "numerics": meta.get("numerics"),
            "settings": meta["settings"],
            "train_seconds": meta["train_seconds"],
        },
        **derived(runs),  # type: ignore[typeddict-item]
        "runs": runs,
        "timing": timing,
    }
    return payload
