"""``slowed demo --merge DIR...``: one report from the ``results.json`` of runs made apart.

Runs of other seeds or other methods of the same world, base model and settings combine into what one command
would have printed: the floating-point pin makes each run's numbers a function of its settings alone, so a run
made in another invocation is the same run. Anything that would make the runs incomparable (another world,
base model, training setting, mode, or one method key with two settings) is refused in one line, before
anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .results import Results, RunRecord, derived

# What every merged results.json must share, by (label, path into the payload).
_SHARED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("mode", ("mode",)),
    ("world", ("settings", "world")),
    ("base model", ("base_model", "state_sha256")),
    ("base-model settings", ("settings", "base")),
    ("training settings", ("settings", "train")),
    ("--quick", ("quick",)),
)


def _at(payload: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        payload = payload[key]
    return payload


def load(folder: str | Path) -> Results:
    """``results.json`` of an output folder (ValueError naming the folder when it has none)."""
    from .report import RESULTS

    path = Path(folder) / RESULTS
    if not path.is_file():
        raise ValueError(f"{folder} has no {RESULTS} (an output folder of `slowed demo`).")
    return json.loads(path.read_text())


def incompatibility(payloads: list[Results], names: list[str]) -> str | None:
    """One line naming the first setting on which the payloads differ, or None when they combine."""
    first = payloads[0]
    for payload, name in zip(payloads[1:], names[1:], strict=True):
        for label, path in _SHARED:
            if _at(payload, path) != _at(first, path):  # type: ignore[arg-type]
                return f"{names[0]} and {name} differ in their {label}; only runs of the same world, base model and settings combine."
    methods: dict[str, dict[str, Any]] = {}
    for payload, name in zip(payloads, names, strict=True):
        for method in payload["settings"]["methods"]:
            seen = methods.setdefault(method["key"], method)
            if seen != method:
                return f"method {method['key']!r} has other settings in {name}; merge runs of the same methods."
    runs: dict[str, RunRecord] = {}
    for payload, name in zip(payloads, names, strict=True):
        for run in payload["runs"]:
            seen_run = runs.setdefault(run["name"], run)
            if seen_run["epochs"] != run["epochs"]:
                return f"run {run['name']} has other numbers in {name}: not the same run (another torch or CPU?)."
    return None


def merged(payloads: list[Results], names: list[str], command: str) -> Results:
    """The payload of the combined runs: each (method, seed) once, seed by seed in the methods' order;
    ``command`` the single command that would have made them (:func:`~slowed_plugin.demo.cli.merged_command`)."""
    methods: dict[str, dict[str, Any]] = {}
    for payload in payloads:
        for method in payload["settings"]["methods"]:
            methods.setdefault(method["key"], method)
    order = {key: i for i, key in enumerate(_catalogue_order(list(methods)))}
    runs: dict[str, RunRecord] = {}
    for payload in payloads:
        for run in payload["runs"]:
            runs.setdefault(run["name"], run)
    ordered = sorted(runs.values(), key=lambda r: (r["seed"], order[r["method"]]))
    seeds = sorted({r["seed"] for r in ordered})
    first = payloads[0]
    result: Results = {
        **first,
        "command": command,
        "settings": {
            **first["settings"],
            "methods": sorted(methods.values(), key=lambda m: order[m["key"]]),
            "seeds": seeds,
        },
        "full_ft": any(p["full_ft"] for p in payloads),
        **derived(ordered),  # type: ignore[typeddict-item]
        "runs": ordered,
        "timing": {
            "total_seconds": round(sum(p["timing"]["total_seconds"] for p in payloads), 1),
            "base_model_seconds": round(sum(p["timing"]["base_model_seconds"] for p in payloads), 1),
            "runs_seconds": round(sum(p["timing"]["runs_seconds"] for p in payloads), 1),
            "jobs": None,
        },
        "merged_from": names,
    }
    return result


def merged_keys(payloads: list[Results]) -> tuple[list[int], list[str]]:
    """The seeds and the method keys (in the report's order) of the combined runs."""
    keys = list(dict.fromkeys(m["key"] for p in payloads for m in p["settings"]["methods"]))
    seeds = sorted({r["seed"] for p in payloads for r in p["runs"]})
    return seeds, _catalogue_order(keys)


def _catalogue_order(keys: list[str]) -> list[str]:
    """The keys in the comparison's order (then the sweep's taus in increasing order, then any other)."""
    from .methods import comparison_methods

    catalogue = [m.key for m in comparison_methods(1.0, 0.1, full_ft=True)]
    known = [k for k in catalogue if k in keys]
    taus = sorted((k for k in keys if k.startswith("slowed-tau")), key=lambda k: float(k[len("slowed-tau") :]))
    rest = [k for k in keys if k not in known and k not in taus]
    return ["plain"] * ("plain" in keys) + taus + [k for k in known + rest if k != "plain"]


def load_all(folders: list[str]) -> tuple[list[Results], str | None]:
    """The payloads of ``folders`` and the one-line reason they do not combine (None when they do)."""
    try:
        payloads = [load(folder) for folder in folders]
        return payloads, incompatibility(payloads, list(folders))
    except (ValueError, json.JSONDecodeError, KeyError) as err:
        return [], str(err)
