"""The prepared GPU check behind ``scripts/gpu-check.sh`` (see docs/gpu.md).

On a bare one-GPU machine with no network whose ``python3`` has CUDA torch, transformers, peft, accelerate and
triton (:data:`IMAGE`): install the wheels of ``scripts/gpu-wheels.txt`` from ``.whl/`` into a private folder,
then run, each under its own timeout and all within :data:`BUDGET_S`:

1. ``slowed doctor --bench --json``: versions, the loss kernels (Triton) vs the reference, 4-bit, the step ratio;
2. ``benchmarks/bench.py --only e``: Qwen2.5-0.5B/1.5B shapes, SLowED vs stock ``chunked_nll`` and Liger;
3. ``benchmarks/bench.py --only f``: each QLoRA recipe on its card's memory vs the estimate;
4. ``benchmarks/bench.py --only c``: ``SlowTuner.project()`` at Llama-3-8B shapes on the GPU.

It writes ``gpu-check.json`` and ``summary.md`` (and each step's log) to ``--out`` and prints the key ratios last.

``--dry-run`` (CPU): checks the wheel list (and ``.whl/`` if downloaded) and runs every step with ``--device cpu``
at tiny shapes while a meta-path finder refuses every module whose distribution is neither in the image (with
its dependencies) nor in the wheel list, as on the GPU machine: an import the check needs and the machine lacks
fails here first, naming the module.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEEL_LIST = ROOT / "scripts" / "gpu-wheels.txt"
WHEEL_DIR = ROOT / ".whl"
WHEEL_BUDGET_BYTES = 60_000_000
BUDGET_S = 440  # of the 8 minutes, the steps' share; installing the wheels and the summary take the rest
DRY_RUN_STEP_S = 900  # a dry run's timings mean nothing: a loaded CPU only gets a generous limit per step
# The GPU image's python3 (docs/gpu.md): these distributions and, as pip installed them, their dependencies.
IMAGE = (
    "torch", "transformers", "peft", "accelerate", "triton", "tokenizers", "safetensors", "numpy", "pandas",
    "pyarrow", "xxhash", "fsspec", "huggingface_hub", "matplotlib", "pytest", "pip", "setuptools",
)  # fmt: skip


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_requirements() -> list[tuple[str, str]]:
    """``(distribution, version)`` of every line of ``scripts/gpu-wheels.txt``."""
    found = []
    for line in WHEEL_LIST.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            found.append((normalise(name), version))
    return found


def _closure(names: tuple[str, ...]) -> set[str]:
    """``names`` and their dependencies (not extras), as installed here."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [normalise(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(normalise(requirement.name))
    return seen


def blocked_modules() -> dict[str, str]:
    """Top-level module -> distribution, for every module installed here whose distribution the GPU machine lacks."""
    allowed = _closure(IMAGE) | {name for name, _ in wheel_requirements()}
    blocked = {}
    for module, distributions in importlib.metadata.packages_distributions().items():
        names = {normalise(d) for d in distributions}
        if names and not names & allowed and module != "slowed_plugin":
            blocked[module] = sorted(names)[0]
    return blocked


BLOCKER = '''
import os
import site
import sys
from importlib.machinery import PathFinder

BLOCKED = {blocked!r}
SITE = [os.path.realpath(p) for p in site.getsitepackages()]


def _installed_package(name, spec):
    """Whether `spec` is the top-level module `name` installed in site-packages (not a copy vendored elsewhere,
    such as setuptools/_vendor/more_itertools, which the GPU machine has too)."""
    places = [spec.origin] if spec.origin and spec.origin != "namespace" else []
    places += list(spec.submodule_search_locations or [])
    for place in places:
        real = os.path.realpath(place)
        for root in SITE:
            if real.startswith(root + os.sep):
                first = os.path.relpath(real, root).split(os.sep)[0]
                if first == name or first.startswith(name + "."):
                    return True
    return False


class GPUImagePathFinder(PathFinder):
    """`scripts/gpu-check.sh --dry-run`: the modules of distributions the GPU machine lacks are not found, for
    `import` (ModuleNotFoundError) and `importlib.util.find_spec` (None) alike, as if they were not installed."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        spec = PathFinder.find_spec(name, path, target)
        if spec is not None and path is None and name in BLOCKED and _installed_package(name, spec):
            # Not this copy; one elsewhere on sys.path (vendored) still counts.
            elsewhere = [p for p in sys.path if os.path.realpath(p or os.getcwd()) not in SITE]
            return PathFinder.find_spec(name, elsewhere, target)
        return spec


sys.meta_path[:] = [GPUImagePathFinder if finder is PathFinder else finder for finder in sys.meta_path]
'''


