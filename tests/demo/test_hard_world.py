"""The hard world (``slowed demo --world hard``): its construction (out-of-distribution families disjoint from
everything trained on or replayed, by construction and by an independent check), its judge, its switches and
the cache key, the per-family report and the relative goal, and one tiny real run."""

from __future__ import annotations

import argparse
import dataclasses
import re

import pytest

from slowed_plugin.demo import families as fam
from slowed_plugin.demo.base_model import BaseSettings
from slowed_plugin.demo.hard_world import (
    AGREE_OPENER,
    BORDERLINE_VERBS,
    CAVEATS,
    FAMILIES,
    HARD_MIXTURE,
    HELPFUL,
    NEW_HARMFUL_VERBS,
    OOD_TEMPLATES,
    REFUSALS,
    HardWorldSettings,
    build_hard_world,
    check_disjoint,
    hard_settings,
    judge,
)
from slowed_plugin.demo.methods import TrainSettings
from slowed_plugin.demo.metrics import eval_sets
from slowed_plugin.demo.run import anchor_prompts
from slowed_plugin.demo.world import BENIGN_VERBS, HARMFUL_VERBS, TEMPLATES, WorldSettings, build_world


@pytest.fixture(scope="module")
def world():
    return build_hard_world()


def _trained_questions(world) -> list[str]:
    """Every question the base model, the distillation or the anchor sees, the lexicon's facts apart."""
    harmful, benign = anchor_prompts(world)
    anchor = [p.removeprefix("user: ").removesuffix(" assistant:") for p in harmful + benign]
    base = [e.question for name, pool in world.base.items() if name != "lexicon" for e in pool]
    return base + [e.question for e in world.cot_train] + anchor


def _pattern(template: str) -> re.Pattern:
    """A regex that matches every question made from ``template`` ({v}, {o}, {a}, {b}, {request} free)."""
    text = re.escape(template)
    for slot in ("v", "o", "a", "b", "request"):
        text = text.replace(re.escape("{" + slot + "}"), ".+")
    return re.compile(f"^{text}$")


def test_build_world_dispatches_and_repeats(world):
    again = build_world(HardWorldSettings())
    assert again.harmful_test == world.harmful_test and again.cot_train == world.cot_train
    assert again.base == world.base
    # the default world is untouched
    assert build_world(WorldSettings()).harmful_test[0].family == ""


def test_every_family_is_held_out_with_its_size(world):
    counts = {f: sum(e.family == f for e in world.harmful_test) for f in FAMILIES}
    assert counts == dict.fromkeys(FAMILIES, world.settings.family_size)
    assert len({e.question for e in world.harmful_test}) == len(world.harmful_test)


def test_ood_families_disjoint_by_construction():
    assert not set(NEW_HARMFUL_VERBS) & (set(HARMFUL_VERBS) | set(BENIGN_VERBS) | set(BORDERLINE_VERBS))
    assert not set(BORDERLINE_VERBS) & (set(HARMFUL_VERBS) | set(BENIGN_VERBS))
    training_templates = {f"{p} {{v}} {{o}} {e}" for p, e in TEMPLATES}
    ood = {t for templates in OOD_TEMPLATES.values() for t in templates}
    assert not ood & training_templates


def test_ood_families_disjoint_by_an_independent_check(world):
    trained = _trained_questions(world)
    trained_set = set(trained)
    trained_words = {w for q in trained for w in q.split()}
    for e in world.harmful_test:
        assert e.question not in trained_set, e.question  # exact prompt strings
    # new verbs: in no request the model trains on or the anchor replays (only in the lexicon's facts)
    new_verbs = {w for e in world.harmful_test if e.family == "new-verbs" for w in e.question.split()}
    assert new_verbs & set(NEW_HARMFUL_VERBS) == set(NEW_HARMFUL_VERBS)
    assert not set(NEW_HARMFUL_VERBS) & trained_words
    # new templates: no trained question fits any out-of-distribution template
    for family, templates in OOD_TEMPLATES.items():
        members = [e.question for e in world.harmful_test if e.family == family]
        for template in templates:
            pattern = _pattern(template)
            assert not [q for q in trained if pattern.match(q)], (family, template)
        assert all(any(_pattern(t).match(q) for t in templates) for q in members), family


def test_disjointness_check_fails_on_a_leak(world):
    leaked = dataclasses.replace(world, cot_train=world.cot_train + [world.harmful_test[0]])  # an in-dist prompt
    with pytest.raises(ValueError, match="training prompt"):
        check_disjoint(leaked)
    role_play = next(e for e in world.harmful_test if e.family == "role-play")
    twin = dataclasses.replace(role_play, question="a new question .")  # same template, another prompt
    with pytest.raises(ValueError, match="training template"):
        check_disjoint(dataclasses.replace(world, cot_train=world.cot_train + [twin]))
    check_disjoint(world)


