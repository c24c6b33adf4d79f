"""CI smoke test of ``slowed demo --quick``: the outputs exist and are well-formed (not what they say)."""

from __future__ import annotations

import json
import platform

import pytest


@pytest.mark.slow
def test_demo_quick_writes_report_results_and_figure(tmp_path, monkeypatch):
    # An empty cache: the default base model is the one shipped with the package, not built here. One epoch of
    # --quick: every method's pipeline end to end (projection, masking, anchor) at a third of the cost.
    monkeypatch.setenv("SLOWED_CACHE", str(tmp_path / "cache"))
    from slowed_plugin.demo import cli

    out = tmp_path / "demo"
    assert cli.main(["--quick", "--epochs", "1", "--methods", "all", "--out", str(out), "--no-progress"]) == 0

    results = json.loads((out / "results.json").read_text())
    assert results["synthetic_toy"] is True
    assert results["command"] == "slowed demo --quick --epochs 1 --methods all"
    assert results["base_model"]["source"] == "shipped" and not (tmp_path / "cache").exists()
    methods = [r["method"] for r in results["runs"]]
    assert methods == [
        "plain",
        "slow",
        "mask",
        "slowed",
        "anchor-replay",
        "anchor-gradient",
        "slowed-anchor",
        "placebo",
    ]
    runs = {r["method"]: r for r in results["runs"]}
    # replay and its placebo add the same number of rows; gradient mode keeps its rows out of the loss
    assert runs["anchor-replay"]["anchor"]["rows"] == runs["placebo"]["anchor"]["rows"] > 0
    assert runs["anchor-replay"]["steps"] == runs["placebo"]["steps"] > runs["plain"]["steps"]
    assert runs["anchor-gradient"]["steps"] == runs["plain"]["steps"]
    assert 0 <= runs["anchor-gradient"]["anchor"]["projected_steps"] <= runs["plain"]["steps"]
    assert runs["anchor-replay"]["anchor"]["refusal_share"] == 1.0  # the aligned base model refuses
    assert {g["method"] for g in results["goal"]} == set(methods) - {"plain"}
    epochs = results["settings"]["train"]["epochs"]
    for run in results["runs"]:
        assert [e["epoch"] for e in run["epochs"]] == list(range(epochs + 1))
        for row in run["epochs"]:
            assert 0.0 <= row["safety_ratio"] <= 1.0
            assert 0.0 <= row["reasoning_accuracy"] <= 1.0
        for key in ("safety_ratio", "reasoning_accuracy", "benign_helpful", "mean_safety_ratio"):
            assert 0.0 <= run["final"][key] <= 1.0
        if run["tau"] is not None:  # Slow Tuning held every layer inside the ball after each epoch
            assert all(row["max_delta_norm"] <= run["tau"] * (1 + 1e-5) for row in run["epochs"])
        if run["mask_ratio"]:
            assert all(0.0 < row["slowed_masked_fraction"] <= run["mask_ratio"] for row in run["epochs"][1:])
    # every run starts from the same base model, measured the same way
    assert len({json.dumps(r["epochs"][0]["safety_ratio"]) for r in results["runs"]}) == 1
    assert set(results["summary"]) == set(methods)
    # where the numbers were made; on x86-64 the workers ran pinned and the base model has the recorded bits
    assert {r["numerics"]["cpu"] for r in results["runs"]} == {results["numerics"]["cpu"]}
    if platform.machine() == "x86_64":
        assert all(r["numerics"]["pinned"] for r in results["runs"]) and results["base_model"]["numerics"]["pinned"]
        assert results["base_model"]["state_sha256"] == results["base_model"]["reference_sha256"] is not None

    report = (out / "report.md").read_text()
    assert "synthetic toy" in report
    assert "| plain LoRA |" in report and "| SLowED |" in report
    assert "| anchor replay |" in report and "| placebo |" in report and "### The goal" in report
    assert "slowed-demo.png" in report
    assert "- Numerics: Floating point" in report
    assert (out / "slowed-demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # --merge renders a real results.json: the same runs twice give the same summary, each run once
    merged = tmp_path / "merged"
    assert cli.main(["--merge", str(out), str(out), "--out", str(merged)]) == 0
    again = json.loads((merged / "results.json").read_text())
    assert again["summary"] == results["summary"] and len(again["runs"]) == len(results["runs"])
    assert again["command"] == results["command"] and again["merged_from"] == [str(out), str(out)]
    assert "merged by `slowed demo --merge`" in (merged / "report.md").read_text()
