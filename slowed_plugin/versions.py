"""The supported versions of SLowED's dependencies, against what is installed, and the refusal of the others.

The ranges are the project's own declaration in ``pyproject.toml``, read from the installed distribution's metadata
(``importlib.metadata.requires("slowed-plugin")``, extras included) and parsed with ``packaging``; nothing is
restated here. A source tree that was never installed (``PYTHONPATH=.``) reads ``pyproject.toml`` beside it.

Each floor is the lowest version at which SLowED computes what it documents (docs/trl.md, "Supported versions"
says what goes wrong below each one); CI's floors job (``scripts/floors.sh``) installs exactly the floors and runs
the fast tests there. :func:`check_supported_versions` refuses any other version in one line, before a model is
loaded: at ``SLowEDCallback(...)``, at Axolotl's config validation (so ``axolotl train`` and ``slowed check``), and
``slowed doctor`` lists :func:`version_findings`. ``SLOWED_ALLOW_UNSUPPORTED=1`` turns the refusal into a warning.

Module imports stay light (stdlib and ``packaging``): pydantic's guard and ``slowed --help`` may import it.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

DISTRIBUTION = "slowed-plugin"
# The extras whose packages SLowED itself uses at run time; `demo` and `dev` bring tools (matplotlib, pytest).
EXTRAS = ("trl", "axolotl", "bnb", "deepspeed")
ALLOW_ENV = "SLOWED_ALLOW_UNSUPPORTED"


class UnsupportedVersionError(RuntimeError):
    """An installed dependency lies outside the range SLowED supports; the message is one line."""


@dataclass(frozen=True)
class VersionFinding:
    """One dependency: its installed version against the declared range."""

    package: str  # distribution name, e.g. "transformers"
    installed: str | None  # None when not installed
    supported: str  # specifier string, e.g. ">=4.57.1"
    required: bool  # False for extras' packages (trl, axolotl, bitsandbytes, deepspeed)
    ok: bool  # installed and inside the range, or optional and absent

    def line(self) -> str:
        """One line: a status word (``ok``/``FAIL``), then the package, its version and the supported range."""
        status = "ok" if self.ok else "FAIL"
        kind = "required" if self.required else "optional"
        if self.installed is None:
            when = "" if self.required else " when installed"
            return f"{status:<4} {self.package}: not installed ({kind}; supported {self.supported}{when})"
        where = "inside" if self.ok else "OUTSIDE"
        return f"{status:<4} {self.package} {self.installed}: {where} the supported range {self.supported} ({kind})"

    @property
    def floor(self) -> str | None:
        """The version of the range's ``>=`` bound (what CI's floors job installs), or None."""
        return floor_of(SpecifierSet(self.supported))


def floor_of(spec: SpecifierSet) -> str | None:
    bounds = [s.version for s in spec if s.operator == ">="]
    return max(bounds, key=Version) if bounds else None


def _declared() -> list[str]:
    """Requirement strings as ``importlib.metadata.requires`` gives them (extras as ``; extra == "x"`` markers)."""
    try:
        found = importlib.metadata.requires(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        found = None
    if found is not None:
        return list(found)
    return pyproject_requirements(Path(__file__).resolve().parents[1] / "pyproject.toml")


def pyproject_requirements(path: str | os.PathLike) -> list[str]:
    """The requirement lines of a ``pyproject.toml``, extras written as markers, as the metadata has them."""
    # Only a source tree that was never installed comes here; Python 3.10 reads TOML with tomli (the dev extra).
    try:
        import tomllib
    except ModuleNotFoundError:
        import tomli as tomllib

    with open(path, "rb") as handle:
        project = tomllib.load(handle)["project"]
    lines = list(project.get("dependencies", []))
    for extra, requirements in project.get("optional-dependencies", {}).items():
        for r in requirements:
            spec, _, marker = r.partition(";")
            marker = f"({marker.strip()}) and " if marker.strip() else ""
            lines.append(f'{spec.strip()}; {marker}extra == "{extra}"')
    return lines


def supported_ranges(declared: list[str] | None = None) -> dict[str, tuple[SpecifierSet, bool]]:
    """package -> (supported range, required), in declaration order; a package that several extras name keeps
    the intersection of their ranges."""
    ranges: dict[str, tuple[SpecifierSet, bool]] = {}
    for text in _declared() if declared is None else declared:
        requirement = Requirement(text)
        required = requirement.marker is None
        if not required and not any(requirement.marker.evaluate({"extra": extra}) for extra in EXTRAS):
            continue
        name = requirement.name.lower()
        previous, was_required = ranges.get(name, (SpecifierSet(), False))
        ranges[name] = (previous & requirement.specifier, was_required or required)
    return ranges


def _installed(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _inside(version: str, spec: SpecifierSet) -> bool:
    try:
        # A local build tag (torch's "2.13.0+cpu") is still that release.
        return spec.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def version_findings() -> list[VersionFinding]:
    """One finding per supported dependency: the required ones first, each group in declaration order."""
    findings = []
    for package, (spec, required) in supported_ranges().items():
        installed = _installed(package)
        ok = (not required) if installed is None else _inside(installed, spec)
        findings.append(VersionFinding(package, installed, str(spec) or "any", required, ok))
    return sorted(findings, key=lambda f: not f.required)


def _named(findings: list[VersionFinding]) -> str:
    bad = [f for f in findings if not f.ok]
    return ", ".join(f"{f.package} {f.installed or '(not installed)'} (supported: {f.supported})" for f in bad)


def refusal(findings: list[VersionFinding]) -> str | None:
    """The one line refusing the unsupported versions among ``findings``, or None when every one is ok."""
    bad = [f for f in findings if not f.ok]
    if not bad:
        return None
    fix = " ".join(f"'{f.package}{f.supported}'" for f in bad)
    return (
        f"SLowED does not support {_named(bad)}: there it would compute something other than what it documents "
        f"(docs/trl.md, 'Supported versions'). Install supported versions (pip install {fix}), or set "
        f"{ALLOW_ENV}=1 to run anyway at your own risk."
    )


def allowed() -> bool:
    """Whether the user set ``SLOWED_ALLOW_UNSUPPORTED`` to run on unsupported versions."""
    return os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes", "on")


_warned: set[str] = set()


def check_supported_versions() -> None:
    """Raise :class:`UnsupportedVersionError` (one line) when a dependency is outside its supported range;
    with ``SLOWED_ALLOW_UNSUPPORTED=1``, warn once per process instead."""
    findings = version_findings()
    message = refusal(findings)
    if message is None:
        return
    if not allowed():
        raise UnsupportedVersionError(message)
    if message not in _warned:
        _warned.add(message)
        from .log import get_logger

        get_logger().warning(
            f"SLowED: running on unsupported {_named(findings)} because {ALLOW_ENV} is set; results may differ "
            "from what SLowED documents."
        )


def floor_pins(findings: list[VersionFinding] | None = None, packages: tuple[str, ...] = ()) -> list[str]:
    """``name==floor`` for each declared package with a ``>=`` bound (only ``packages`` when given): what CI's
    floors job installs."""
    pins = []
    for finding in version_findings() if findings is None else findings:
        if packages and finding.package not in packages:
            continue
        if finding.floor is not None:
            pins.append(f"{finding.package}=={finding.floor}")
    return pins


def main(argv: list[str] | None = None) -> int:
    """``python -m slowed_plugin.versions [--floors PACKAGE ...]``: the findings, or the floor pins."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--floors"]:
        print(" ".join(floor_pins(packages=tuple(argv[1:]))))
        return 0
    findings = version_findings()
    for finding in findings:
        print(finding.line())
    return 0 if all(f.ok for f in findings) else 1


if __name__ == "__main__":
    sys.exit(main())
