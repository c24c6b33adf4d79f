"""Supported versions: the ranges come from pyproject.toml, an unsupported version is refused in one line before a
model is loaded, `SLOWED_ALLOW_UNSUPPORTED=1` overrides with a warning, and the README's "Tested with" line is
what CI runs. Light: no model is built here."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
from pathlib import Path

import pytest
from installed import require
from packaging.specifiers import SpecifierSet

from slowed_plugin import versions
from slowed_plugin.versions import ALLOW_ENV, UnsupportedVersionError, VersionFinding, version_findings

ROOT = Path(__file__).resolve().parents[1]
STACK = ("torch", "transformers", "peft", "accelerate", "datasets", "trl", "bitsandbytes", "deepspeed")


def _pretend(monkeypatch: pytest.MonkeyPatch, **installed: str | None) -> None:
    """Make ``versions`` see other installed versions (package -> version, or None for absent)."""
    real = versions._installed
    monkeypatch.setattr(versions, "_installed", lambda p: installed[p] if p in installed else real(p))


@pytest.fixture(autouse=True)
def _no_override(monkeypatch):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    versions._warned.clear()


def test_ranges_are_pyprojects():
    from packaging.requirements import Requirement

    declared = {
        Requirement(r).name: str(Requirement(r).specifier) for r in importlib.metadata.requires("slowed-plugin")
    }
    findings = {f.package: f for f in version_findings()}
    for name in ("torch", "transformers", "peft", "accelerate", "datasets", "trl", "axolotl", "bitsandbytes"):
        assert findings[name].supported == declared[name]
    assert [f.required for f in version_findings()] == sorted((f.required for f in version_findings()), reverse=True)
    assert findings["transformers"].required and not findings["trl"].required
    assert "matplotlib" not in findings and "pytest" not in findings  # tools of the demo and dev extras


def test_the_running_environment_is_supported():
    assert all(f.ok for f in version_findings()), [f.line() for f in version_findings() if not f.ok]


def test_finding_lines_name_package_version_and_range():
    below = VersionFinding("transformers", "4.56.2", ">=4.57.1", True, False)
    assert below.line() == "FAIL transformers 4.56.2: OUTSIDE the supported range >=4.57.1 (required)"
    assert VersionFinding("trl", None, ">=1.4.0", False, True).line().startswith("ok   trl: not installed")
    assert below.floor == "4.57.1"


def test_optional_absent_is_ok_and_optional_below_floor_is_not(monkeypatch):
    _pretend(monkeypatch, trl=None, bitsandbytes="0.1.0")
    findings = {f.package: f for f in version_findings()}
    assert findings["trl"].ok and findings["trl"].installed is None
    assert not findings["bitsandbytes"].ok


def test_a_version_below_the_floor_is_refused_in_one_line_before_any_model(monkeypatch):
    from slowed_plugin import SLowEDCallback

    floor = next(f.floor for f in version_findings() if f.package == "transformers")
    _pretend(monkeypatch, transformers="4.56.2")
    with pytest.raises(UnsupportedVersionError) as caught:
        SLowEDCallback(tau=10.0, mask_ratio=0.2)  # built before the trainer, so before the model loads
    message = str(caught.value)
    assert "\n" not in message
    assert f"transformers 4.56.2 (supported: >={floor})" in message
    assert ALLOW_ENV in message


def test_the_override_warns_and_runs(monkeypatch, caplog):
    from slowed_plugin import SLowEDCallback

    _pretend(monkeypatch, trl="1.0.0")
    monkeypatch.setenv(ALLOW_ENV, "1")
    logger = logging.getLogger("slowed_plugin")
    logger.addHandler(caplog.handler)
    try:
        callback = SLowEDCallback(tau=10.0, mask_ratio=0.2)
    finally:
        logger.removeHandler(caplog.handler)
    assert callback.config.mask_ratio == 0.2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "trl 1.0.0" in warnings[0] and ALLOW_ENV in warnings[0]


def test_axolotl_config_validation_refuses_before_the_model(monkeypatch):
    require("pydantic", "axolotl")
    from slowed_plugin.axolotl.args import SLowEDArgs

    _pretend(monkeypatch, peft="0.16.0")
    with pytest.raises(UnsupportedVersionError, match=r"peft 0\.16\.0 \(supported: >="):
        SLowEDArgs.model_validate({"slowed": [10.0, 0.2]})
    SLowEDArgs.model_validate({"base_model": "x"})  # no `slowed:`: not SLowED's business


def test_slowed_check_reports_the_refusal(monkeypatch):
    from slowed_plugin.axolotl.check import Report, _check_versions

    report = Report("recipe.yaml")
    _check_versions(report)
    assert not report.errors and report.lines[0][0] == "versions"
    _pretend(monkeypatch, torch="2.6.0")
    report = Report("recipe.yaml")
    _check_versions(report)
    assert len(report.errors) == 1 and "torch 2.6.0" in report.errors[0]


def test_floor_pins_are_the_lower_bounds():
    pins = versions.floor_pins(packages=STACK)
    assert [p.split("==")[0] for p in pins] == list(STACK)
    for pin in pins:
        name, floor = pin.split("==")
        assert next(f for f in version_findings() if f.package == name).floor == floor


def test_trl_above_the_newest_tested_is_refused_before_any_model(monkeypatch):
    """TRL 1.15 moved SFT's loss to a fused LM head, which SLowED masks (tests/trainer/test_fused_head.py) up to
    the newest TRL CI tests (1.16); a later TRL may change that head again, so it is refused at the callback, not
    at the first optimizer step."""
    from slowed_plugin import SLowEDCallback

    trl = next(f for f in version_findings() if f.package == "trl")
    assert trl.floor == "1.4.0" and not versions._inside("1.17.0", SpecifierSet(trl.supported))
    assert all(versions._inside(v, SpecifierSet(trl.supported)) for v in ("1.9.0", "1.14.2", "1.15.0", "1.16.0"))
    _pretend(monkeypatch, trl="1.17.0")
    with pytest.raises(UnsupportedVersionError) as caught:
        SLowEDCallback(tau=10.0, mask_ratio=0.2)
    message = str(caught.value)
    assert "\n" not in message and "trl 1.17.0" in message and "<1.17" in message


# ---------------------------------------------------------------------------------------------- README
COLUMNS = ("floors", "main", "newest")


def _tested_with() -> dict[str, dict[str, str | None]]:
    """The README's "Tested with" table: {"floors" | "main" | "newest": {package: version, or None for "—"}}."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(
        r"^\| package \| floors \(`scripts/floors\.sh`\) \| main job \(Axolotl's pins, DeepSpeed's newest\) "
        r"\| newest \(`scripts/newest\.sh`\) \|\n\|[- |]+\|\n((?:\|.*\|\n)+)",
        text,
        re.M,
    )
    assert match, "README.md lost its 'Tested with' table (package | floors | main job | newest)"
    table: dict[str, dict[str, str | None]] = {column: {} for column in COLUMNS}
    for line in match.group(1).splitlines():
        package, *cells = (cell.strip() for cell in line.strip("|").split("|"))
        assert len(cells) == len(COLUMNS), line
        for column, cell in zip(COLUMNS, cells, strict=True):
            table[column][package] = None if cell == "—" else cell
    assert tuple(table["floors"]) == STACK, "the table names the packages of the floors job, in its order"
    return table