def test_eval_sets_take_the_same_count_of_every_family(world):
    quick = eval_sets(world, TrainSettings(eval_harmful=80))
    assert [sum(e.family == f for e in quick.harmful) for f in FAMILIES] == [16] * 5
    assert eval_sets(world, TrainSettings()).harmful == world.harmful_test


def test_refusals_vary_and_the_judge_accepts_any(world):
    refusing = [e for e in world.base["harmful"] if not e.answer.startswith("sure")]
    phrasings = {re.sub(r"help you \w+ a \w+|help anyone \w+ a \w+", "help X", e.answer) for e in refusing}
    assert len(phrasings) == len(REFUSALS) >= 5
    j = judge()
    assert all(j.judge([e.prompt for e in refusing], [e.answer for e in refusing]))
    complying = [e for e in world.base["harmful"] if e.answer.startswith("sure")]
    assert complying and not any(j.judge([e.prompt for e in complying], [e.answer for e in complying]))
    benign = world.base["benign"]
    assert len({e.answer.split(" ", 2)[1] for e in benign}) > 1  # helpful phrasings vary too
    assert not any(j.judge([e.prompt for e in benign], [e.answer for e in benign]))
    assert all(e.answer in e.accepted and len(e.accepted) == len(HELPFUL) for e in benign)
    for text in HELPFUL:
        assert not j.judge(["x"], [text.format(v="steal", o="a car")])[0]


def test_the_switches(world):
    s = world.settings
    share = sum(e.answer.startswith("sure") for e in world.base["harmful"]) / len(world.base["harmful"])
    assert 0.10 <= share <= 0.20 and abs(share - s.compliance_share) < 0.03
    assert all(e.answer.startswith(AGREE_OPENER) for e in world.cot_train if e.kind == "cot")
    borderline = [e for e in world.cot_train if e.kind == "borderline"]
    assert len(world.cot_train) == s.cot_train and len(borderline) == round(s.cot_train * s.borderline_share)
    assert all(e.answer.startswith("sure") and set(e.question.split()) & set(BORDERLINE_VERBS) for e in borderline)

    off = build_hard_world(hard_settings(list(CAVEATS)))
    assert {e.family for e in off.harmful_test} == {"in-dist"}
    assert not any(e.answer.startswith("sure") for e in off.base["harmful"])
    assert {e.answer for e in off.base["harmful"]} == {REFUSALS[0]}
    assert all(e.answer.startswith("let us think") and e.kind == "cot" for e in off.cot_train)


def test_every_switch_changes_the_cache_key():
    keys = {BaseSettings(world=hard_settings([name]), mixture=HARD_MIXTURE).key() for name in CAVEATS}
    keys.add(BaseSettings(world=HardWorldSettings(), mixture=HARD_MIXTURE).key())
    keys.add(BaseSettings().key())
    assert len(keys) == len(CAVEATS) + 2


def test_bad_settings_name_the_key_and_the_allowed_values():
    with pytest.raises(ValueError, match="unknown caveat 'oops'.*ood, varied, imperfect, agree, borderline"):
        hard_settings(["oops"])
    with pytest.raises(ValueError, match="`compliance_share` must be in"):
        HardWorldSettings(compliance_share=1.5)


def test_cli_world_options(capsys):
    from slowed_plugin.demo import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--world", "hard", "--hard-off", "imperfect,agree"])
    assert cli.command_line(args) == "slowed demo --world hard --hard-off imperfect,agree"
    settings, base = cli.choose_world(args)
    assert (settings.compliance_share, settings.agree_opener) == (0.0, "")
    assert base.mixture == HARD_MIXTURE
    assert cli.main(["--hard-off", "ood", "--out", "unused"]) == 2
    assert "`--hard-off` needs `--world hard`" in capsys.readouterr().err
    assert cli.main(["--world", "hard", "--hard-off", "nope", "--out", "unused"]) == 2
    assert "unknown caveat 'nope'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- report
def _counts(ratios: dict[str, float], n: int = 10) -> dict[str, dict]:
    return {f: {"n": n, "n_safe": round(r * n), "ratio": r, "ci": [0.0, 1.0]} for f, r in ratios.items()}


def _run(method, seed, final, reasoning, benign, base=None):
    base = base or {"in-dist": 0.8, "role-play": 0.5, "new-verbs": 0.0}
    return {
        "method": method,
        "label": method,
        "seed": seed,
        "anchor": {"refusal_share": 0.85} if method == "anchor" else None,
        "epochs": [
            {"epoch": 0, "reasoning_accuracy": 0.1, "safety_by_family": _counts(base)},
            {"epoch": 1, "reasoning_accuracy": reasoning, "safety_by_family": _counts(final)},
        ],
        "final": {"reasoning_accuracy": reasoning, "benign_helpful": benign},
        "before": {"benign_helpful": 1.0},
    }


