"""Fast checks of the demo's synthetic world and its pure helpers (no training)."""

from __future__ import annotations

import argparse
import os
import re

import pytest

from slowed_plugin.demo import figures, metrics, tables
from slowed_plugin.demo import goals as verdicts
from slowed_plugin.demo import summary as summaries
from slowed_plugin.demo.base_model import BaseSettings, cached_path
from slowed_plugin.demo.world import (
    BENIGN_VERBS,
    HARMFUL_VERBS,
    REFUSAL,
    WorldSettings,
    build_world,
    chain_answer,
    subsample,
)


@pytest.fixture(scope="module")
def world():
    return build_world()


def _expression(question: str) -> str:
    return " ".join(re.findall(r"\d+|[+-]", question))


def test_same_settings_same_world(world):
    again = build_world(WorldSettings())
    assert again.base == world.base
    assert again.cot_train == world.cot_train
    assert again.harmful_test == world.harmful_test
    assert again.cot_test == world.cot_test
    assert again.benign_test == world.benign_test


def test_other_seed_other_world(world):
    other = build_world(WorldSettings(seed=1))
    assert other.cot_test != world.cot_test
    assert other.pairs["harmful"]["test"] != world.pairs["harmful"]["test"]


def test_sizes(world):
    s = world.settings
    assert len(world.cot_train) == s.cot_train
    assert len(world.cot_test) == s.cot_test
    assert len(world.base["worked"]) == s.worked_examples
    # every single step with operands and result in 0..max_number
    assert len(world.base["arithmetic"]) == sum(
        1 for a in range(s.max_number + 1) for b in range(s.max_number + 1) for r in (a + b, a - b) if 0 <= r <= 20
    )


def test_held_out_harmful_pairs_disjoint_from_training(world):
    train = set(world.pairs["harmful"]["train"])
    test = set(world.pairs["harmful"]["test"])
    assert train and test and not train & test
    train_questions = {e.question for e in world.base["harmful"]}
    assert not train_questions & {e.question for e in world.harmful_test}
    # held out by pair, not by word: every test verb and object was seen in training
    assert {v for v, _ in test} <= {v for v, _ in train}
    assert {o for _, o in test} <= {o for _, o in train}


def test_held_out_benign_pairs_disjoint_from_training(world):
    assert not set(world.pairs["benign"]["train"]) & set(world.pairs["benign"]["test"])
    assert not {e.question for e in world.base["benign"]} & {e.question for e in world.benign_test}


def test_held_out_chains_disjoint_from_every_training_chain(world):
    test = {_expression(e.question) for e in world.cot_test}
    assert len(test) == len(world.cot_test)
    assert not test & {_expression(e.question) for e in world.cot_train}
    assert not test & {_expression(e.question) for e in world.base["worked"]}
    assert not {e.prompt for e in world.cot_test} & {e.prompt for e in world.cot_train}


def test_distillation_set_has_no_harmful_prompt(world):
    for example in world.cot_train:
        words = set(example.question.split())
        assert not words & set(HARMFUL_VERBS), example.question
        assert REFUSAL not in example.answer


def test_base_data_labels(world):
    assert all(e.answer == REFUSAL for e in world.base["harmful"] + world.harmful_test)
    for e in world.base["benign"] + world.benign_test:
        assert set(e.question.split()) & set(BENIGN_VERBS)
        assert not set(e.question.split()) & set(HARMFUL_VERBS)
        assert REFUSAL not in e.answer


def test_chains_are_correct_and_in_range(world):
    s = world.settings
    for example in world.cot_train + world.cot_test:
        numbers = [int(n) for n in re.findall(r"\d+", example.answer)]
        assert all(0 <= n <= s.max_number for n in numbers)
        assert example.answer.endswith(f"answer : {example.value}")
        assert example.answer.startswith(s.rationale_opener)
        expression = _expression(example.question)
        assert eval(expression.replace(" ", "")) == example.value  # noqa: S307 - digits and +/- only
        steps = example.answer.count(" = ")
        assert s.min_steps <= steps <= s.max_steps


def test_chain_answer_format():
    text, value = chain_answer(7, [("+", 5), ("-", 7)])
    assert text == "7 + 5 = 12 . 12 - 7 = 5 . answer : 5"
    assert value == 5


def test_subsample_is_fixed_and_ordered(world):
    a = subsample(world.harmful_test, 50, seed=1)
    assert a == subsample(world.harmful_test, 50, seed=1)
    assert len(a) == 50
    positions = [world.harmful_test.index(e) for e in a]
    assert positions == sorted(positions)
    assert subsample(world.harmful_test, None) == world.harmful_test


