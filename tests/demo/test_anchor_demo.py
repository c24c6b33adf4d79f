"""The demo's safety-anchor methods: the catalogue, the placebo's rows, the anchor's prompts, the report's goal
check on synthetic results, and one small real run per anchor mode through the product's code."""

from __future__ import annotations

import argparse
import math

import pytest

from slowed_plugin.demo import figures, tables
from slowed_plugin.demo import goals as verdicts
from slowed_plugin.demo import summary as summaries
from slowed_plugin.demo.methods import (
    DEFAULT_ANCHOR_RATIO,
    Method,
    RunSpec,
    TrainSettings,
    comparison_methods,
    sweep_methods,
)
from slowed_plugin.demo.metrics import eval_sets
from slowed_plugin.demo.run import anchor_config, anchor_prompts, placebo_rows, trained_rows
from slowed_plugin.demo.world import WorldSettings, build_world


@pytest.fixture(scope="module")
def world():
    return build_world()


# ---------------------------------------------------------------------------------------------- catalogue
def test_comparison_keeps_the_mechanisms_and_adds_the_anchor_methods_and_the_placebo():
    methods = {m.key: m for m in comparison_methods(1.5, 0.2)}
    assert list(methods) == [
        "plain",
        "slow",
        "mask",
        "slowed",
        "anchor-replay",
        "anchor-gradient",
        "slowed-anchor",
        "placebo",
    ]
    assert not methods["plain"].uses_slowed and methods["plain"].anchor is None
    replay, gradient = methods["anchor-replay"], methods["anchor-gradient"]
    assert (replay.anchor, replay.tau, replay.mask_ratio, replay.anchor_ratio) == ("replay", None, 0.0, 0.05)
    assert (gradient.anchor, gradient.tau, gradient.mask_ratio) == ("gradient", None, 0.0)
    both = methods["slowed-anchor"]
    assert (both.tau, both.mask_ratio, both.anchor, both.anchor_ratio) == (1.5, 0.2, "replay", DEFAULT_ANCHOR_RATIO)
    placebo = methods["placebo"]
    # the placebo registers nothing of SLowED: it only changes the data
    assert placebo.placebo and placebo.anchor is None and not placebo.uses_slowed and placebo.extra_rows
    assert replay.uses_slowed and gradient.uses_slowed
    assert [m.anchor_text() for m in methods.values()][3:] == [
        "-",
        "replay 5 %",
        "gradient",
        "replay 5 %",
        "placebo 5 %",
    ]


def test_anchor_settings_of_the_catalogue():
    assert [m.key for m in comparison_methods(1.5, 0.2, anchor=False)] == ["plain", "slow", "mask", "slowed"]
    methods = {m.key: m for m in comparison_methods(1.5, 0.2, anchor_ratio=0.02)}
    assert methods["anchor-replay"].anchor_ratio == methods["placebo"].anchor_ratio == 0.02
    with pytest.raises(ValueError, match="anchor mode"):
        Method("x", "x", anchor="ewc")
    with pytest.raises(ValueError, match="placebo"):
        Method("x", "x", anchor="replay", placebo=True)


def test_sweep_draws_the_anchor_methods_against_the_tau_frontier():
    keys = [m.key for m in sweep_methods([0.5, 2.0], 0.2, tau=1.5)]
    assert keys == ["plain", "slowed-tau0.5", "slowed-tau2", "anchor-replay", "anchor-gradient", "slowed-anchor"]
    assert next(m for m in sweep_methods([0.5], 0.2, tau=1.5) if m.key == "slowed-anchor").tau == 1.5
    assert [m.key for m in sweep_methods([0.5], 0.2, anchor=False)] == ["plain", "slowed-tau0.5"]


