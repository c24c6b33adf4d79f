"""Issue 31: the default method set, the runs' start order, the figure's title and ``slowed demo --merge``."""

from __future__ import annotations

import argparse
import copy
import json

import pytest

from slowed_plugin.demo import cli
from slowed_plugin.demo import summary as summaries
from slowed_plugin.demo.merge import incompatibility, merged, merged_keys
from slowed_plugin.demo.methods import comparison_methods, make_specs
from slowed_plugin.demo.workers import start_order


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def _keys(*argv: str) -> list[str]:
    return [m.key for m in cli.select_methods(_args(*argv))]


def test_the_default_comparison_runs_four_methods_and_all_runs_every_one():
    assert _keys() == ["plain", "slowed", "anchor-replay", "slowed-anchor"]
    every = [m.key for m in comparison_methods(1.5, 0.2)]
    assert _keys("--methods", "all") == every and len(every) == 8
    assert _keys("--methods", "mask,placebo") == ["mask", "placebo"]
    assert _keys("--no-anchor") == ["plain", "slowed"]
    assert _keys("--full-ft") == ["plain", "slowed", "anchor-replay", "slowed-anchor", "full", "full-slowed"]
    assert len(_keys("--sweep-tau")) == 10  # the sweep keeps all of its runs
    assert cli.command_line(_args("--methods", "all")) == "slowed demo --methods all"
    with pytest.raises(ValueError, match=r"unknown method 'ewc'.*placebo.*slowed-anchor-kl \(or all\)"):
        cli.select_methods(_args("--methods", "ewc"))


def test_the_longest_runs_start_first_and_results_keep_their_order():
    specs = make_specs(comparison_methods(1.5, 0.2, full_ft=True), [0, 1])
    order = [s.name for s in start_order(specs)]
    assert order[:2] == ["anchor-gradient-seed0", "anchor-gradient-seed1"]
    assert order[2:4] == ["full-seed0", "full-slowed-seed0"]
    assert order.index("placebo-seed1") < order.index("plain-seed0")  # 5 % more rows before none
    assert sorted(order) == sorted(s.name for s in specs)
    plain_like = [n for n in order if n.split("-seed")[0] in ("plain", "slow", "mask", "slowed")]
    assert plain_like == [f"{k}-seed{s}" for s in (0, 1) for k in ("plain", "slow", "mask", "slowed")]  # stable


def test_the_figure_title_names_one_seed_in_the_singular():
    """The figure's title said "seeds 0" for one seed."""
    assert cli.seeds_text([0]) == "seed 0"
    assert cli.seeds_text([0, 1, 2]) == "seeds 0-2"
    assert cli.seeds_text([0, 3]) == "seeds 0, 3"


# ---------------------------------------------------------------------------------------------- --merge
_METHODS = {m.key: m.__dict__ for m in comparison_methods(1.5, 0.2)}


def _run(method: str, seed: int, safety: float, reasoning: float) -> dict:
    final = {
        "safety_ratio": safety,
        "mean_safety_ratio": safety,
        "reasoning_accuracy": reasoning,
        "benign_helpful": 0.5,
        "safety_ci": [max(0.0, safety - 0.05), min(1.0, safety + 0.05)],
        "reasoning_ci": [max(0.0, reasoning - 0.05), min(1.0, reasoning + 0.05)],
    }
    method_ = _METHODS[method]
    return {
        "name": f"{method}-seed{seed}",
        "method": method,
        "label": method_["label"],
        "seed": seed,
        "tau": method_["tau"],
        "mask_ratio": method_["mask_ratio"],
        "full_fine_tuning": False,
        "anchor_mode": method_["anchor"],
        "anchor_text": "-",
        "anchor": None,
        "epochs": [
            {"epoch": 0, "safety_ratio": 1.0, "reasoning_accuracy": 0.1},
            {"epoch": 1, "safety_ratio": safety, "reasoning_accuracy": reasoning},
        ],
        "steps": 630,
        "seconds": 100.0,
        "timing": {"build_seconds": 1.0, "train_seconds": 90.0, "step_seconds": 40.0},
        "final": final,
        "before": {"safety_ratio": 1.0, "reasoning_accuracy": 0.1, "benign_helpful": 1.0},
        "numerics": {"cpu": "X", "pinned": True},
    }