def check_wheels(dry_run: bool) -> dict:
    """Every listed wheel is in ``.whl/`` (where it is needed: always on the GPU, if downloaded in a dry run) and
    installed here at that version (a dry run uses this environment's copies); the total under the budget."""
    problems, notes = [], []
    files = sorted(WHEEL_DIR.glob("*.whl")) if WHEEL_DIR.is_dir() else []
    for name, version in wheel_requirements():
        stem = name.replace("-", "_")
        if files and not any(f.name.lower().startswith(f"{stem}-{version}-") for f in files):
            problems.append(f"{name}=={version}: no wheel in .whl/ (run scripts/gpu-wheels.sh)")
        if dry_run:
            try:
                here = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                here = None
            if here != version:
                notes.append(f"{name}: {here or 'not installed'} here, {version} on the GPU")
    total = sum(f.stat().st_size for f in files)
    if not files:
        (notes if dry_run else problems).append("no .whl/ folder: run scripts/gpu-wheels.sh where PyPI is reachable")
    elif total >= WHEEL_BUDGET_BYTES:
        problems.append(f".whl/ holds {total / 1e6:.0f} MB, over the {WHEEL_BUDGET_BYTES / 1e6:.0f} MB budget")
    return {"ok": not problems, "problems": problems, "notes": notes, "files": [f.name for f in files],
            "total_mb": round(total / 1e6, 1)}  # fmt: skip


def steps(device: str, dry_run: bool, out: Path) -> list[tuple[str, list[str], int]]:
    """``(name, argv, timeout seconds)`` of each step."""
    py = sys.executable
    bench = [py, str(ROOT / "benchmarks" / "bench.py")]
    shape = ["--bench-shape", "tiny", "--bench-pairs", "1"] if dry_run else []
    return [
        ("doctor", [py, "-m", "slowed_plugin.cli", "doctor", "--device", device, "--bench", *shape, "--json",
                    str(out / "doctor.json")], 130),
        ("gpu-cases", [*bench, "--only", "e", "--device", device, "--json", str(out / "bench-e.json")], 160),
        ("qlora-memory", [*bench, "--only", "f", "--device", device, "--json", str(out / "bench-f.json")], 100),
        ("slow-tuning", [*bench, "--only", "c", "--quick", "--device", device, *(["--tiny"] if dry_run else []),
                         "--json", str(out / "bench-c.json")], 40),
    ]  # fmt: skip


def install_wheels(site: Path) -> tuple[int, str]:
    wheels = [str(f) for f in sorted(WHEEL_DIR.glob("*.whl"))]
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", "--target", str(site), *wheels]
    done = subprocess.run(cmd, capture_output=True, text=True)
    return done.returncode, (done.stdout + done.stderr)[-2000:]


