"""``slowed check RECIPE.yaml`` and ``axolotl slowed-check RECIPE.yaml``: the user's safety net against a
recipe that silently trains without SLowED."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import yaml
from axolotl_helpers import BASE_CONFIG as RECIPE
from axolotl_helpers import PLUGIN


def _write(tmp_path, recipe: dict, name: str = "recipe.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return str(path)


def _check(tmp_path, recipe: dict) -> tuple[int, str]:
    from slowed_plugin.axolotl.check import check_recipes

    out = io.StringIO()
    status = check_recipes([_write(tmp_path, recipe)], stream=out)
    return status, out.getvalue()


def _variant(**changes) -> dict:
    recipe = {**RECIPE, **changes}
    return {k: v for k, v in recipe.items() if v is not ...}


def test_a_recipe_with_plugin_and_key_passes_and_prints_the_resolved_settings(tmp_path):
    status, out = _check(tmp_path, RECIPE)
    assert status == 0, out
    assert "SLowED: Slow Tuning tau=10 (layer, every epoch); Low-Entropy Masking mask_ratio=0.2 (scope sequence)" in out
    assert "slowed: {tau: 10.0, mask_ratio: 0.2, mask_scope: sequence, project_every: epoch" in out
    assert "valid for Axolotl" in out and "`slowed` kept after validation" in out
    assert out.rstrip().endswith("OK: SLowED will be active")


FAILURES = {
    "plugin missing": (
        _variant(plugins=...),
        ["`slowed:` is set but no `plugins:` entry loads", f"plugins: [{PLUGIN}]"],
    ),
    "plugin class misspelled": (
        _variant(plugins=["slowed_plugin.SlowedPlugin"]),
        ["`slowed_plugin.SlowedPlugin` cannot be loaded", f"Did you mean `{PLUGIN}`?"],
    ),
    "plugin module misspelled": (
        _variant(plugins=["slowed_plugins.SLowEDPlugin"]),
        ["No module named 'slowed_plugins'", "Axolotl logs this and trains without it", f"Did you mean `{PLUGIN}`?"],
    ),
    "plugin module not importable": (
        _variant(plugins=["slowed_plugin.axolotl.missing_module.SLowEDPlugin"]),
        ["cannot be loaded (ModuleNotFoundError", "trains without it"],
    ),
    "plugin listed without key": (
        _variant(slowed=...),
        [f"`plugins:` lists {PLUGIN} but the recipe has no `slowed:` key"],
    ),
    "key misspelled": (
        _variant(slowed=..., slowd=[10.0, 0.2]),
        ["no `slowed:` key", "`slowd:` is not a key Axolotl knows"],
    ),
    "key empty": (_variant(slowed=None), ["`slowed:` is empty (null)"]),
    "invalid value": (_variant(slowed=[10.0, 1.0]), ["`slowed.mask_ratio` must be a number with 0 <= mask_ratio < 1"]),
    "cross-key rule": (_variant(peft_use_dora=True), ["cannot bound DoRA"]),
    "axolotl rejects the rest": (_variant(adapter="qlora"), ["rejects the config", "load_in_4bit"]),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_each_way_a_recipe_would_lose_slowed_exits_non_zero(tmp_path, case):
    recipe, fragments = FAILURES[case]
    status, out = _check(tmp_path, recipe)
    assert status == 1, out
    assert "FAILED:" in out
    for fragment in fragments:
        assert fragment in out, (fragment, out)


def test_recipes_without_slowed_or_with_both_mechanisms_off_pass(tmp_path):
    status, out = _check(tmp_path, _variant(plugins=..., slowed=...))
    assert status == 0 and "does not use SLowED" in out, out
    status, out = _check(tmp_path, _variant(slowed={"tau": None, "mask_ratio": 0}))
    assert status == 0 and "both mechanisms are off" in out, out


def test_a_failing_recipe_among_several_fails_the_command(tmp_path):
    from slowed_plugin.axolotl.check import check_recipes

    good = _write(tmp_path, RECIPE, "good.yaml")
    bad = _write(tmp_path, _variant(plugins=...), "bad.yaml")
    assert check_recipes([good], stream=io.StringIO()) == 0
    assert check_recipes([good, bad], stream=io.StringIO()) == 1


def test_unreadable_or_non_mapping_yaml_fails(tmp_path):
    from slowed_plugin.axolotl.check import check_recipes

    broken = tmp_path / "broken.yaml"
    broken.write_text("plugins: [unclosed\n")
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    for path in (broken, listed, tmp_path / "missing.yaml"):
        assert check_recipes([str(path)], stream=io.StringIO()) == 1


def test_slowed_check_command_line(tmp_path):
    from slowed_plugin.cli import main

    assert main(["check", _write(tmp_path, RECIPE)]) == 0
    assert main(["check", _write(tmp_path, _variant(plugins=...), "bad.yaml")]) == 1


def test_axolotl_slowed_check_through_the_cli_commands_entry_point(tmp_path):
    from axolotl.cli.main import cli
    from click.testing import CliRunner

    runner = CliRunner()
    good = runner.invoke(cli, ["slowed-check", _write(tmp_path, RECIPE)])
    assert good.exit_code == 0, good.output
    assert "OK: SLowED will be active" in good.output
    bad = runner.invoke(cli, ["slowed-check", _write(tmp_path, _variant(slowed=...), "bad.yaml")])
    assert bad.exit_code == 1, bad.output
    assert "no `slowed:` key" in bad.output


def test_axolotl_lists_the_command_without_importing_it():
    code = (
        "from importlib.metadata import entry_points;"
        "eps = {e.name: e.value for e in entry_points(group='axolotl.cli_commands')};"
        "assert eps.get('slowed-check') == 'slowed_plugin.axolotl.cli:slowed_check', eps;"
        "import click, slowed_plugin.axolotl.cli as m; assert isinstance(m.slowed_check, click.Command)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _deepspeed_recipe(tmp_path, zero: dict, slowed=(10.0, 0.2)) -> dict:
    import json

    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": zero, "train_micro_batch_size_per_gpu": "auto"}))
    return _variant(deepspeed=str(path), slowed=list(slowed))


DEEPSPEED_PLANS = {
    "zero2": (
        {"stage": 2},
        (10.0, 0.2),
        "DeepSpeed ZeRO-2: Slow Tuning projects through ZeRO's fp32 masters; masking on the hidden states.",
    ),
    "zero3": (
        {"stage": 3},
        (10.0, 0.2),
        "DeepSpeed ZeRO-3: Slow Tuning projects through ZeRO's fp32 masters; masking on the logits "
        "(ZeRO-3 partitions the head's weight).",
    ),
    "zero2 masking only": (
        {"stage": 2},
        (None, 0.2),
        "DeepSpeed ZeRO-2: Slow Tuning off; masking on the hidden states.",
    ),
}


@pytest.mark.parametrize("case", sorted(DEEPSPEED_PLANS))
def test_a_deepspeed_recipe_gets_one_line_saying_what_slowed_does(tmp_path, case):
    zero, slowed, line = DEEPSPEED_PLANS[case]
    status, out = _check(tmp_path, _deepspeed_recipe(tmp_path, zero, slowed))
    assert status == 0, out
    assert [row for row in out.splitlines() if row.strip().startswith("engine")] == [f"  engine   {line}"]
    assert out.rstrip().endswith("OK: SLowED will be active")


@pytest.mark.parametrize(
    "zero, fix",
    [({"stage": 0}, "zero_optimization.stage=0"), ({"stage": 2, "offload_optimizer": {"device": "cpu"}}, "offload")],
)
def test_a_deepspeed_recipe_slow_tuning_cannot_honour_fails_with_the_fix(tmp_path, zero, fix):
    status, out = _check(tmp_path, _deepspeed_recipe(tmp_path, zero))
    assert status == 1, out
    stage = zero["stage"]
    assert f"  engine   DeepSpeed ZeRO-{stage}: Slow Tuning refused (see the error for the fix)" in out
    errors = [row for row in out.splitlines() if row.strip().startswith("error")]
    assert len(errors) == 1 and fix in errors[0] and "slowed.tau: null" in errors[0], out


def test_a_deepspeed_file_not_readable_here_is_said_so(tmp_path):
    status, out = _check(tmp_path, _variant(deepspeed="deepspeed_configs/missing-zero2.json"))
    assert status == 0, out
    assert "`deepspeed: deepspeed_configs/missing-zero2.json` is not readable from here" in out


def test_anchor_prompt_problems_are_one_error_line_with_one_key_prefix(tmp_path):
    """Issue 22: an empty anchor prompt file passed `slowed check` (and failed after the model loaded); and the
    anchor's messages named the key in two forms. Each case is one error line naming `slowed.safety_anchor.prompts`."""
    (tmp_path / "empty.txt").write_text("")
    cases = {
        str(tmp_path / "empty.txt"): "names a local file that is empty",
        str(tmp_path / "missing.txt"): "names a local file that does not exist",
        (): "must be a file, a hub dataset id, or a non-empty list of strings",
    }
    for prompts, reason in cases.items():
        slowed = {
            "tau": 10.0,
            "mask_ratio": 0.2,
            "safety_anchor": {"prompts": list(prompts) if prompts == () else prompts},
        }
        status, out = _check(tmp_path, _variant(slowed=slowed))
        errors = [line.strip() for line in out.splitlines() if line.strip().startswith("error")]
        assert status == 1 and len(errors) == 1, out
        assert f"`slowed.safety_anchor.prompts` {reason}" in errors[0], errors[0]


