"""A doctor's finding, its one line, and the report (exit code, JSON)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Status = Literal["ok", "warn", "FAIL", "skip"]


@dataclass(frozen=True)
class Finding:
    """One thing checked: ``FAIL`` is a problem (exit 1); ``warn`` works but not as it should; ``skip`` did not run
    here, and says why."""

    check: str  # e.g. "kernels.logits.compiled.bf16"
    status: Status
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.status:<4} {self.check}: {self.message}"


def exit_code(findings: list[Finding]) -> int:
    """1 when any finding is a problem, else 0."""
    return 1 if any(f.status == "FAIL" for f in findings) else 0


def write_json(path: str | Path, findings: list[Finding], extra: dict[str, Any] | None = None) -> None:
    report = {
        "exit_code": exit_code(findings),
        "counts": {s: sum(f.status == s for f in findings) for s in ("ok", "warn", "FAIL", "skip")},
        "findings": [asdict(f) for f in findings],
        **(extra or {}),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2, default=str) + "\n")
