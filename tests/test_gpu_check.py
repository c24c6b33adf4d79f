"""The prepared GPU check (scripts/gpu-check.sh, scripts/gpu_check.py) as far as a CPU allows: the wheel list
covers every import, the dry run's import blocker behaves like a missing package, and the steps' CPU paths run."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)

# The code the check runs directly; what it imports through slowed_plugin is covered by the dry run below.
CHECK_FILES = [
    *sorted((ROOT / "slowed_plugin" / "doctor").glob("*.py")),
    *sorted((ROOT / "benchmarks").glob("*.py")),
    ROOT / "scripts" / "gpu_check.py",
]


def test_the_wheel_list_pins_what_the_issue_names():
    wheels = dict(gpu_check.wheel_requirements())
    assert wheels["trl"] == "1.9.0" and wheels["datasets"] == "4.8.4" and wheels["bitsandbytes"] == "0.50.2"
    assert {"dill", "multiprocess"} <= set(wheels)
    assert all(version for version in wheels.values())  # every line pinned: the download is reproducible
    script = (ROOT / "scripts" / "gpu-wheels.sh").read_text()
    assert "scripts/gpu-wheels.txt" in script and "--no-deps --only-binary=:all: --python-version 3.12" in script


def test_every_import_of_the_check_is_on_the_gpu_machine():
    blocked = gpu_check.blocked_modules()
    local = {p.stem for p in (ROOT / "benchmarks").glob("*.py")} | {"slowed_plugin"}
    missing = []
    for path in CHECK_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in blocked and top not in local:
                    missing.append(f"{path.relative_to(ROOT)}: {name} ({blocked[top]})")
    assert missing == [], "add these to scripts/gpu-wheels.txt or stop importing them"


def test_the_image_and_the_wheels_decide_what_is_blocked():
    blocked = gpu_check.blocked_modules()
    for absent in ("axolotl", "deepspeed", "torchao", "hypothesis"):
        if importlib.util.find_spec(absent) is not None:
            assert absent in blocked
    for present in ("torch", "transformers", "peft", "trl", "datasets", "bitsandbytes", "requests", "yaml"):
        assert present not in blocked


def test_the_blocker_hides_a_module_like_a_missing_package(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(gpu_check.BLOCKER.format(blocked={"yaml": "pyyaml"}))
    probe = (
        "import importlib.util, json\n"
        "hidden = importlib.util.find_spec('yaml') is None\n"
        "try:\n    import yaml\n    imported = True\nexcept ModuleNotFoundError:\n    imported = False\n"
        "print(json.dumps([hidden, imported, importlib.util.find_spec('json') is not None]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert json.loads(done.stdout) == [True, False, True], done.stderr


def test_the_wheel_folder_is_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "WHEEL_DIR", tmp_path)
    assert not gpu_check.check_wheels(dry_run=False)["ok"]  # none downloaded: the GPU run cannot start
    assert gpu_check.check_wheels(dry_run=True)["ok"]  # a dry run notes it and goes on
    for name, version in gpu_check.wheel_requirements():
        (tmp_path / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(b"")
    assert gpu_check.check_wheels(dry_run=False)["ok"]
    with open(tmp_path / "trl-1.9.0-py3-none-any.whl", "wb") as handle:
        handle.truncate(61_000_000)  # sparse: over the 60 MB budget without writing it
    result = gpu_check.check_wheels(dry_run=False)
    assert not result["ok"] and "over the 60 MB budget" in result["problems"][0]
    (tmp_path / "trl-1.9.0-py3-none-any.whl").unlink()
    assert "trl==1.9.0: no wheel in .whl/" in gpu_check.check_wheels(dry_run=False)["problems"][0]


def test_unknown_step_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--dry-run", "--steps", "doctor,warp-drive"])
    assert exit_info.value.code == 2
    assert "--steps: unknown warp-drive" in capsys.readouterr().err


@pytest.mark.slow
def test_dry_run_runs_the_gpu_steps_on_cpu(tmp_path):
    """The benchmark steps at tiny shapes on CPU, imports limited to the GPU image + wheels (the doctor step's
    CPU path is tests/doctor/test_doctor.py::test_slowed_doctor_on_cpu)."""
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        [str(ROOT / "scripts" / "gpu-check.sh"), "--dry-run", "--out", str(tmp_path),
         "--steps", "gpu-cases,qlora-memory,slow-tuning"],
        env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    logs = "".join(p.read_text()[-2000:] for p in tmp_path.glob("*.log"))
    assert done.returncode == 0, done.stdout + done.stderr + logs
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert report["dry_run"] and [s["status"] for s in report["steps"]] == ["ok", "ok", "ok"]
    assert {"slowed_vs_stock_tiny", "loss_vs_floor_tiny", "slow_tuning_s"} <= set(report["ratios"])
    assert "DRY RUN on CPU: no GPU number here" in (tmp_path / "summary.md").read_text()
    assert done.stdout.strip().splitlines()[-1].startswith("gpu-check: key ratios: ")
    assert "code path ran at a tiny shape" in (tmp_path / "qlora-memory.log").read_text()
