"""The supported version ranges of SLowED's dependencies, against what is installed.

The ranges are the project's own declaration: the installed distribution's metadata
(``importlib.metadata.requires("slowed-plugin")``, extras included), or, when the package runs from a source
tree that was never installed (``PYTHONPATH=.``), the ``pyproject.toml`` beside it. Nothing is restated here.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

DISTRIBUTION = "slowed-plugin"
# The extras whose packages SLowED supports at run time (the others, demo and dev, are tools).
EXTRAS = ("trl", "axolotl", "bnb", "deepspeed")


@dataclass(frozen=True)
class VersionFinding:
    """One dependency: its installed version against the declared range."""

    package: str  # distribution name, e.g. "transformers"
    installed: str | None  # None when not installed
    supported: str  # specifier string, e.g. ">=4.57.1"
    required: bool  # False for extras' packages (trl, axolotl, bitsandbytes, deepspeed)
    ok: bool  # installed and inside the range, or optional and absent

    def line(self) -> str:
        """The one line ``slowed doctor`` prints."""
        status = "ok" if self.ok else "FAIL"
        kind = "required" if self.required else "optional"
        if self.installed is None:
            if self.required:
                return f"{status:<4} {self.package}: not installed ({kind}, supported {self.supported})"
            return f"{status:<4} {self.package}: not installed ({kind}, supported {self.supported} when installed)"
        where = "inside" if self.ok else "OUTSIDE"
        return f"{status:<4} {self.package} {self.installed}: {where} the supported range {self.supported} ({kind})"


def _declared() -> list[str]:
    """Requirement strings as ``importlib.metadata.requires`` gives them (extras as ``; extra == "x"`` markers)."""
    try:
        found = importlib.metadata.requires(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        found = None
    if found is not None:
        return list(found)
    import tomllib  # Python >= 3.11; a source tree without metadata is the GPU check's case (3.12)

    with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as handle:
        project = tomllib.load(handle)["project"]
    lines = list(project.get("dependencies", []))
    for extra, requirements in project.get("optional-dependencies", {}).items():
        for line in requirements:
            requirement, _, marker = line.partition(";")
            condition = f'({marker.strip()}) and extra == "{extra}"' if marker.strip() else f'extra == "{extra}"'
            lines.append(f"{requirement.strip()}; {condition}")
    return lines


def _ranges() -> dict[str, tuple[SpecifierSet, bool]]:
    """package -> (supported range, required); a package named by several extras keeps the intersection."""
    ranges: dict[str, tuple[SpecifierSet, bool]] = {}
    for line in _declared():
        requirement = Requirement(line)
        marker = requirement.marker
        # Required: no marker, or one that holds here without any extra (a python_version condition).
        required = marker is None or marker.evaluate({"extra": ""})
        if not required and not any(marker.evaluate({"extra": extra}) for extra in EXTRAS):
            continue  # another extra's tool (demo, dev), or a condition that does not hold here
        name = requirement.name.lower()
        if name in ranges:
            previous, was_required = ranges[name]
            ranges[name] = (previous & requirement.specifier, was_required or required)
        else:
            ranges[name] = (requirement.specifier, required)
    return ranges


def _installed(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _inside(version: str, spec: SpecifierSet) -> bool:
    try:
        return spec.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def version_findings() -> list[VersionFinding]:
    """One finding per supported dependency: required ones first, in declaration order."""
    findings = []
    for package, (spec, required) in _ranges().items():
        installed = _installed(package)
        ok = (not required) if installed is None else _inside(installed, spec)
        findings.append(VersionFinding(package, installed, str(spec) or "any", required, ok))
    return sorted(findings, key=lambda f: not f.required)