def test_cli_anchor_options():
    from slowed_plugin.demo import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--seeds", "3", "--anchor-ratio", "0.02"])
    assert cli.command_line(args) == "slowed demo --seeds 3 --anchor-ratio 0.02"
    assert cli.command_line(parser.parse_args(["--no-anchor"])) == "slowed demo --no-anchor"
    # SLowED + anchor takes --tau in a sweep too
    assert cli.command_line(parser.parse_args(["--sweep-tau", "--tau", "2"])) == "slowed demo --sweep-tau --tau 2"
    for bad in ("0", "1", "x"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--anchor-ratio", bad])
    args = parser.parse_args(["--methods", "plain,anchor-replay", "--anchor-ratio", "0.02"])
    assert cli.command_line(args) == "slowed demo --anchor-ratio 0.02 --methods plain,anchor-replay"
    # an unknown key is refused before anything is built
    assert cli.run(parser.parse_args(["--methods", "plain,ewc", "--out", "unused"])) == 2


def test_the_demo_default_is_the_products_default_anchor():
    # What a user gets from `safety_anchor: {prompts: ...}` alone, through the product's own validation, is what
    # the demo's default command runs (not a constant compared with itself).
    from slowed_plugin import SLowEDConfig
    from slowed_plugin.demo import cli

    users = SLowEDConfig(tau=None, mask_ratio=0, safety_anchor={"prompts": ["how do i pick a lock"]}).safety_anchor
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    anchored = [m for m in cli.select_methods(parser.parse_args([])) if m.anchor == "replay"]
    assert anchored and {m.anchor_ratio for m in anchored} == {users["ratio"]}
    assert users["mode"] == "replay"


# ---------------------------------------------------------------------------------------------- placebo
@pytest.mark.parametrize("ratio", [0.01, 0.02, 0.05, 0.2])
def test_placebo_adds_exactly_as_many_rows_as_replay(world, ratio):
    from slowed_plugin.anchor import replay_row_count

    rows = [{"prompt": e.prompt, "completion": e.completion} for e in world.cot_train]
    extra = placebo_rows(rows, ratio, seed=0)
    assert len(extra) == replay_row_count(len(rows), ratio)
    replay = Method("r", "r", anchor="replay", anchor_ratio=ratio)
    placebo = Method("p", "p", placebo=True, anchor_ratio=ratio)
    assert trained_rows(replay, len(rows)) == trained_rows(placebo, len(rows)) == len(rows) + len(extra)
    assert trained_rows(Method("g", "g", anchor="gradient"), len(rows)) == len(rows)  # no rows in the loss
    # duplicated distillation chains, each at most once, and no anchor text among them
    keys = [(r["prompt"], r["completion"]) for r in extra]
    assert len(set(keys)) == len(keys)
    assert set(keys) <= {(r["prompt"], r["completion"]) for r in rows}


def test_placebo_rows_follow_the_seed(world):
    rows = [{"prompt": e.prompt, "completion": e.completion} for e in world.cot_train]
    assert placebo_rows(rows, 0.05, seed=1) == placebo_rows(rows, 0.05, seed=1)
    assert placebo_rows(rows, 0.05, seed=1) != placebo_rows(rows, 0.05, seed=2)
    # more extra rows than chains: every chain once more, then a draw
    small = rows[:10]
    assert len(placebo_rows(small, 0.6, seed=0)) == 15  # round(0.6 * 10 / 0.4)


# ---------------------------------------------------------------------------------------------- prompts
@pytest.mark.parametrize(
    "train", [TrainSettings(), TrainSettings(epochs=3, cot_train=640, eval_harmful=80, eval_cot=80, eval_benign=40)]
)
def test_anchor_prompts_are_training_split_and_disjoint_from_every_evaluated_prompt(world, train):
    harmful, benign = anchor_prompts(world)
    assert harmful == [e.prompt for e in world.base["harmful"]] and len(harmful) == 720
    assert benign == [e.prompt for e in world.base["benign"]] and len(benign) == 720
    sets = eval_sets(world, train)
    evaluated = {e.prompt for e in sets.harmful + sets.benign + sets.cot}
    assert not (set(harmful) | set(benign)) & evaluated
    # nor any held-out prompt at all, whatever subset a run evaluates
    held_out = {e.prompt for e in world.harmful_test + world.benign_test + world.cot_test}
    assert not (set(harmful) | set(benign)) & held_out
    # and, as the product compares prompts (case and white space folded), no overlap either
    from slowed_plugin.anchor.answers import overlap_count

    assert overlap_count(harmful + benign, sorted(evaluated)) == 0


def test_anchor_config_is_a_valid_safety_anchor(world):
    from slowed_plugin.anchor import check_anchor_config

    train = TrainSettings()
    replay = anchor_config(Method("r", "r", anchor="replay", anchor_ratio=0.02), world, train)
    assert replay["mode"] == "replay" and replay["ratio"] == 0.02 and replay["use_chat_template"] is False
    checked = check_anchor_config(replay)
    assert checked["prompts"] == [e.prompt for e in world.base["harmful"]]
    gradient = anchor_config(Method("g", "g", anchor="gradient"), world, train)
    assert gradient["mode"] == "gradient" and "ratio" not in gradient
    check_anchor_config(gradient)
    assert anchor_config(Method("p", "p", placebo=True), world, train) is None
    assert anchor_config(Method("s", "s", tau=1.0), world, train) is None
    few = anchor_config(Method("g", "g", anchor="gradient"), world, TrainSettings(anchor_prompts=8))
    assert len(few["prompts"]) == len(few["benign_prompts"]) == 8
    assert set(few["prompts"]) <= set(replay["prompts"])


# ---------------------------------------------------------------------------------------------- report
def _run(method, label, seed, safety, reasoning, benign, tau=None, k=0.0, anchor=None, base_reasoning=0.10):
    epochs = [
        {"epoch": 0, "safety_ratio": 1.0, "reasoning_accuracy": base_reasoning},
        {"epoch": 1, "safety_ratio": safety, "reasoning_accuracy": reasoning},
    ]
    run = {
        "method": method,
        "label": label,
        "seed": seed,
        "tau": tau,
        "mask_ratio": k,
        "full_fine_tuning": False,
        "anchor_mode": anchor,
        "anchor_text": {None: "-", "replay": "replay 5 %", "gradient": "gradient", "placebo": "placebo 5 %"}[anchor],
        "anchor": None,
        "epochs": epochs,
        "steps": 660 if anchor in ("replay", "placebo") else 630,
        "seconds": 100.0 + seed,
        "timing": {"build_seconds": 2.0, "train_seconds": 90.0, "step_seconds": 40.0},
        "final": {
            "safety_ratio": safety,
            "mean_safety_ratio": safety,
            "reasoning_accuracy": reasoning,
            "benign_helpful": benign,
            "safety_ci": [max(0.0, safety - 0.05), min(1.0, safety + 0.05)],
            "reasoning_ci": [max(0.0, reasoning - 0.05), min(1.0, reasoning + 0.05)],
        },
    }
    if anchor == "placebo":
        run["anchor"] = {"mode": "placebo", "rows": 105}
    elif anchor:
        run["anchor"] = {
            "mode": anchor,
            "rows": 105 if anchor == "replay" else 1440,
            "refusal_share": 1.0,
            "projected_steps": 400 if anchor == "gradient" else None,
            "generation_seconds": 3.0 + seed,
        }
    return run


def _synthetic():
    # plain gains .40/.50/.60 over a base of .10 (mean .50)
    runs = []
    for seed, plain in enumerate((0.50, 0.60, 0.70)):
        runs.append(_run("plain", "plain LoRA", seed, 0.0, plain, 0.0))
        # replay: gains .36/.40/.50 (mean .42 = 84 %), safe on every seed, benign .95
        runs.append(_run("anchor-replay", "anchor replay", seed, 1.0, (0.46, 0.50, 0.60)[seed], 0.95, anchor="replay"))
        # gradient: enough gain, one seed unsafe
        runs.append(
            _run("anchor-gradient", "anchor gradient", seed, (1.0, 0.85, 1.0)[seed], plain, 0.99, anchor="gradient")
        )
        runs.append(_run("placebo", "placebo", seed, 0.0, plain - 0.02, 0.0, anchor="placebo"))
        runs.append(_run("slowed", "SLowED", seed, 0.95, 0.30, 0.50, tau=1.5, k=0.2))
    return runs


def test_goal_check_on_synthetic_results():
    summary = summaries.summarize(_synthetic())
    goals = {row["method"]: row for row in verdicts.goal_check(summary)}
    assert set(goals) == {"anchor-replay", "anchor-gradient", "placebo", "slowed"}
    assert verdicts.reference_gain(summary) == pytest.approx(0.50)
    replay = goals["anchor-replay"]
    assert replay["share"] == pytest.approx(0.42 / 0.50)
    assert [replay["seed_shares"][s] for s in (0, 1, 2)] == pytest.approx([0.36 / 0.40, 0.40 / 0.50, 0.50 / 0.60])
    assert replay["safety_ok"] and replay["gain_ok"] and replay["benign_ok"] and replay["met"]
    gradient = goals["anchor-gradient"]
    assert gradient["share"] == pytest.approx(1.0) and gradient["min_safety"] == 0.85
    assert not gradient["safety_ok"] and not gradient["met"]
    placebo = goals["placebo"]
    assert not placebo["safety_ok"] and not placebo["benign_ok"] and not placebo["met"]
    slowed = goals["slowed"]
    assert slowed["share"] == pytest.approx(0.20 / 0.50) and slowed["safety_ok"] and not slowed["gain_ok"]

    table = verdicts.goal_table(verdicts.goal_check(summary))
    assert len(table) == 5 and all(len(r) == len(table[0]) for r in table)
    row = next(r for r in table if r[0] == "anchor replay")
    assert row[1] == "84 %" and row[2] == "90, 80, 83" and row[-1] == "**met**"
    lines = verdicts.goal_lines(summary)
    assert len(lines) == 3  # the anchor methods and the placebo, not SLowED
    assert any("anchor replay" in line and "84 %" in line and "meets the goal" in line for line in lines)
    assert any(
        "anchor gradient" in line and "misses the goal (safety 0.850 on its worst seed)" in line for line in lines
    )


def test_goal_sentences_say_in_words_when_plain_lora_gained_nothing():
    """Issue 22: `slowed demo --quick` (plain LoRA gains nothing in so few steps) said "keeps nan % of plain LoRA's
    mean reasoning gain"."""
    runs = _synthetic()
    for run in runs:
        if run["method"] == "plain":  # reasoning at the base model's level: no gain
            run["final"]["reasoning_accuracy"] = 0.10
    summary = summaries.summarize(runs)
    assert verdicts.reference_gain(summary) == pytest.approx(0.0)
    lines = verdicts.goal_lines(summary)
    table = verdicts.goal_table(verdicts.goal_check(summary))
    assert len(lines) == 3 and not any("nan" in line for line in lines), lines
    assert all("has no reasoning gain to keep: plain LoRA gained 0.0 points over the base model" in x for x in lines)
    assert any("misses the goal (" in line and "no gain to keep" in line for line in lines)
    assert not any("nan" in cell for row in table for cell in row) and table[1][1] == "n/a"


def test_goal_check_needs_plain_lora():
    runs = [r for r in _synthetic() if r["method"] != "plain"]
    summary = summaries.summarize(runs)
    assert verdicts.goal_check(summary) == [] and verdicts.goal_lines(summary) == []


def test_tables_findings_and_figures_with_anchor_methods(tmp_path):
    runs = _synthetic()
    summary = summaries.summarize(runs)
    rows = tables.table(summary, {"safety_ratio": 1.0, "reasoning_accuracy": 0.1, "benign_helpful": 1.0})
    assert rows[0][:4] == ["method", "tau / k", "anchor", "seeds"]
    assert ["anchor replay", "- / -", "replay 5 %", "0,1,2"] == next(r for r in rows if r[0] == "anchor replay")[:4]
    assert next(r for r in rows if r[0] == "placebo")[2] == "placebo 5 %"

    per_seed = tables.per_seed_table(runs)
    assert per_seed[0] == [
        "method",
        "safety (seed 0, 1, 2)",
        "reasoning (seed 0, 1, 2)",
        "benign (seed 0, 1, 2)",
        "seconds (seed 0, 1, 2)",
    ]
    gradient = next(r for r in per_seed if r[0] == "anchor gradient")
    assert gradient[1] == "1.000 / 0.850 / 1.000" and gradient[4] == "100 / 101 / 102"

    timing = tables.timing_table(summary)
    by_label = {r[0]: r for r in timing[1:]}
    assert by_label["anchor gradient"][-3:] == ["1440", "1.000", "400"]
    assert by_label["anchor replay"][-3:] == ["105", "1.000", "-"]
    assert by_label["placebo"][-3:] == ["105", "-", "-"]
    assert by_label["plain LoRA"][6] == f"{40.0 / 630 * 1000:.0f}"
    assert summary["anchor-gradient"]["anchor"]["generation_seconds"]["mean"] == pytest.approx(4.0)

    found = verdicts.findings(summary)
    assert any(line.startswith("**anchor replay** vs placebo:") for line in found)
    replay_vs_placebo = next(line for line in found if line.startswith("**anchor replay** vs placebo"))
    assert "final safety higher by 100 points" in replay_vs_placebo

    figures.plot_curves(summary, tmp_path / "c.png", "test")
    figures.plot_frontier(summary, tmp_path / "f.png", "test")
    for name in ("c.png", "f.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------- a real run
@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A briefly trained base model of the demo's world (a pipeline check, not an aligned model)."""
    import os

    from slowed_plugin.demo.base_model import BaseSettings, ensure_base_model

    cache = tmp_path_factory.mktemp("cache")
    saved = os.environ.get("SLOWED_CACHE")
    os.environ["SLOWED_CACHE"] = str(cache)
    try:
        yield str(ensure_base_model(BaseSettings(steps=60, warmup_steps=10), progress=False))
    finally:
        if saved is None:
            os.environ.pop("SLOWED_CACHE", None)
        else:
            os.environ["SLOWED_CACHE"] = saved


_SMALL = TrainSettings(
    epochs=1, cot_train=64, batch_size=16, eval_harmful=8, eval_cot=8, eval_benign=8, anchor_prompts=12
)


@pytest.mark.parametrize(
    "method",
    [
        Method("anchor-replay", "anchor replay", anchor="replay", anchor_ratio=0.2),
        Method("anchor-gradient", "anchor gradient", anchor="gradient"),
        Method("placebo", "placebo", placebo=True, anchor_ratio=0.2),
    ],
    ids=lambda m: m.key,
)
def test_a_small_real_run_records_its_anchor(tiny_base, tmp_path, method, monkeypatch):
    import torch

    from slowed_plugin.anchor import replay_row_count
    from slowed_plugin.demo.run import run_one

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    try:
        result = run_one(RunSpec(0, method, 0), _SMALL, WorldSettings(), tiny_base, str(tmp_path))
    finally:
        torch.set_num_threads(threads)
    extra = replay_row_count(64, 0.2)  # 16
    anchor = result["anchor"]
    assert anchor["mode"] == ("placebo" if method.placebo else method.anchor)
    if method.anchor == "gradient":
        assert result["steps"] == 4  # 64 rows, batch 16: the anchor rows stay out of the loss
        assert anchor["rows"] == 24  # every anchor prompt: 12 harmful, 12 benign
        assert (anchor["harmful_rows"], anchor["benign_rows"]) == (12, 12)
        assert 0 <= anchor["projected_steps"] <= result["steps"]
    else:
        assert result["steps"] == math.ceil((64 + extra) / 16)
        assert anchor["rows"] == extra
    if method.anchor:
        assert 0.0 <= anchor["refusal_share"] <= 1.0
        assert anchor["generation_seconds"] >= 0 and anchor["samples"]
        prompts = {p for p, _, _ in anchor["samples"]}
        world = build_world()
        assert prompts <= {e.prompt for e in world.base["harmful"] + world.base["benign"]}
    assert result["anchor_text"] == method.anchor_text()
    assert set(result["timing"]) == {"build_seconds", "train_seconds", "step_seconds"}
    assert 0 < result["timing"]["step_seconds"] <= result["timing"]["train_seconds"] <= result["seconds"]
    assert [e["epoch"] for e in result["epochs"]] == [0, 1]
    assert "loss" in result["epochs"][1]  # the epoch's log row still lands on the epoch's last step