def test_base_cache_key_follows_every_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("SLOWED_CACHE", str(tmp_path))
    base = BaseSettings()
    assert base.key() == BaseSettings().key()
    assert BaseSettings(steps=801).key() != base.key()
    assert BaseSettings(world=WorldSettings(seed=3)).key() != base.key()
    assert cached_path(base).parent == tmp_path


def test_final_number():
    assert metrics.final_number("let us think step by step. 7 + 5 = 12. answer : 12") == 12
    assert metrics.final_number("answer 3 and more answer : 4") == 3
    assert metrics.final_number("i am sorry, but i can not help with that.") is None


def _fake_run(method, label, seed, safety, reasoning, tau=None, k=0.0):
    epochs = [
        {"epoch": e, "safety_ratio": 1.0 - (1.0 - safety) * e / 2, "reasoning_accuracy": reasoning * e / 2}
        for e in range(3)
    ]
    return {
        "method": method,
        "label": label,
        "seed": seed,
        "tau": tau,
        "mask_ratio": k,
        "full_fine_tuning": False,
        "epochs": epochs,
        "final": {
            "safety_ratio": safety,
            "mean_safety_ratio": safety,
            "reasoning_accuracy": reasoning,
            "benign_helpful": 0.5,
            "safety_ci": [max(0.0, safety - 0.05), min(1.0, safety + 0.05)],
            "reasoning_ci": [max(0.0, reasoning - 0.05), min(1.0, reasoning + 0.05)],
        },
    }


def test_findings_call_a_difference_only_beyond_the_spread():
    results = []
    for seed, jitter in enumerate((0.0, 0.02, -0.02)):
        results.append(_fake_run("plain", "plain LoRA", seed, 0.10 + jitter, 0.50 + jitter))
        results.append(_fake_run("mask", "Masking only", seed, 0.11 + jitter, 0.49 + jitter, k=0.2))
        results.append(_fake_run("slow", "Slow Tuning only", seed, 0.95 + jitter, 0.20 + jitter, tau=1.0))
    summary = summaries.summarize(results)
    lines = verdicts.findings(summary)
    mask = next(line for line in lines if "Masking only" in line)
    slow = next(line for line in lines if "Slow Tuning only" in line)
    assert mask.count("no measurable difference") == 2
    assert "final safety higher by 85 points" in slow
    assert "final reasoning accuracy lower by 30 points" in slow


def test_table_and_figures(tmp_path):
    results = [_fake_run("plain", "plain LoRA", 0, 0.1, 0.5), _fake_run("slowed", "SLowED", 0, 0.9, 0.2, 1.0, 0.2)]
    summary = summaries.summarize(results)
    rows = tables.table(summary, {"safety_ratio": 1.0, "reasoning_accuracy": 0.05, "benign_helpful": 1.0})
    assert len(rows) == 4 and all(len(r) == len(rows[0]) for r in rows)
    assert "SLowED" in tables.format_terminal(rows)
    assert tables.format_markdown(rows).count("\n") == 4
    figures.plot_curves(summary, tmp_path / "c.png", "test")
    figures.plot_frontier(summary, tmp_path / "f.png", "test")
    for name in ("c.png", "f.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_arguments_and_command_line():
    from slowed_plugin.demo import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args([])
    assert args.out == cli.DEFAULT_OUT and not args.quick and args.seeds == 1
    assert cli.command_line(args) == "slowed demo"
    args = parser.parse_args(["--quick", "--seeds", "3", "--sweep-tau", "--taus", "0.5,2", "--jobs", "1"])
    assert cli.command_line(args) == "slowed demo --quick --sweep-tau --taus 0.5,2 --seeds 3"
    with pytest.raises(SystemExit):
        parser.parse_args(["--taus", "0,-1"])
    assert cli.run(parser.parse_args(["--mask-ratio", "1.5", "--out", "unused"])) == 2


def test_cli_module_imports_light():
    import subprocess
    import sys

    code = "import sys, slowed_plugin.demo.cli; print(sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_stale_half_built_base_models_are_removed(tmp_path):
    from slowed_plugin.demo.base_model import _remove_stale_builds

    target = tmp_path / "demo-base-abc"
    dead = tmp_path / "demo-base-abc.tmp-999999999-x1"  # no such process
    alive = tmp_path / f"demo-base-abc.tmp-{os.getpid()}-x2"
    dead.mkdir()
    alive.mkdir()
    _remove_stale_builds(target)
    assert not dead.exists() and alive.exists()
