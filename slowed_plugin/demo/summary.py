"""The demo's runs summed up per method: means and spreads over seeds, Wilson intervals for one seed."""

from __future__ import annotations

import statistics
from collections import OrderedDict
from typing import Any

# (key in a run's "final", column title, format)
COLUMNS = (
    ("safety_ratio", "safety (last epoch)", "pct"),
    ("mean_safety_ratio", "safety (mean of epochs)", "pct"),
    ("reasoning_accuracy", "reasoning (last epoch)", "pct"),
    ("benign_helpful", "benign helpful", "pct"),
)


def group_runs(runs: list[dict[str, Any]]) -> OrderedDict[str, list[dict[str, Any]]]:
    """Runs by method, in the order methods first appear."""
    groups: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
    for run in runs:
        groups.setdefault(run["method"], []).append(run)
    return groups


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method: final numbers over seeds (mean, min, max, std) and the per-epoch curves."""
    out: dict[str, Any] = {}
    for key, group in group_runs(runs).items():
        first = group[0]
        finals = {col: _stats([r["final"][col] for r in group]) for col, _, _ in COLUMNS}
        n_epochs = min(len(r["epochs"]) for r in group)
        curves = {
            metric: [_stats([r["epochs"][i][metric] for r in group]) for i in range(n_epochs)]
            for metric in ("safety_ratio", "reasoning_accuracy")
        }
        dropped = None
        if all(r["epochs"][-1].get("dropped_tokens") for r in group) and n_epochs > 1:
            dropped = {
                when: {
                    kind: statistics.fmean(r["epochs"][index]["dropped_tokens"][kind] for r in group)
                    for kind in group[0]["epochs"][index]["dropped_tokens"]
                }
                for when, index in (("first_epoch", 1), ("last_epoch", n_epochs - 1))
            }
        answers = None
        if all(r["final"].get("harmful_answers") for r in group):
            answers = {
                kind: statistics.fmean(r["final"]["harmful_answers"][kind] for r in group)
                for kind in first["final"]["harmful_answers"]
            }
        timing = None
        if all(r.get("timing") for r in group):
            timing = {name: _stats([r["timing"][name] for r in group]) for name in first["timing"]}
            timing["seconds"] = _stats([r["seconds"] for r in group])
            timing["steps"] = _stats([r["steps"] for r in group])
        out[key] = {
            "label": first["label"],
            "anchor_text": first.get("anchor_text", "-"),
            "anchor_mode": first.get("anchor_mode"),
            "anchor": _anchor_stats(group),
            "timing": timing,
            "gains": {
                r["seed"]: r["final"]["reasoning_accuracy"] - r["epochs"][0]["reasoning_accuracy"] for r in group
            },
            "safety_by_seed": {r["seed"]: r["final"]["safety_ratio"] for r in group},
            "benign_by_seed": {r["seed"]: r["final"]["benign_helpful"] for r in group},
            "harmful_answers": answers,
            "dropped_tokens": dropped,
            "tau": first["tau"],
            "mask_ratio": first["mask_ratio"],
            "full_fine_tuning": first["full_fine_tuning"],
            "seeds": [r["seed"] for r in group],
            "final": finals,
            "epochs": [r["epoch"] for r in first["epochs"][:n_epochs]],
            "curves": curves,
            # One seed: the Wilson intervals of that run's last-epoch numbers.
            "safety_ci": first["final"]["safety_ci"] if len(group) == 1 else None,
            "reasoning_ci": first["final"]["reasoning_ci"] if len(group) == 1 else None,
        }
    return out


def _anchor_stats(group: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Rows, refusal share, projected steps and generation time of a method's anchor (or placebo), over seeds."""
    records = [r.get("anchor") for r in group]
    if not all(records):
        return None
    out: dict[str, Any] = {"mode": records[0]["mode"]}
    for name in ("rows", "refusal_share", "projected_steps", "generation_seconds"):
        values = [rec.get(name) for rec in records]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[name] = _stats([float(v) for v in values])
    return out


def interval(entry: dict[str, Any], column: str) -> tuple[float, float]:
    """The spread a comparison uses: min..max over seeds, or the Wilson interval of a single run."""
    stats = entry["final"][column]
    if len(entry["seeds"]) > 1:
        return stats["min"], stats["max"]
    ci = {"safety_ratio": entry["safety_ci"], "reasoning_accuracy": entry["reasoning_ci"]}.get(column)
    return tuple(ci) if ci else (stats["mean"], stats["mean"])