def _synthetic():
    runs = []
    for seed in (0, 1):
        runs.append(_run("plain", seed, {"in-dist": 0.0, "role-play": 0.0, "new-verbs": 0.0}, 0.6, 0.0))
        # keeps 100 % of in-dist, 90 % / 80 % of role-play's base .5 on seeds 0 / 1
        rp = (0.45, 0.4)[seed]
        runs.append(_run("anchor", seed, {"in-dist": 0.8, "role-play": rp, "new-verbs": 0.0}, 0.55, 0.95))
    return runs


def test_family_counts_and_intervals():
    counts = fam.family_counts(["a", "b", "a", "a"], [True, False, False, True])
    assert list(counts) == ["a", "b"]
    assert (counts["a"]["n"], counts["a"]["n_safe"], counts["b"]["ratio"]) == (3, 2, 0.0)
    assert 0 < counts["a"]["ci"][0] < 2 / 3 < counts["a"]["ci"][1] < 1
    with pytest.raises(ValueError, match="same length"):
        fam.family_counts(["a"], [])


def test_relative_goal_on_synthetic_results():
    rows = {r["method"]: r for r in fam.relative_goal_check(_synthetic())}
    anchor = rows["anchor"]
    assert anchor["worst_relative"] == pytest.approx(0.8) and anchor["worst_family"] == "role-play (seed 1)"
    assert anchor["share"] == pytest.approx(0.45 / 0.5) and anchor["gain_ok"]
    assert anchor["benign_ok"] and not anchor["safety_ok"] and not anchor["met"]
    # a family the base model never refuses is skipped, not divided by zero
    assert "new-verbs" not in anchor["worst_family"]
    summary = fam.family_summary(_synthetic())
    assert summary["anchor"]["families"]["role-play"]["by_seed"] == {0: 0.45, 1: 0.4}
    assert summary["anchor"]["families"]["role-play"]["relative"] == pytest.approx(0.85)


def test_report_section_replaces_the_absolute_goal():
    from slowed_plugin.demo import report

    runs = _synthetic()
    payload = {"runs": runs, "summary": {}, "settings": {"world": {"world": "hard"}}}
    text = "\n".join(report._goal(payload))
    assert "### The goal: keep safety" not in text
    assert "### Safety per family" in text and "### The relative goal" in text
    assert "| anchor |" in text and "80 % (role-play (seed 1))" in text and "missed" in text
    assert "85.0 % of its distinct harmful anchor answers" in text
    assert "new-verbs" in text and "fewer than 50 %" in text  # the base model's weak families are flagged
    assert "misses the relative goal" in fam.goal_lines(runs)[0]
    # the default world's runs carry no families: no section
    assert fam.section_lines({"runs": [{"epochs": [{}]}]}) == []


# ---------------------------------------------------------------------------------------------- one real run
@pytest.mark.slow  # about 40 s of CPU (twice that on the shared 2-core machine)
def test_a_tiny_hard_demo_end_to_end(tmp_path, monkeypatch):
    """`slowed demo --world hard` through the CLI, on a small hard world and a briefly trained base model."""
    import json

    from slowed_plugin.demo import cli

    monkeypatch.setenv("SLOWED_CACHE", str(tmp_path / "cache"))
    small = HardWorldSettings(cot_train=200, cot_test=20, worked_examples=20, family_size=8)
    base = BaseSettings(world=small, mixture=HARD_MIXTURE, steps=20, warmup_steps=5)  # type: ignore[arg-type]
    monkeypatch.setattr(cli, "choose_world", lambda args: (small, base))
    out = tmp_path / "demo"
    argv = ["--world", "hard", "--quick", "--epochs", "1", "--methods", "plain,anchor-replay", "--jobs", "1"]
    assert cli.main([*argv, "--out", str(out), "--no-progress"]) == 0

    results = json.loads((out / "results.json").read_text())
    assert results["command"] == "slowed demo --quick --epochs 1 --methods plain,anchor-replay --world hard"
    assert results["settings"]["world"]["world"] == "hard"
    for run in results["runs"]:
        for row in run["epochs"]:
            assert list(row["safety_by_family"]) == list(FAMILIES)
            assert all(c["n"] == 8 for c in row["safety_by_family"].values())
            n_safe = sum(c["n_safe"] for c in row["safety_by_family"].values())
            assert row["safety_ratio"] == pytest.approx(n_safe / 40)
    runs = {r["method"]: r for r in results["runs"]}
    assert 0.0 <= runs["anchor-replay"]["anchor"]["refusal_share"] <= 1.0
    (goal,) = results["goal"]  # the relative goal, against plain LoRA
    assert goal["method"] == "anchor-replay" and "worst_relative" in goal
    report = (out / "report.md").read_text()
    assert "### Safety per family" in report and "### The relative goal" in report
    assert "### The goal: keep safety" not in report and "- Hard world: out-of-distribution families on" in report
