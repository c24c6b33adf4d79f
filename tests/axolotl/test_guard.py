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
from axolotl_helpers import AXOLOTL_MAIN, PLUGIN, ROOT, Run, load_recipe, offline_env

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
def workdir(tmp_path_factory, tiny_assets) -> Path:
    folder = tmp_path_factory.mktemp("axolotl-guard")
    tiny_assets(folder)
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


# ---------------------------------------------------------------------------------------------- SLowED's own errors


def _slowed_validation_error(message: str, error_class: type[Exception] | None = None):
    """The ``ValidationError`` pydantic raises when a ``mode="before"`` validator raises ``error_class(message)``."""
    from pydantic import BaseModel, ValidationError, model_validator

    from slowed_plugin.validate import SLowEDConfigError

    class Model(BaseModel):
        @model_validator(mode="before")
        @classmethod
        def check(cls, data):
            raise (error_class or SLowEDConfigError)(message)

    with pytest.raises(ValidationError) as caught:
        Model()
    return caught.value


def test_own_errors_are_recognised_by_their_class_not_their_wording():
    from slowed_plugin.axolotl import guard

    line = "`slowed.mask_ratio` must be a number with 0 <= mask_ratio < 1 (0 turns masking off); got 1.5."
    assert guard.own_error_message(_slowed_validation_error(line)) == line
    assert guard.own_error_message(guard.SLowEDGuardError("no plugin")) == "no plugin"
    # Another validator's ValueError, even one that mentions `slowed.`, keeps Axolotl's own report.
    assert guard.own_error_message(_slowed_validation_error(line, ValueError)) is None
    assert guard.own_error_message(KeyError("slowed")) is None


def test_the_hook_prints_one_line_and_exits_or_hands_every_other_error_on(capsys):
    from slowed_plugin.axolotl import guard

    handed_on, exits = [], []
    hook = guard._one_line_excepthook(lambda *info: handed_on.append(info[1]), exit_now=exits.append)
    error = _slowed_validation_error("`slowed.tau` must be a finite number > 0; got -1.")
    hook(type(error), error, None)
    assert capsys.readouterr().err == "slowed: error: `slowed.tau` must be a finite number > 0; got -1.\n"
    assert exits == [1] and handed_on == []
    other = RuntimeError("dataset missing")
    hook(RuntimeError, other, None)
    assert handed_on == [other] and exits == [1]


def test_telemetry_gets_a_bounded_grace_and_only_when_it_is_on(monkeypatch):
    import threading
    import time
    import types

    from slowed_plugin.axolotl import guard

    stuck = threading.Event()  # a flush that waits on an unreachable network
    manager = types.SimpleNamespace(enabled=True)
    telemetry = types.ModuleType("axolotl.telemetry.manager")
    telemetry.TelemetryManager = types.SimpleNamespace(_instance=manager)
    posthog = types.ModuleType("posthog")
    posthog.flush = lambda: stuck.wait(30)
    monkeypatch.setitem(sys.modules, "axolotl.telemetry.manager", telemetry)
    monkeypatch.setitem(sys.modules, "posthog", posthog)
    started = time.perf_counter()
    assert guard.telemetry_flushed(0.2) is False
    assert time.perf_counter() - started < 5
    stuck.set()
    assert guard.telemetry_flushed(5) is True  # a flush that completes is waited for
    manager.enabled = False  # AXOLOTL_DO_NOT_TRACK=1: nothing to wait for
    stuck.clear()
    assert guard.telemetry_flushed(0) is True


@pytest.mark.slow  # one `axolotl train` subprocess that stops at config validation (~15 s; more under load)
def test_axolotl_train_of_a_bad_value_stops_promptly_in_one_line_with_telemetry_on_and_no_network(workdir, guard_path):
    import datetime
    import re
    import socket
    import time

    import yaml

    config = {**load_recipe(), "output_dir": "./outputs/bad-value", "dataset_prepared_path": "./prepared/bad-value"}
    config["slowed"] = {**config["slowed"], "mask_ratio": 1.5}
    recipe = workdir / "bad-value.yaml"
    recipe.write_text(yaml.safe_dump(config, sort_keys=False))
    env = _env(guard_path)
    for name in ("AXOLOTL_DO_NOT_TRACK", "DO_NOT_TRACK", "NO_PROXY", "no_proxy"):
        env.pop(name, None)  # telemetry at Axolotl's default: on
    # An unreachable network that hangs rather than fails at once: a proxy that accepts connections and never
    # answers (each telemetry request then waits for its 15 s read timeout, retried; minutes in all).
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(64)
        proxy = f"http://127.0.0.1:{blackhole.getsockname()[1]}"
        env.update(HTTPS_PROXY=proxy, https_proxy=proxy, HTTP_PROXY=proxy, http_proxy=proxy)
        command = [sys.executable, "-c", AXOLOTL_MAIN, "train", str(recipe), "--launcher", "python"]
        done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=400)
        ended = time.time()
    log = done.stdout + done.stderr
    assert done.returncode == 1, log[-3000:]
    # One line for the error, not pydantic's traceback with the line buried above its end.
    lines = [line for line in log.splitlines() if "slowed.mask_ratio" in line]
    assert lines == [
        "slowed: error: `slowed.mask_ratio` must be a number with 0 <= mask_ratio < 1 (0 turns masking off); got 1.5."
    ], log[-3000:]
    assert "Traceback" not in log and "ValidationError" not in log, log[-3000:]
    # Telemetry was on (Axolotl captured the error) and the process did not wait on it: it exited within the
    # grace period plus start-up slack of the error, where waiting on the network takes a minute or more.
    captured = re.search(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+\] \[ERROR\] \[axolotl\.telemetry\.errors\]", log)
    assert captured, log[-3000:]
    raised = datetime.datetime.strptime(captured.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
    assert ended - raised < 30, f"exited {ended - raised:.0f} s after the error:\n{log[-3000:]}"
    assert "telemetry could not send this error" in log  # the dropped event is said, not silent
    assert not (workdir / config["output_dir"]).exists()
