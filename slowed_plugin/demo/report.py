"""``report.md`` and ``results.json``: the demo's written outputs, from the payload ``run`` builds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..files import atomic_write_text
from .families import ANCHOR_CAVEAT, has_families, section_lines, setting_line
from .families import goal_lines as family_goal_lines
from .figures import FIGURE, FRONTIER
from .goals import (
    GOAL_BENIGN,
    GOAL_GAIN_SHARE,
    GOAL_SAFETY,
    findings,
    goal_check,
    goal_lines,
    goal_table,
    reference_gain,
)
from .numerics import describe
from .summary import group_runs
from .tables import format_markdown, per_seed_table, table, timing_table

REPORT = "report.md"
RESULTS = "results.json"


def write_results(out: Path, payload: dict[str, Any]) -> Path:
    path = out / RESULTS
    atomic_write_text(path, json.dumps(payload, indent=1))
    return path


_SOURCES = {"cached": "loaded from cache", "shipped": "shipped with the package", "built": "built by this run"}


def _reference_note(base: dict[str, Any]) -> str:
    """Whether the base model has the documented weights (settings with a shipped base model only)."""
    reference = base.get("reference_sha256")
    if not reference:
        return ""
    if base["state_sha256"] == reference:
        return "; the documented weights, bit for bit"
    return f"; NOT the documented weights ({reference[:16]}...): the numbers below can differ from the docs'"


def render_report(payload: dict[str, Any]) -> str:
    """``report.md`` from the results payload (the same dict that goes to ``results.json``), section by section."""
    sections = (_title, _results, _goal, _cost, _findings, _caveats, _setting, _samples, _files)
    return "\n".join(line for section in sections for line in section(payload))


def _title(payload: dict[str, Any]) -> list[str]:
    """The title, the toy warning and the command."""
    settings = payload["settings"]
    base = payload["base_model"]
    lines = [
        "# `slowed demo`: what CoT distillation costs in safety, and what SLowED does about it",
        "",
        "> **This is a synthetic toy.** A 2-layer model of about "
        f"{base['parameters'] / 1000:.0f}k parameters, trained from scratch on CPU on a made-up world of "
        "request templates and small-number arithmetic. It shows the mechanics of the paper's setting "
        "(arXiv 2508.09666) with the product's real code paths; it says nothing about how large the effects "
        "are on real 1-2B models, real harmful prompts or a real safety judge.",
        "",
        f"Command: `{payload['command']}` (seeds {', '.join(str(s) for s in settings['seeds'])}; " + _how(payload),
        "",
        "## Results",
        "",
    ]
    return lines


def _how(payload: dict[str, Any]) -> str:
    """How the runs were made: wall time and parallel runs, or the folders a ``--merge`` combined."""
    timing = payload["timing"]
    if payload.get("merged_from"):
        folders = ", ".join(f"`{f}`" for f in payload["merged_from"])
        return f"merged by `slowed demo --merge` from {folders}, {timing['total_seconds']:.0f} s wall in all)."
    return f"{timing['total_seconds']:.0f} s wall, {timing['jobs']} parallel runs of 1 thread each)."


def _results(payload: dict[str, Any]) -> list[str]:
    """The comparison table, the figures and the per-seed table."""
    settings = payload["settings"]
    train = payload["settings"]["train"]
    rows = table(payload["summary"], payload.get("base_eval"))
    sweep = payload["mode"] == "sweep"
    lines: list[str] = []
    if payload.get("quick"):
        lines += [
            "> `--quick` is a smoke test of the pipeline: "
            f"{train['epochs']} epoch{'s' if train['epochs'] != 1 else ''} on {payload['world_sizes']['cot_train']} "
            "chains is too little distillation "
            "for the safety collapse to show. Run `slowed demo` without `--quick` for the result.",
            "",
        ]
    lines += [
        format_markdown(rows),
        "",
        "Safety: share of held-out harmful prompts "
        f"({payload['eval_sizes']['harmful']}) the model refuses, "
        "judged by the product's offline `RefusalJudge`. Reasoning: exact match of the final number on "
        f"{payload['eval_sizes']['cot']} held-out chains. Benign helpful: held-out benign requests answered with "
        f"the expected helpful sentence ({payload['eval_sizes']['benign']} prompts). "
        + (
            "Brackets: min-max over seeds."
            if len(settings["seeds"]) > 1
            else "Brackets: Wilson 95 % interval of the single run."
        ),
        "",
        f"![safety and reasoning per epoch]({FIGURE})",
        "",
    ]
    if sweep:
        lines += [f"![safety against reasoning, one point per tau]({FRONTIER})", ""]
    lines += ["### Per seed", "", format_markdown(per_seed_table(payload["runs"])), ""]
    return lines


def _goal(payload: dict[str, Any]) -> list[str]:
    """The goal check against plain LoRA (with the safety anchor methods)."""
    if has_families(payload["runs"]):  # the hard world: safety per family and the goal relative to the base
        return section_lines(payload)
    summary = payload["summary"]
    lines: list[str] = []
    goals = goal_check(summary)
    if goals:
        gain = reference_gain(summary)
        lines += [
            "### The goal: keep safety and the reasoning gain",
            "",
            f"Gain: last-epoch reasoning minus the base model's ({payload['base_eval']['reasoning_accuracy'] * 100:.1f} %); "
            f"plain LoRA's mean gain over the seeds is {gain * 100:.1f} points. Goal (issue 15): safety >= "
            f"{GOAL_SAFETY:.2f} on every seed, at least {GOAL_GAIN_SHARE * 100:.0f} % of plain LoRA's mean gain, "
            f"mean benign helpfulness >= {GOAL_BENIGN:.2f}. Per seed: the method's gain over plain LoRA's gain on "
            "the same seed, in %."
            + (
                " With `--quick` the gains are a few points and these shares are noise." if payload.get("quick") else ""
            ),
            "",
            format_markdown(goal_table(goals)),
            "",
        ]
    return lines


def _cost(payload: dict[str, Any]) -> list[str]:
    """What each run cost."""
    summary = payload["summary"]
    lines: list[str] = []
    timing_rows = timing_table(summary)
    if len(timing_rows) > 1:
        lines += [
            "### What each run cost",
            "",
            format_markdown(timing_rows),
            "",
            "Mean over seeds, on this machine, with the other runs of this demo (and whatever else runs there) "
            "sharing the CPU: rough, not a benchmark. Trainer build: building the `SFTTrainer`, which includes the "
            "anchor's one-off generation of the base model's answers. Train: `trainer.train()`, the steps and the "
            "per-epoch evaluations (the same for every method). Step time: the optimizer steps alone "
            "(step begin to step end). Refusal share: the harmful anchor answers the refusal judge calls refusals.",
            "",
        ]
    return lines


def _findings(payload: dict[str, Any]) -> list[str]:
    """The sentences computed from the numbers."""
    summary = payload["summary"]
    lines: list[str] = []
    lines += ["## What the runs found", ""]
    found = findings(summary)
    lines += [f"- {f}" for f in found] or ["- (no plain LoRA reference in this run)"]
    hard = has_families(payload["runs"])
    lines += [f"- {f}" for f in (family_goal_lines(payload["runs"]) if hard else goal_lines(summary))]
    for entry in summary.values():
        if entry.get("harmful_answers"):
            shares = entry["harmful_answers"]
            lines.append(
                f"- **{entry['label']}**, answers to held-out harmful prompts after the last epoch: "
                f"{shares['refusal'] * 100:.0f} % refusals, {shares['complies'] * 100:.0f} % compliance in the "
                f'helpful template ("sure . to <verb> <object> , ..."), {shares["rationale"] * 100:.0f} % '
                f"rationale-style text, {shares['other'] * 100:.0f} % other text."
            )
    for entry in summary.values():
        if entry.get("dropped_tokens"):
            parts = [
                f"{when.replace('_', ' ')}: "
                + ", ".join(f"{share * 100:.0f} % {kind}" for kind, share in entry["dropped_tokens"][when].items())
                for when in ("first_epoch", "last_epoch")
            ]
            lines.append(
                f"- What **{entry['label']}** dropped (k = {entry['mask_ratio']:g}; {payload.get('inspected_rows', 64)} "
                f"training rows read with the product's mask inspector after the epoch): {'; '.join(parts)}."
            )
    lines += [
        "",
        "These sentences are computed from the numbers above, not written in advance: a difference is "
        "called a difference only when the spreads do not overlap.",
        "",
    ]
    return lines


def _caveats(payload: dict[str, Any]) -> list[str]:
    """What this toy does and does not show."""
    summary = payload["summary"]
    lines = [
        "## What this toy does and does not show",
        "",
        "- The safety ratio is a refusal rate: an answer counts as safe when it contains a refusal phrase. "
        "The world has no harmful content to produce, so an unsafe answer here is a lost refusal: compliance in "
        "the helpful template, rationale-style text, or degenerate text (the shares are listed above). A guard "
        "model such as the paper's WalledGuard-C might call much of the degenerate text safe.",
        "- It does show, through a stock TRL `SFTTrainer` with `SLowEDCallback` registered as the README says, "
        "how a model's refusals can erode while it is distilled on chain-of-thought data that contains no "
        "harmful prompt, and how each SLowED mechanism changes the safety and reasoning curves here.",
        "- The forgetting in this world is general, not safety-specific: the benign-helpfulness column falls "
        "with safety, because the distilled rationales teach one answer style for every request.",
        "- It does not show effect sizes for real models: safety and the new skill compete here for the few "
        "weights of a 2-layer model, whereas the paper's claim is that a 1-2B model has room to learn "
        "reasoning in directions that leave refusal intact. The refusal judge is a phrase match (see "
        "docs/evaluation.md); it is exact for this world's one refusal sentence but weak on real models.",
        "- tau is in this model's units (per-layer ||ΔW||_F of a hidden-128 model); the paper's values "
        "(up to 10) do not transfer. `slowed demo --sweep-tau` draws the frontier a user chooses tau on.",
    ]
    if any(e.get("anchor_mode") not in (None, "placebo") for e in summary.values()) and world_is_hard(payload):
        lines.append(ANCHOR_CAVEAT)
    elif any(e.get("anchor_mode") not in (None, "placebo") for e in summary.values()):
        lines += [
            "- The safety anchor replays the base model's own greedy answers to the world's training-split "
            'harmful and benign requests (never the held-out prompts measured here). In this toy "safe" is one '
            "refusal sentence, and the base model's answers are that sentence: the anchor replays the very "
            "answer the judge looks for, on prompts that share verbs, objects and templates with the held-out "
            "ones. On a real model the anchor is the base model's own refusal style, imperfect as it is: that is "
            "the point and the limit. The placebo (as many extra rows, duplicated distillation chains) separates "
            "the answers' effect from the changed data.",
        ]
    return lines


def world_is_hard(payload: dict[str, Any]) -> bool:
    return payload["settings"]["world"].get("world") == "hard"


def _setting(payload: dict[str, Any]) -> list[str]:
    """The world, the base model, the distillation and the evaluation."""
    summary = payload["summary"]
    train = payload["settings"]["train"]
    world = payload["settings"]["world"]
    base = payload["base_model"]
    lines: list[str] = []
    lines += [
        "",
        "## Setting",
        "",
        f"- World (seed {world['seed']}): {payload['world_sizes']['harmful_train']} harmful and "
        f"{payload['world_sizes']['benign_train']} benign training requests, "
        f"{payload['world_sizes']['arithmetic']} single arithmetic steps and "
        f"{payload['world_sizes']['worked']} two-step worked examples for the base model; "
        f"{payload['world_sizes']['cot_train']} distilled chains of {world['min_steps']}-{world['max_steps']} "
        f"steps over numbers 0-{world['max_number']}, each rationale opening with "
        f'"{world["rationale_opener"]}", no harmful prompt among them. Held-out harmful and benign prompts use '
        "verb/object pairs never seen in training; held-out chains are disjoint from every training chain.",
        *([setting_line(world)] if world_is_hard(payload) else []),
        f"- Base model: {base['parameters']:,} parameters, {base['settings']['steps']} steps of batch "
        f"{base['settings']['batch_size']} ({_SOURCES[base['source']]}: "
        f"`{base['path']}`, key {base['key']}, weights sha256 {base['state_sha256'][:16]}...)"
        + _reference_note(base)
        + ".",
        "- Numerics: " + (describe(payload["numerics"]) if payload.get("numerics") else "not recorded."),
        f"- Distillation: {train['epochs']} epochs, batch {train['batch_size']}, AdamW, constant LR "
        f"{train['learning_rate']:g} after {train['warmup_steps']} warm-up steps; LoRA rank {train['lora_r']}, "
        f"alpha {train['lora_alpha']}, all linear layers"
        + (f"; full fine-tuning LR {train['full_learning_rate']:g}" if payload.get("full_ft") else "")
        + ". SLowED: `SLowEDCallback(tau=..., mask_ratio=...)` with its defaults (per-layer tau, projection "
        "after every epoch, masking scope `sequence`). The demo's default tau, 1.5, is the largest tau of the "
        "seed-0 sweep whose last-epoch safety stayed at or above 95 %; it was chosen on these held-out prompts, "
        "so only other seeds are an unselected check. k = 0.2 is the product's example value."
        + (
            " Safety anchor: `SLowEDCallback(..., safety_anchor={prompts, benign_prompts, mode, ratio})` with the "
            f"world's {payload['world_sizes']['harmful_train']} training harmful and "
            f"{payload['world_sizes']['benign_train']} training benign requests, `use_chat_template: False`, "
            "the product's other defaults; the placebo adds `replay_row_count(rows, ratio)` duplicated chains."
            if any(e.get("anchor_mode") for e in summary.values())
            else ""
        ),
        f"- Evaluation: greedy answers from `generate_answers` (up to {payload['tokens']['safety']} new tokens for "
        f"harmful prompts, {payload['tokens']['cot']} for chains); `SafetyMonitorCallback` measures safety "
        "before training and after every epoch.",
        "",
        "## Sample answers after the last epoch",
        "",
    ]
    return lines


def _samples(payload: dict[str, Any]) -> list[str]:
    """Sample answers, one run per method."""
    lines: list[str] = []
    for group in group_runs(payload["runs"]).values():
        run = group[0]
        lines.append(f"**{run['label']}** (seed {run['seed']})")
        lines.append("")
        for question, answer in run["samples"]["harmful"][:2]:
            lines.append(f"- `{question}` → `{answer}`")
        for question, answer, value in run["samples"]["cot"][:2]:
            lines.append(f"- `{question}` → `{answer}` (expected {value})")
        lines.append("")
    return lines


def _files(payload: dict[str, Any]) -> list[str]:
    """The files beside the report."""
    sweep = payload["mode"] == "sweep"
    lines: list[str] = []
    lines += [
        "## Files",
        "",
        f"- `{RESULTS}`: every run's per-epoch measurements, final numbers, settings and timings.",
        f"- `{FIGURE}`" + (f", `{FRONTIER}`" if sweep else "") + ": the figures above.",
        "- `logs/`: each run's trainer output.",
        "",
    ]
    return lines
