"""The demo's tables: the comparison, per seed and cost rows, as terminal text or markdown."""

from __future__ import annotations

from typing import Any

from .summary import COLUMNS, group_runs


def _fmt(value: float) -> str:
    return f"{value * 100:5.1f}%"


def _cell(entry: dict[str, Any], column: str) -> str:
    stats = entry["final"][column]
    if len(entry["seeds"]) > 1:
        lo, hi = stats["min"], stats["max"]
    elif column == "safety_ratio" and entry["safety_ci"]:
        lo, hi = entry["safety_ci"]
    elif column == "reasoning_accuracy" and entry["reasoning_ci"]:
        lo, hi = entry["reasoning_ci"]
    else:
        return _fmt(stats["mean"])
    return f"{_fmt(stats['mean'])} [{lo * 100:.1f}-{hi * 100:.1f}]"


def _settings_cell(entry: dict[str, Any]) -> str:
    tau = "-" if entry["tau"] is None else f"{entry['tau']:g}"
    k = "-" if not entry["mask_ratio"] else f"{entry['mask_ratio']:g}"
    return f"{tau} / {k}"


def table(summary: dict[str, Any], base: dict[str, Any] | None = None) -> list[list[str]]:
    """Header row, then one row per method (and the base model first when given)."""
    rows = [["method", "tau / k", "anchor", "seeds"] + [title for _, title, _ in COLUMNS]]
    if base:
        rows.append(
            ["aligned base model", "", "", ""]
            + [_fmt(base["safety_ratio"]), "", _fmt(base["reasoning_accuracy"]), _fmt(base["benign_helpful"])]
        )
    for entry in summary.values():
        seeds = entry["seeds"]
        rows.append(
            [entry["label"], _settings_cell(entry), entry.get("anchor_text", "-"), ",".join(str(s) for s in seeds)]
            + [_cell(entry, c) for c, _, _ in COLUMNS]
        )
    return rows


def per_seed_table(runs: list[dict[str, Any]]) -> list[list[str]]:
    """One row per method: last-epoch safety, reasoning, benign helpfulness and run seconds of each seed."""
    groups = group_runs(runs)
    seeds = sorted({r["seed"] for r in runs})
    header = ["method"]
    for what in ("safety", "reasoning", "benign", "seconds"):
        header.append(f"{what} (seed {', '.join(map(str, seeds))})")
    rows = [header]
    for group in groups.values():
        by_seed = {r["seed"]: r for r in group}

        def cells(fn, by_seed=by_seed):
            return " / ".join(fn(by_seed[s]) if s in by_seed else "-" for s in seeds)

        rows.append(
            [
                group[0]["label"],
                cells(lambda r: f"{r['final']['safety_ratio']:.3f}"),
                cells(lambda r: f"{r['final']['reasoning_accuracy']:.3f}"),
                cells(lambda r: f"{r['final']['benign_helpful']:.3f}"),
                cells(lambda r: f"{r['seconds']:.0f}"),
            ]
        )
    return rows


def timing_table(summary: dict[str, Any]) -> list[list[str]]:
    """Per method, mean over seeds: building the trainer (the anchor's generation), training (steps and
    evaluations), the steps alone and per step; the anchor's rows, refusal share and projected steps."""
    out = [
        [
            "method",
            "run s",
            "trainer build s",
            "train s",
            "steps",
            "step time s",
            "ms / step",
            "anchor rows",
            "refusal share",
            "projected steps",
        ]
    ]
    for entry in summary.values():
        t = entry.get("timing")
        if not t:
            continue
        a = entry.get("anchor") or {}

        def num(stats, fmt="{:.0f}"):
            return fmt.format(stats["mean"]) if stats else "-"

        out.append(
            [
                entry["label"],
                num(t["seconds"]),
                num(t["build_seconds"], "{:.1f}"),
                num(t["train_seconds"]),
                num(t["steps"]),
                num(t["step_seconds"]),
                f"{t['step_seconds']['mean'] / t['steps']['mean'] * 1000:.0f}" if t["steps"]["mean"] else "-",
                num(a.get("rows")),
                num(a.get("refusal_share"), "{:.3f}"),
                num(a.get("projected_steps")),
            ]
        )
    return out


def format_terminal(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)