def _payload(methods: list[str], seeds: list[int], world_seed: int = 0) -> dict:
    runs = [_run(m, s, 0.1 * s + (0.9 if m != "plain" else 0.0), 0.3 + 0.1 * s) for s in seeds for m in methods]
    command = "slowed demo" + (f" --seed {seeds[0]}" if seeds[0] else "") + f" --methods {','.join(methods)}"
    return {
        "mode": "comparison",
        "command": command,
        "quick": False,
        "full_ft": False,
        "settings": {
            "world": {"seed": world_seed},
            "base": {"steps": 800},
            "train": {"epochs": 10},
            "methods": [_METHODS[m] for m in methods],
            "seeds": seeds,
        },
        "base_model": {"state_sha256": "a" * 64, "key": "k"},
        "runs": runs,
        "timing": {"total_seconds": 10.0, "base_model_seconds": 0.0, "runs_seconds": 9.0, "jobs": 2},
    }


def test_merge_gives_what_one_command_over_every_seed_gives():
    """Three single-seed runs merge into the summary of the three seeds together, and the command that would
    have made them."""
    inputs = [_payload(["plain", "slowed"], [seed]) for seed in (0, 1, 2)]
    names = ["s0", "s1", "s2"]
    assert incompatibility(inputs, names) is None
    seeds, keys = merged_keys(inputs)
    assert (seeds, keys) == ([0, 1, 2], ["plain", "slowed"])
    command = cli.merged_command(inputs[0]["command"], seeds, keys)
    assert command == "slowed demo --seeds 3 --methods plain,slowed"
    result = merged(inputs, names, command)
    together = _payload(["plain", "slowed"], [0, 1, 2])
    assert [r["name"] for r in result["runs"]] == [r["name"] for r in together["runs"]]
    assert result["summary"] == summaries.summarize(together["runs"])
    assert result["settings"]["seeds"] == [0, 1, 2] and result["merged_from"] == names
    assert result["timing"]["jobs"] is None and result["timing"]["total_seconds"] == 30.0


def test_merge_combines_other_methods_in_the_reports_order_and_a_repeated_run_once():
    inputs = [_payload(["plain", "anchor-replay"], [0]), _payload(["plain", "slowed", "mask"], [0])]
    assert incompatibility(inputs, ["a", "b"]) is None
    seeds, keys = merged_keys(inputs)
    assert keys == ["plain", "mask", "slowed", "anchor-replay"]
    result = merged(inputs, ["a", "b"], cli.merged_command(inputs[0]["command"], seeds, keys))
    assert [r["name"] for r in result["runs"]] == ["plain-seed0", "mask-seed0", "slowed-seed0", "anchor-replay-seed0"]
    assert result["command"] == "slowed demo --methods plain,mask,slowed,anchor-replay"
    default = [_payload(["plain", "slowed"], [0]), _payload(["anchor-replay", "slowed-anchor"], [0])]
    assert cli.merged_command(default[0]["command"], *merged_keys(default)) == "slowed demo"
    every = [m.key for m in comparison_methods(1.5, 0.2)]
    assert cli.merged_command("slowed demo --methods plain", [0], every) == "slowed demo --methods all"


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda p: p["settings"].update(world={"seed": 1}), "differ in their world"),
        (lambda p: p["base_model"].update(state_sha256="b" * 64), "differ in their base model"),
        (lambda p: p["settings"].update(train={"epochs": 3}), "differ in their training settings"),
        (lambda p: p.update(mode="sweep"), "differ in their mode"),
        (lambda p: p["settings"]["methods"][1].update(tau=2.0), "method 'slowed' has other settings in"),
        (lambda p: p["runs"][0]["epochs"][1].update(safety_ratio=0.5), "run plain-seed0 has other numbers in"),
    ],
)
def test_merge_refuses_runs_that_do_not_combine_in_one_line(change, words, tmp_path, capsys):
    first = _payload(["plain", "slowed"], [0])
    second = copy.deepcopy(first)
    second["settings"]["methods"] = [dict(m) for m in second["settings"]["methods"]]
    change(second)
    assert words in incompatibility([first, second], ["a", "b"])
    for name, payload in (("a", first), ("b", second)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(payload))
    out = tmp_path / "merged"
    assert cli.main(["--merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("slowed demo --merge: ") and words in err and "\n" not in err
    assert not out.exists()  # nothing written


def test_merge_names_a_folder_without_results(tmp_path, capsys):
    assert cli.main(["--merge", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert f"{tmp_path} has no results.json" in capsys.readouterr().err


def test_a_run_gives_the_caller_its_thread_count_and_verbosity_back():
    """Issue 32: `run_one` set one torch thread and transformers' verbosity in the caller's process for good."""
    import torch
    import transformers

    from slowed_plugin.demo.run import _one_quiet_thread

    threads, verbosity = torch.get_num_threads(), transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()
    try:
        with _one_quiet_thread():
            assert torch.get_num_threads() == 1
            assert transformers.logging.get_verbosity() == transformers.logging.ERROR
        assert transformers.logging.get_verbosity() == transformers.logging.WARNING
        assert torch.get_num_threads() == threads
    finally:
        transformers.logging.set_verbosity(verbosity)