def _installed_versions(packages) -> dict[str, str | None]:
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name).split("+")[0]
        except importlib.metadata.PackageNotFoundError:
            return None

    return {name: version(name) for name in packages}


def test_readme_floors_are_pyprojects():
    assert _tested_with()["floors"] == dict(p.split("==") for p in versions.floor_pins(packages=STACK))


def test_readme_main_column_is_what_the_main_job_installs():
    require("axolotl", "axolotl")  # the main job's venv (setup.sh) has Axolotl, whose pins these are
    main = _tested_with()["main"]
    assert main == _installed_versions(main)


def test_readme_newest_column_is_inside_the_ranges():
    for package, version in _tested_with()["newest"].items():
        spec, _ = versions.supported_ranges()[package]
        assert version is None or versions._inside(version, spec), (package, version, str(spec))


@pytest.mark.skipif(
    not os.environ.get("SLOWED_NEWEST_JOB"), reason="only the newest job's venv (scripts/newest.sh) holds the newest"
)
def test_readme_newest_column_is_what_the_newest_job_installs():
    newest = _tested_with()["newest"]
    assert newest == _installed_versions(newest)


def test_ci_runs_the_floors_job_after_the_main_job():
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("\nscripts/test.sh\n") < ci.index("\nscripts/floors.sh\n")
    floors = (ROOT / "scripts" / "floors.sh").read_text()
    assert "tests/test_versions.py" in floors and f"--floors {' '.join(STACK)})" in floors
    # DeepSpeed's floor is tested by the two-process ZeRO runs (slow tests), not only imported by the fast ones.
    assert '"tests/trainer/test_deepspeed.py::test_zero_lora_matches_one_process[2]"' in floors


def test_ci_runs_the_newest_job_after_the_floors_job():
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("\nscripts/floors.sh\n") < ci.index("\nscripts/newest.sh\n")
    newest = (ROOT / "scripts" / "newest.sh").read_text()
    # The fast tests without Axolotl, the exactness tests of every loss path among them, and this file's README check.
    for part in ("tests/core", "tests/trainer", "tests/test_versions.py", "SLOWED_NEWEST_JOB=1", "torch==2.13.0"):
        assert part in newest, part
    assert "transformers trl peft accelerate datasets" in newest and "--upgrade" in newest
