"""The train-time guard (slowed_plugin/axolotl/guard.py): a recipe with ``slowed:`` whose plugin line is
missing, misspelled or not importable stops ``axolotl train`` before the model loads.

The guard reaches Axolotl as a pydantic plugin through the ``pydantic`` entry-point group. So that these
tests run the code of this checkout whatever the environment's installed metadata says, each subprocess
gets a throwaway ``*.dist-info`` on its ``PYTHONPATH`` declaring the entry point written in pyproject.toml.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from axolotl_helpers import PLUGIN, ROOT, Run, load_recipe, offline_env

if sys.version_info >= (3, 11):
    import tomllib
else:  # the dev extra installs tomli on Python 3.10
    import tomli as tomllib

GUARD_LINE = "slowed: error: `slowed:` is set but no `plugins:` entry loads slowed_plugin.SLowEDPlugin"


def _entry_point() -> tuple[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as handle:
        group = tomllib.load(handle)["project"]["entry-points"]["pydantic"]
    ((name, target),) = group.items()
    return name, target


def test_pyproject_registers_the_guard_as_a_pydantic_plugin():
    import importlib

    name, target = _entry_point()
    module, attribute = target.split(":")
    assert name == "slowed-guard"
    assert hasattr(getattr(importlib.import_module(module), attribute), "new_schema_validator")


@pytest.fixture(scope="module")
def guard_path(tmp_path_factory) -> str:
    """A folder whose dist-info declares the guard's entry point, as an install of this package does."""
    folder = tmp_path_factory.mktemp("guard-entry-point")
    info = folder / "slowed_guard_test-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: slowed-guard-test\nVersion: 0\n")
    name, target = _entry_point()
    (info / "entry_points.txt").write_text(f"[pydantic]\n{name} = {target}\n")
    return str(folder)


def _env(guard_path: str) -> dict[str, str]:
    env = offline_env()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), guard_path, env["PYTHONPATH"]])
    return env


# ---------------------------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    ("cfg", "loaded", "stops"),
    [
        ({"plugins": [PLUGIN], "slowed": [10, 0.2]}, "ours", False),
        ({"plugins": ["slowed_plugins.SLowEDPlugin"], "slowed": [10, 0.2]}, {}, True),
        ({"slowed": [10, 0.2]}, {}, True),
        ({"plugins": ["other.Plugin"], "slowed": {"tau": 1.0, "mask_ratio": 0}}, "other", True),
        ({"plugins": ["other.Plugin"]}, "other", False),  # no SLowED asked for
        ({"plugins": [], "slowed": None}, {}, False),  # `slowed: null` asks for nothing
    ],
)
def test_the_guard_stops_exactly_the_recipes_that_ask_for_slowed_without_loading_it(cfg, loaded, stops):
    from slowed_plugin.axolotl import guard

    class SLowEDPlugin:  # stands in by name and module, as the guard identifies the real one
        __module__ = "slowed_plugin.axolotl.plugin"

    plugins = {"ours": {PLUGIN: SLowEDPlugin()}, "other": {"other.Plugin": object()}}
    message = guard.problem(cfg, plugins.get(loaded, loaded) if isinstance(loaded, str) else loaded)
    assert (message is not None) == stops, message
    if stops:
        assert "\n" not in message and "slowed check RECIPE.yaml" in message


VALIDATE = """
import sys
sys.path.insert(0, {tests!r})
from axolotl_helpers import validate_axolotl
try:
    print("VALID", validate_axolotl({overrides!r}).get("slowed") is not None)
except Exception as err:
    print("REJECTED", type(err).__name__, err)
"""


@pytest.mark.slow  # an Axolotl validation subprocess each (~10 s)
@pytest.mark.parametrize(
    ("overrides", "verdict"),
    [
        ({}, "VALID True"),
        ({"plugins": ["slowed_plugins.SLowEDPlugin"]}, "REJECTED SLowEDGuardError"),
        ({"plugins": []}, "REJECTED SLowEDGuardError"),
    ],
)
def test_axolotls_validation_runs_the_guard_when_the_entry_point_is_installed(guard_path, overrides, verdict):
    code = VALIDATE.format(tests=str(ROOT / "tests" / "support"), overrides=overrides)
    done = subprocess.run(
        [sys.executable, "-c", code], env=_env(guard_path), capture_output=True, text=True, timeout=300
    )
    out = [line for line in done.stdout.splitlines() if line.startswith(("VALID", "REJECTED"))]
    assert len(out) == 1 and out[0].startswith(verdict), done.stdout + done.stderr


@pytest.mark.slow  # a `slowed check` subprocess with axolotl imported (~10 s)
def test_slowed_check_reports_the_problem_once_with_the_guard_installed(guard_path, tmp_path):
    import yaml
    from axolotl_helpers import BASE_CONFIG

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({k: v for k, v in BASE_CONFIG.items() if k != "plugins"}))
    done = subprocess.run(
        [sys.executable, "-m", "slowed_plugin.cli", "check", str(recipe)],
        env=_env(guard_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stdout.splitlines() if line.strip().startswith("error")]
    assert len(errors) == 1 and "no `plugins:` entry loads" in errors[0], done.stdout


# ---------------------------------------------------------------------------------------------- real `axolotl train`


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    from slowed_plugin.axolotl.tiny_assets import build

    folder = tmp_path_factory.mktemp("axolotl-guard")
    build(folder / "slowed-tiny", families=("llama",))
    return folder


BROKEN = {
    "plugin module misspelled": ["slowed_plugins.SLowEDPlugin"],
    "plugin module not importable": ["slowed_plugin.axolotl.missing_module.SLowEDPlugin"],
    # (A misspelled class name is loud already: Axolotl stops with an AttributeError.)
    "plugin line missing": None,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BROKEN))
def test_axolotl_train_stops_before_the_model_loads(name, workdir, guard_path, monkeypatch):
    config = {**load_recipe(), "output_dir": f"./outputs/{name.replace(' ', '-')}"}
    config["dataset_prepared_path"] = f"./prepared/{name.replace(' ', '-')}"
    if BROKEN[name] is None:
        config.pop("plugins")
    else:
        config["plugins"] = BROKEN[name]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), guard_path, os.environ.get("PYTHONPATH", "")]))
    run = Run(name.replace(" ", "-"), workdir, config).start().wait(timeout=300)
    log = run.log
    assert run.returncode != 0, log[-3000:]
    lines = [line for line in log.splitlines() if "no `plugins:` entry loads" in line]
    assert len(lines) == 1 and lines[0].startswith(GUARD_LINE), log[-3000:]
    assert "SLowEDGuardError" not in log  # one line, not a traceback
    # Stopped in config validation: no output folder (Axolotl creates it right after), no prepared data.
    assert not run.output_dir.exists()
    assert not (workdir / config["dataset_prepared_path"]).exists()


@pytest.mark.slow
def test_axolotl_train_of_the_same_recipe_trains_without_the_guard(workdir, monkeypatch):
    # The trap the guard closes: without it, a misspelled plugin trains plain SFT and exits 0.
    config = {**load_recipe(), "output_dir": "./outputs/unguarded", "dataset_prepared_path": "./prepared/unguarded"}
    config.update(plugins=BROKEN["plugin module misspelled"], num_epochs=1, val_set_size=0.0, save_strategy="no")
    config.pop("eval_steps", None)
    monkeypatch.setenv("SLOWED_AXOLOTL_GUARD", "0")
    run = Run("unguarded", workdir, config).start().wait(timeout=600)
    assert run.returncode == 0, run.log[-3000:]
    assert "no `plugins:` entry loads" not in run.log
