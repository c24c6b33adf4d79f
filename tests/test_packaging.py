"""What a pip user gets: the wheel's contents (recipes included) and ``slowed recipes``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.version_info >= (3, 11):
    import tomllib
else:  # the dev extra installs tomli on Python 3.10
    import tomli as tomllib


def _setuptools() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)["tool"]["setuptools"]


def test_every_sub_package_is_listed_in_pyproject():
    found = {".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "slowed_plugin").rglob("__init__.py")}
    listed = set(_setuptools()["packages"])
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert _setuptools()["package-dir"]["slowed_plugin.recipes"] == "recipes"


def test_the_wheel_carries_the_recipes_and_the_entry_points(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("slowed_plugin", "recipes"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    recipes = {p.name for p in (ROOT / "recipes").iterdir() if p.suffix == ".yaml" or p.name == "README.md"}
    assert {f"slowed_plugin/recipes/{name}" for name in recipes} <= names
    assert "slowed_plugin/data/cot_tiny.jsonl" in names
    assert not [n for n in names if n.startswith("recipes/")]  # not a top-level package
    assert "slowed-guard = slowed_plugin.axolotl.guard:plugin" in entry_points
    assert "slowed-check = slowed_plugin.axolotl.cli:slowed_check" in entry_points


def test_slowed_recipes_lists_and_copies(tmp_path, capsys):
    from slowed_plugin.cli import main

    assert main(["recipes"]) == 0
    listing = capsys.readouterr().out
    for path in (ROOT / "recipes").glob("*.yaml"):
        assert path.stem in listing
    assert main(["recipes", "copy", "tiny-cpu", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "tiny-cpu.yaml").read_bytes() == (ROOT / "recipes" / "tiny-cpu.yaml").read_bytes()
    assert main(["recipes", "copy", "tiny-cpu.yaml", str(tmp_path / "out")]) == 2  # exists: no silent overwrite
    assert main(["recipes", "copy", "no-such-recipe", str(tmp_path)]) == 2
    assert "no recipe `no-such-recipe`" in capsys.readouterr().err
