"""``slowed doctor``: check this machine for SLowED, one line per finding; exit 1 on a problem.

slowed doctor                    # versions, device, both fused loss paths vs the reference, 4-bit (CUDA)
slowed doctor --device cpu       # on the CPU even where a GPU is present
slowed doctor --bench            # + a stock vs SLowED training step, side by side (needs trl)
slowed doctor --json report.json
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time

# Light imports only: the parser imports this module for `slowed --help`; torch comes in `run`.
from ..bench.step_pairs import SHAPES

DEVICES = ("auto", "cpu", "cuda")
EXIT_BAD_INPUT = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", help=f"where to run the checks: {', '.join(DEVICES)} (auto: cuda when present)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the findings as JSON to FILE")
    parser.add_argument(
        "--bench",
        action="store_true",
        help="also time a stock TRL SFTTrainer step against the same + SLowEDCallback, side by side (needs trl)",
    )
    parser.add_argument(
        "--bench-shape",
        default="qwen2.5-0.5b",
        help=f"model shape of --bench, built from a config (no download): {', '.join(SHAPES)}",
    )
    parser.add_argument("--bench-pairs", type=int, default=None, help="step pairs of --bench (default: 5 GPU, 3 CPU)")
    parser.add_argument(
        "--skip-kernels", action="store_true", help="skip the loss-kernel checks (their compile takes a while on CPU)"
    )


def _bad_input(args: argparse.Namespace) -> str | None:
    """One line naming the option, its value and what is allowed; None when the arguments are fine."""
    if args.device not in DEVICES:
        return f"slowed doctor: --device {args.device!r} is not one of {', '.join(DEVICES)}"
    if args.bench_shape not in SHAPES:
        return f"slowed doctor: --bench-shape {args.bench_shape!r} is not one of {', '.join(SHAPES)}"
    if args.bench_pairs is not None and args.bench_pairs < 1:
        return f"slowed doctor: --bench-pairs must be at least 1; got {args.bench_pairs}"
    if args.bench and importlib.util.find_spec("trl") is None:
        return "slowed doctor --bench needs trl: pip install 'slowed-plugin[trl]'"
    return None


def run(args: argparse.Namespace) -> int:
    problem = _bad_input(args)
    if problem is not None:
        print(problem, file=sys.stderr)
        return EXIT_BAD_INPUT
    from .environment import platform_findings, resolve_device, versions
    from .findings import exit_code, write_json

    started = time.perf_counter()
    device = resolve_device(args.device)
    findings = []

    def report(new):
        for finding in new:
            print(finding.line(), flush=True)
        findings.extend(new)

    report(versions())
    report(platform_findings(device))
    if not any(f.check == "device" and f.status == "FAIL" for f in findings):
        if not args.skip_kernels:
            from .kernels import kernel_findings

            report(kernel_findings(device))
            from .fused_head import fused_head_findings

            report(fused_head_findings(device))
        from .quantized import quantized_findings

        report(quantized_findings(device))
        if args.bench:
            from .bench import bench_findings

            report(bench_findings(device, args.bench_shape, args.bench_pairs))
    code = exit_code(findings)
    counts = {s: sum(f.status == s for f in findings) for s in ("ok", "warn", "FAIL", "skip")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    print(
        f"slowed doctor: {summary} in {time.perf_counter() - started:.0f} s; "
        + ("PROBLEMS FOUND" if code else "no problem found")
    )
    if args.json:
        write_json(args.json, findings, {"device": device, "argv": sys.argv[1:]})
        print(f"slowed doctor: findings written to {args.json}")
    return code