def test_the_safety_subspace_is_one_key_of_the_slowed_block_and_its_problems_one_error_line(tmp_path):
    """Issue 29: `slowed.safety_subspace` beside tau, checked before any model loads (resolved with its defaults;
    a missing benign set, or DeepSpeed, refused in one line naming the key)."""
    subspace = {"prompts": ["how do i steal a car ?"], "benign_prompts": ["how do i bake bread ?"]}
    status, out = _check(tmp_path, _variant(slowed={"tau": 1.5, "mask_ratio": 0.2, "safety_subspace": subspace}))
    assert status == 0, out
    cases = (
        (_variant(slowed={"tau": 1.5, "mask_ratio": 0, "safety_subspace": {"prompts": ["x"]}}), "benign_prompts"),
        (
            _variant(
                slowed={"tau": None, "mask_ratio": 0, "safety_subspace": subspace},
                deepspeed={"zero_optimization": {"stage": 2}},
            ),
            "is not supported with `deepspeed`",
        ),
    )
    for recipe, reason in cases:
        status, out = _check(tmp_path, recipe)
        errors = [line.strip() for line in out.splitlines() if line.strip().startswith("error")]
        assert status == 1 and len(errors) == 1, out
        assert "`slowed.safety_subspace" in errors[0] and reason in errors[0], errors[0]
