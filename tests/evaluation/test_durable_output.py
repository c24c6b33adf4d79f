"""``slowed eval safety`` survives an interrupt: answers are appended as they are judged, a rerun resumes
and ends with the same numbers as an uninterrupted run, and other settings are refused."""

from __future__ import annotations

import json
import os

import pytest
from safety_models import HARMFUL

from slowed_plugin.cli import main


@pytest.fixture
def model_dir(forced_model_dir):
    """The tiny Llama that gives its FORCED answers (refusing half the prompts)."""
    return forced_model_dir


def _args(model: str, prompts, out, *extra: str) -> list[str]:
    return ["eval", "safety", "--model", model, "--prompts", str(prompts), "--out", str(out)] + [
        "--max-new-tokens", "12", "--batch-size", "1", "--judge-batch-size", "1", "--no-progress", *extra
    ]  # fmt: skip


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "advbench.csv"
    path.write_text("goal,target\n" + "".join(f"{p},Sure\n" for p in HARMFUL))
    return path


def _last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


class Interrupt(KeyboardInterrupt):
    pass


def _interrupt_after(monkeypatch, target, name: str, calls: int) -> None:
    original = getattr(target, name)
    seen = {"n": 0}

    def wrapper(*args, **kwargs):
        seen["n"] += 1
        if seen["n"] > calls:
            raise Interrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapper)


@pytest.mark.parametrize("stage", ["judging", "generation"])
def test_an_interrupted_run_resumes_to_the_same_numbers(stage, model_dir, prompts, tmp_path, capsys, monkeypatch):
    from slowed_plugin.evaluation import generation, judges

    whole = tmp_path / "whole.jsonl"
    assert main(_args(model_dir, prompts, whole)) == 0
    expected = _last_line(capsys)

    out = tmp_path / "resumed.jsonl"
    with monkeypatch.context() as patch:
        if stage == "judging":
            _interrupt_after(patch, judges.RefusalJudge, "verdicts", 2)
        else:
            _interrupt_after(patch, generation, "generate_answers", 3)
        assert main(_args(model_dir, prompts, out)) == 130  # Ctrl-C: exit status 130, as a shell reports it
    kept = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    if stage == "judging":
        assert [r["index"] for r in kept] == [0, 1]  # each judged answer was on disk when the run stopped
    else:
        assert kept == [] and len(open(f"{out}.answers.partial").read().splitlines()) == 3
    # One line saying what is kept, not a KeyboardInterrupt traceback.
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"slowed eval safety: interrupted; kept {len(kept)} of {len(HARMFUL)} judged records in {out} and "
        f"{len(HARMFUL) if stage == 'judging' else 3} generated answers in {out}.answers.partial; the same command resumes."
    ), err
    assert "Traceback" not in "\n".join(err)

    calls = {"n": 0}
    original = generation.generate_answers

    def counting(model, tokenizer, batch, *args, **kwargs):
        calls["n"] += len(batch)
        return original(model, tokenizer, batch, *args, **kwargs)

    monkeypatch.setattr(generation, "generate_answers", counting)
    assert main(_args(model_dir, prompts, out)) == 0
    assert _last_line(capsys) == expected
    assert calls["n"] == (0 if stage == "judging" else 1)  # only what was not generated before
    assert out.read_text() == whole.read_text()
    assert not os.path.exists(f"{out}.answers.partial")
    # Done: running it again recomputes the summary without generating anything.
    assert main(_args(model_dir, prompts, out)) == 0
    assert _last_line(capsys) == expected and calls["n"] == (0 if stage == "judging" else 1)


def test_a_file_from_other_settings_is_refused_with_one_line(model_dir, prompts, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert main(_args(model_dir, prompts, out)) == 0
    capsys.readouterr()
    assert main(_args(model_dir, prompts, out, "--max-new-tokens", "5")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--max-new-tokens differs (12 there, 5 now)" in err, err
    prompts.write_text("goal,target\n" + "".join(f"{p},Sure\n" for p in reversed(HARMFUL)))
    assert main(_args(model_dir, prompts, out)) == 2
    assert "the prompts themselves differs" in capsys.readouterr().err
    legacy = tmp_path / "legacy.jsonl"
    legacy.write_text(out.read_text())
    assert main(_args(model_dir, prompts, legacy)) == 2
    assert "cannot be resumed safely" in capsys.readouterr().err


def test_read_jsonl_ignores_a_last_line_cut_short(tmp_path):
    from slowed_plugin.evaluation.safety import read_jsonl, write_jsonl

    path = tmp_path / "r.jsonl"
    write_jsonl([{"index": 0}, {"index": 1}], str(path))
    with open(path, "a") as handle:
        handle.write('{"index": 2, "ans')
    assert read_jsonl(str(path)) == [{"index": 0}, {"index": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["r.jsonl"]  # no temporary file left


def test_an_adapter_with_a_relative_base_loads_from_anywhere(model_dir, tmp_path, monkeypatch):
    import shutil

    from slowed_plugin.evaluation.models import load_model_and_tokenizer, resolve_base

    run = tmp_path / "run"
    shutil.copytree(model_dir, run / "models" / "base")
    adapter = run / "outputs" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "./models/base"}))
    # Axolotl wrote the path relative to `run/`, the adapter's grandparent: neither cwd nor the adapter folder.
    (run / "outputs" / "models").symlink_to(run / "models")
    monkeypatch.chdir(tmp_path)
    assert resolve_base("./models/base", str(adapter)) == str(run / "outputs" / "models" / "base")
    assert resolve_base("org/name", str(adapter)) == "org/name"  # a hub id stays one
    with pytest.raises(FileNotFoundError) as info:
        resolve_base("./models/missing", str(adapter))
    message = str(info.value)
    assert "\n" not in message and str(adapter / "models" / "missing") in message
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "../../run/models/base"}))
    assert resolve_base("../../run/models/base", str(adapter)) == str(run / "models" / "base")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model_and_tokenizer("./no-such-model", device="cpu")


def test_an_axolotl_output_folder_finds_the_base_model_of_the_folder_training_ran_from(tmp_path, monkeypatch):
    """Issue 22: `slowed eval safety --model outputs/tiny-cpu` after the tiny recipe, from another folder: the
    recipe's `base_model: ./slowed-tiny/llama` is relative to the run folder, two levels above the adapter."""
    from slowed_plugin.evaluation.models import resolve_base

    run = tmp_path / "run"
    (run / "slowed-tiny" / "llama").mkdir(parents=True)
    adapter = run / "outputs" / "tiny-cpu"
    (adapter / "checkpoint-12").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    base = str(run / "slowed-tiny" / "llama")
    assert resolve_base("./slowed-tiny/llama", str(adapter)) == base
    assert resolve_base("./slowed-tiny/llama", str(adapter / "checkpoint-12")) == base
    with pytest.raises(FileNotFoundError) as info:  # the paths tried are named, the run folder among them
        resolve_base("./slowed-tiny/qwen2", str(adapter))
    assert str(run / "slowed-tiny" / "qwen2") in str(info.value)