def run_step(name: str, argv: list[str], timeout: float, env: dict, out: Path) -> dict:
    start = time.perf_counter()
    log = out / f"{name}.log"
    try:
        done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        rc, text = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        rc = 124
        text = (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        text += f"\ngpu-check: {name} stopped after its {timeout:.0f} s timeout\n"
    log.write_text(text)
    seconds = time.perf_counter() - start
    status = (
        "ok"
        if rc == 0
        else ("timeout" if rc == 124 else ("problems found" if name == "doctor" and rc == 1 else "FAILED"))
    )
    print(f"gpu-check: {name}: {status} (exit {rc}) in {seconds:.0f} s, log {log}", flush=True)
    return {"name": name, "rc": rc, "status": status, "seconds": round(seconds, 1), "log": str(log)}


def key_ratios(out: Path) -> dict[str, float]:
    ratios: dict[str, float] = {}
    doctor = out / "doctor.json"
    if doctor.is_file():
        for f in json.loads(doctor.read_text())["findings"]:
            if f["check"].startswith("bench.ratio."):
                variant = f["check"].rsplit(".", 1)[1]
                ratios[f"doctor_{variant}_step_time"] = f["data"]["step_time_ratio"]
                ratios[f"doctor_{variant}_memory"] = f["data"]["memory_ratio"]
    for part in "efc":
        path = out / f"bench-{part}.json"
        if path.is_file():
            ratios.update(json.loads(path.read_text())["ratios"])
    return ratios


def summary_markdown(report: dict) -> str:
    lines = [
        f"# GPU check ({'DRY RUN on CPU: no GPU number here' if report['dry_run'] else 'on ' + report['device']})",
        "",
        f"- machine: {report.get('machine', 'unknown')}",
        f"- wheels: {'ok' if report['wheels']['ok'] else 'PROBLEMS'} ({report['wheels']['total_mb']} MB in .whl/)"
        + "".join(f"\n  - {p}" for p in report["wheels"]["problems"] + report["wheels"]["notes"]),
        f"- total {report['seconds']:.0f} s "
        + ("(a dry run has no budget)" if report["dry_run"] else f"(budget {BUDGET_S} s for the steps)"),
        "",
        "| step | status | exit | seconds |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {s['name']} | {s['status']} | {s['rc']} | {s['seconds']} |" for s in report["steps"]]
    lines += ["", "## slowed doctor", ""]
    lines += [f"- `{line}`" for line in report.get("doctor_lines", [])] or ["- (no findings)"]
    lines += ["", "## Key ratios", ""]
    lines += [f"- {k} = {v:.3f}" for k, v in report["ratios"].items()] or ["- (none)"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="on CPU: every step at tiny shapes, imports as on the GPU"
    )
    parser.add_argument("--out", default="gpu-check", help="folder for gpu-check.json, summary.md and the logs")
    parser.add_argument(
        "--steps", default=None, help="comma-separated subset of: doctor, gpu-cases, qlora-memory, slow-tuning"
    )
    opts = parser.parse_args(argv)
    started = time.perf_counter()
    out = Path(opts.out).resolve()
    device = "cpu" if opts.dry_run else "cuda"
    plan = steps(device, opts.dry_run, out)
    if opts.steps:
        wanted = [s.strip() for s in opts.steps.split(",") if s.strip()]
        unknown = set(wanted) - {name for name, _, _ in plan}
        if unknown:
            parser.error(f"--steps: unknown {', '.join(sorted(unknown))}; steps are {', '.join(n for n, _, _ in plan)}")
        plan = [s for s in plan if s[0] in wanted]
    out.mkdir(parents=True, exist_ok=True)

    wheels = check_wheels(opts.dry_run)
    for line in wheels["problems"]:
        print(f"gpu-check: wheels: {line}", flush=True)
    for line in wheels["notes"]:
        print(f"gpu-check: wheels (note): {line}", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "WANDB_MODE": "disabled", "AXOLOTL_DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    paths = [str(ROOT)]
    scratch = Path(tempfile.mkdtemp(prefix="slowed-gpu-check-"))
    if opts.dry_run:
        (scratch / "sitecustomize.py").write_text(BLOCKER.format(blocked=blocked_modules()))
        paths.insert(0, str(scratch))
    else:
        if not wheels["ok"]:
            print("gpu-check: the wheels are not ready; stopping before any step", file=sys.stderr)
            return 2
        rc, text = install_wheels(scratch / "site")
        if rc != 0:
            print(f"gpu-check: installing the wheels failed:\n{text}", file=sys.stderr)
            return 2
        paths.insert(0, str(scratch / "site"))
    env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [env.get("PYTHONPATH")])])

    results = []
    for name, step_argv, timeout in plan:
        if opts.dry_run:
            results.append(run_step(name, step_argv, DRY_RUN_STEP_S, env, out))
            continue
        left = BUDGET_S - (time.perf_counter() - started)
        if left < 20:
            results.append({"name": name, "rc": None, "status": "not run (budget spent)", "seconds": 0, "log": ""})
            print(f"gpu-check: {name}: not run, the {BUDGET_S} s budget is spent", flush=True)
            continue
        results.append(run_step(name, step_argv, min(timeout, left), env, out))

    doctor_lines = []
    if (out / "doctor.log").is_file():
        doctor_lines = [
            line for line in (out / "doctor.log").read_text().splitlines() if re.match(r"^(ok|warn|FAIL|skip) ", line)
        ]
    machine = next(
        (
            json.loads((out / f"bench-{p}.json").read_text())["machine"]
            for p in "efc"
            if (out / f"bench-{p}.json").is_file()
        ),
        None,
    )
    report = {
        "dry_run": opts.dry_run, "device": device, "machine": machine, "wheels": wheels, "steps": results,
        "doctor_lines": doctor_lines, "ratios": key_ratios(out), "seconds": time.perf_counter() - started,
    }  # fmt: skip
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(report))
    problems = [line for line in doctor_lines if line.startswith("FAIL")]
    print(f"\ngpu-check: {'DRY RUN on CPU, ' if opts.dry_run else ''}{len(results)} step(s) in {report['seconds']:.0f} s; "
          f"summary in {out / 'summary.md'}")  # fmt: skip
    for line in problems:
        print(f"gpu-check: doctor: {line}")
    print("gpu-check: key ratios: " + (" ".join(f"{k}={v:.3f}" for k, v in report["ratios"].items()) or "none"))
    failed = [s for s in results if s["status"] not in ("ok",)] or not wheels["ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
