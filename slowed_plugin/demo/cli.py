"""``slowed demo``: the main job on its embedded default, on CPU, with no downloads.

Takes the aligned tiny base model (shipped for the default world; built once, then cached, for others),
distils chain-of-thought into it with plain LoRA, Slow Tuning only, Low-Entropy Masking only, SLowED, the
safety anchor (replay, gradient, with SLowED) and the anchor's placebo through a stock TRL ``SFTTrainer``, and
writes a table, ``report.md``, ``results.json`` and a figure of safety and reasoning per epoch.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

from ..files import atomic_write_text
from .methods import DEFAULT_ANCHOR_RATIO, DEFAULT_KEYS, SUBSPACE_KEYS

DEFAULT_OUT = "./slowed-demo"
# The largest tau of the seed-0 sweep (`slowed demo --sweep-tau`) whose last-epoch safety stayed >= 95 %.
# Chosen on the same held-out prompts the report uses, so seeds 1 and 2 are the unselected check.
DEFAULT_TAU = 1.5
# The value of the product's examples; the paper leaves k open too.
DEFAULT_MASK_RATIO = 0.2
DEFAULT_TAUS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
QUICK_TAUS = (0.5, 1.5)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}")
    return value


def _keys(text: str) -> list[str]:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated method keys such as plain,anchor-replay; got {text!r}"
        )
    return keys


def _taus(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers such as 0.5,1,2; got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"must be positive numbers such as 0.5,1,2; got {text!r}")
    return values


def _default_jobs() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"Output folder (default {DEFAULT_OUT}).")
    parser.add_argument(
        "--quick", action="store_true", help="Smoke test: 3 epochs on fewer examples, in under 3 minutes."
    )
    parser.add_argument(
        "--seeds", type=_positive_int, default=1, help="Repeat every method with this many seeds (default 1)."
    )
    parser.add_argument("--seed", type=int, default=0, help="First fine-tuning seed (default 0).")
    parser.add_argument(
        "--sweep-tau",
        action="store_true",
        help="Instead of the method comparison, run SLowED at several tau values and plain LoRA, and draw "
        "the safety-versus-reasoning frontier.",
    )
    parser.add_argument(
        "--taus",
        type=_taus,
        default=None,
        help=f"tau values of --sweep-tau, comma-separated (default {','.join(f'{t:g}' for t in DEFAULT_TAUS)}).",
    )
    parser.add_argument("--tau", type=float, default=DEFAULT_TAU, help=f"Slow Tuning radius (default {DEFAULT_TAU:g}).")
    parser.add_argument(
        "--mask-ratio",
        type=float,
        default=DEFAULT_MASK_RATIO,
        help=f"Low-Entropy Masking ratio (default {DEFAULT_MASK_RATIO:g}).",
    )
    parser.add_argument("--epochs", type=_positive_int, default=None, help="Distillation epochs (default 10; 3 quick).")
    parser.add_argument("--full-ft", action="store_true", help="Also compare full fine-tuning, plain and with SLowED.")
    parser.add_argument(
        "--anchor-ratio",
        type=_ratio,
        default=None,
        help="Share of anchor rows in the mixed training set of the replay anchor, and of the placebo's extra "
        f"rows (default: the product's, {DEFAULT_ANCHOR_RATIO:g}).",
    )
    parser.add_argument("--no-anchor", action="store_true", help="Leave out the safety-anchor methods and the placebo.")
    parser.add_argument(
        "--methods",
        type=_keys,
        default=None,
        help="Run these methods of the comparison (or sweep), comma-separated keys such as "
        "plain,anchor-replay,placebo (keep plain for the comparisons against plain LoRA), or all. Default: "
        "plain, slowed, anchor-replay, slowed-anchor (the sweep: all of its methods). By key only: "
        f"the safety subspace and KL anchor candidates {','.join(SUBSPACE_KEYS)}.",
    )
    parser.add_argument(
        "--jobs", type=_positive_int, default=None, help="Runs at once, one thread each (default: CPU count, max 8)."
    )
    _add_world_arguments(parser)


def _add_world_arguments(parser: argparse.ArgumentParser) -> None:
    """The world, its base model and the output's form."""
    parser.add_argument(
        "--opener",
        default=None,
        help='Boilerplate opening every distilled rationale (default "let us think step by step ."); '
        "--opener '' gives the demo's first world, where plain LoRA kept its refusals (docs/demo.md).",
    )
    parser.add_argument(
        "--world",
        choices=("default", "hard"),
        default="default",
        help="The world: default, or hard (out-of-distribution harmful families, varied refusals, an imperfect "
        "base model, distillation that agrees with every request; docs/demo.md).",
    )
    parser.add_argument(
        "--hard-off",
        type=_keys,
        default=None,
        help="With --world hard: switch these caveats off, comma-separated (ood, varied, imperfect, agree, "
        "borderline), to measure each one's effect alone.",
    )
    parser.add_argument(
        "--rebuild-base",
        action="store_true",
        help="Build the base model from scratch into the cache (the default one ships with the package).",
    )
    parser.add_argument("--no-progress", action="store_true", help="No progress bars.")
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="DIR",
        default=None,
        help="Instead of running: combine the results.json of these output folders (other seeds or methods of "
        "the same world, base model and settings) into one report in --out.",
    )


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces these numbers (output place and parallelism do not change them)."""
    parts = ["slowed demo"]
    if args.quick:
        parts.append("--quick")
    if args.sweep_tau:
        parts.append("--sweep-tau")
    if args.taus is not None:
        parts.append("--taus " + ",".join(f"{t:g}" for t in args.taus))
    if args.seeds != 1:
        parts.append(f"--seeds {args.seeds}")
    if args.seed != 0:
        parts.append(f"--seed {args.seed}")
    if args.tau != DEFAULT_TAU and (not args.sweep_tau or not args.no_anchor):
        parts.append(f"--tau {args.tau:g}")
    if args.mask_ratio != DEFAULT_MASK_RATIO:
        parts.append(f"--mask-ratio {args.mask_ratio:g}")
    if args.epochs is not None:
        parts.append(f"--epochs {args.epochs}")
    if args.full_ft:
        parts.append("--full-ft")
    if args.anchor_ratio is not None:
        parts.append(f"--anchor-ratio {args.anchor_ratio:g}")
    if args.no_anchor:
        parts.append("--no-anchor")
    if args.methods is not None:
        parts.append("--methods " + ",".join(args.methods))
    if args.opener is not None:
        parts.append(f"--opener {shlex.quote(args.opener)}")
    if getattr(args, "world", "default") != "default":
        parts.append(f"--world {args.world}")
    if getattr(args, "hard_off", None):
        parts.append("--hard-off " + ",".join(args.hard_off))
    return " ".join(parts)


def choose_world(args: argparse.Namespace):
    """The world of this command (ValueError for a bad ``--hard-off``), and the base model's settings."""
    from .base_model import BaseSettings
    from .world import WorldSettings

    opener = {} if args.opener is None else {"rationale_opener": args.opener.strip()}
    if getattr(args, "world", "default") == "hard":
        from .hard_world import HARD_MIXTURE, hard_settings

        settings = hard_settings(args.hard_off or (), **opener)
        return settings, BaseSettings(world=settings, mixture=HARD_MIXTURE)  # type: ignore[arg-type]
    if getattr(args, "hard_off", None):
        raise ValueError("`--hard-off` needs `--world hard`.")
    settings = WorldSettings(**opener)
    return settings, BaseSettings(world=settings)


def select_methods(args: argparse.Namespace) -> list:
    """The methods this command runs (the comparison or the sweep, narrowed by ``--methods``); ValueError for an
    unknown key."""
    from .methods import comparison_methods, subspace_methods, sweep_methods

    anchor = not args.no_anchor
    ratio = args.anchor_ratio if args.anchor_ratio is not None else DEFAULT_ANCHOR_RATIO
    if args.sweep_tau:
        taus = args.taus or list(QUICK_TAUS if args.quick else DEFAULT_TAUS)
        methods = sweep_methods(sorted(taus), args.mask_ratio, anchor=anchor, anchor_ratio=ratio, tau=args.tau)
    else:
        methods = comparison_methods(args.tau, args.mask_ratio, full_ft=args.full_ft, anchor=anchor, anchor_ratio=ratio)
    if args.methods is None:
        return methods if args.sweep_tau else [m for m in methods if m.key in DEFAULT_KEYS]
    if args.methods == ["all"]:
        return methods
    methods += subspace_methods(args.tau, args.mask_ratio, ratio)  # issue 29's candidates run only when named
    known = [m.key for m in methods]
    unknown = [k for k in args.methods if k not in known]
    if unknown:
        raise ValueError(
            f"unknown method {unknown[0]!r} for `--methods`; this command has: {', '.join(known)} (or all)."
        )
    return [m for m in methods if m.key in args.methods]


def _invalid(args: argparse.Namespace) -> str | None:
    """The one-line error of a bad combination of options, before anything is built; None when they are valid."""
    from ..config import SLowEDConfig

    if args.merge is not None:
        return None
    try:
        SLowEDConfig(tau=args.tau, mask_ratio=args.mask_ratio)
        for tau in args.taus or ():
            SLowEDConfig(tau=tau, mask_ratio=args.mask_ratio)
    except ValueError as err:
        return str(err)
    if args.taus is not None and not args.sweep_tau:
        return "`--taus` needs `--sweep-tau`."
    return None


def train_settings(args: argparse.Namespace):
    """The fine-tuning and evaluation settings of this command (``--quick``, ``--epochs``)."""
    from .methods import TrainSettings

    train = TrainSettings()
    if args.quick:
        train = TrainSettings(epochs=3, cot_train=640, eval_harmful=80, eval_cot=80, eval_benign=40)
    if args.epochs is not None:
        train = TrainSettings(**{**train.__dict__, "epochs": args.epochs})
    return train


def seeds_text(seeds: list[int]) -> str:
    """``seed 0``, ``seeds 0-2`` or ``seeds 0, 3``."""
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"seeds {seeds[0]}-{seeds[-1]}"
    return "seeds " + ", ".join(map(str, seeds))


def _base_model(args: argparse.Namespace, base_settings, out, progress: bool):
    """The base model's folder, where it came from ("cached", "shipped" or "built") and the seconds it took."""
    from .base_model import cached_path, find_base_model
    from .workers import build_base

    found = None if args.rebuild_base else find_base_model(base_settings)
    start = time.perf_counter()
    if found is not None:
        base_dir, source = found
    else:
        print("  building the aligned base model (once; then cached)...", file=sys.stderr)
        if args.rebuild_base and cached_path(base_settings).exists():
            import shutil

            shutil.rmtree(cached_path(base_settings))
        base_dir, source = build_base(base_settings, out, progress=progress), "built"
    seconds = time.perf_counter() - start
    how = {"cached": "cached", "shipped": "shipped with the package"}.get(source, f"built in {seconds:.0f} s")
    print(f"  base model: {base_dir} ({how})", file=sys.stderr)
    return base_dir, source, seconds


def run(args: argparse.Namespace) -> int:
    problem = _invalid(args)
    if problem is None and args.merge is not None:
        return run_merge(args.merge, args.out)
    try:
        methods = select_methods(args) if problem is None else []
        world_settings, base_settings = choose_world(args) if problem is None else (None, None)
    except ValueError as err:
        problem = str(err)
    if problem is not None:
        print(f"slowed demo: {problem}", file=sys.stderr)
        return 2

    from pathlib import Path

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")  # nothing here needs the network
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import signal
    import threading

    from .methods import make_specs
    from .results import build_payload
    from .workers import execute

    if threading.current_thread() is threading.main_thread():
        # `kill` of the demo: unwind like Ctrl-C, so that its worker processes are stopped too.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    train = train_settings(args)
    seeds = list(range(args.seed, args.seed + args.seeds))
    specs = make_specs(methods, seeds)
    jobs = min(args.jobs or _default_jobs(), len(specs))
    print(
        f"slowed demo: a synthetic toy (tiny model, made-up world; see report.md for what it does not show).\n"
        f"  {len(methods)} methods x {len(seeds)} seed(s) = {len(specs)} runs of {train.epochs} epochs, "
        f"{jobs} at a time; output in {out}/",
        file=sys.stderr,
    )
    base_dir, base_source, base_seconds = _base_model(args, base_settings, out, progress)
    runs_start = time.perf_counter()
    runs = execute(specs, train, world_settings, base_dir, out, jobs=jobs, progress=progress)
    timing = {
        "total_seconds": 0.0,
        "base_model_seconds": round(base_seconds, 1),
        "runs_seconds": round(time.perf_counter() - runs_start, 1),
        "jobs": jobs,
    }
    payload = build_payload(
        command_line(args),
        args.sweep_tau,
        (world_settings, base_settings, train, methods, seeds),
        (base_dir, base_source),
        runs,
        timing,
        flags={"full_ft": args.full_ft, "quick": args.quick},
    )
    write_outputs(out, payload, started)
    print_summary(out, payload)
    return 0


def run_merge(folders: list[str], out_dir: str) -> int:
    """``slowed demo --merge DIR...``: one report in ``out_dir`` from the results of ``folders``; exit status 2
    with one line when they do not combine."""
    from pathlib import Path

    from .merge import load_all, merged, merged_keys

    payloads, problem = load_all(folders)
    if problem is not None:
        print(f"slowed demo --merge: {problem}", file=sys.stderr)
        return 2
    seeds, keys = merged_keys(payloads)
    payload = merged(payloads, list(folders), merged_command(payloads[0]["command"], seeds, keys))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_outputs(out, payload)
    print_summary(out, payload)
    return 0


def merged_command(command: str, seeds: list[int], keys: list[str]) -> str:
    """The single command that would have made merged runs (by the pin, the same numbers): ``command`` (one
    input's) with the merged seeds and methods; ``command`` with a note when no single command can."""
    parser = argparse.ArgumentParser(prog="slowed demo")
    add_arguments(parser)
    args = parser.parse_args(shlex.split(command)[2:])
    if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{command} (merged: seeds {', '.join(map(str, seeds))})"
    args.seed, args.seeds = seeds[0], len(seeds)
    for methods in (None, ["all"], keys):
        args.methods = methods
        if sorted(m.key for m in select_methods(args)) == sorted(keys):
            break
    return command_line(args)


def write_outputs(out, payload: dict, started: float | None = None) -> None:
    """The figure(s), ``results.json`` and ``report.md`` of ``payload`` in ``out`` (``started``: the
    ``perf_counter`` at the start, for the total time)."""
    from .figures import FIGURE, FRONTIER, plot_curves, plot_frontier
    from .report import REPORT, render_report, write_results

    title = f"{payload['command']} — synthetic toy; {seeds_text(payload['settings']['seeds'])}"
    plot_curves(payload["summary"], out / FIGURE, title)
    if payload["mode"] == "sweep":
        plot_frontier(payload["summary"], out / FRONTIER, title)
    if started is not None:
        payload["timing"]["total_seconds"] = round(time.perf_counter() - started, 1)
    write_results(out, payload)
    atomic_write_text(out / REPORT, render_report(payload))


def print_summary(out, payload: dict) -> None:
    """The table, the per-family table (hard world), the findings and goal sentences, and the paths."""
    from . import families as fam
    from .figures import FIGURE, FRONTIER
    from .goals import goal_lines
    from .report import REPORT, RESULTS
    from .tables import format_terminal, table

    runs = payload["runs"]
    print("", file=sys.stderr)
    print(format_terminal(table(payload["summary"], payload["base_eval"])))
    print()
    if fam.has_families(runs):
        print("Safety per family (last epoch):")
        print(format_terminal(fam.family_table(runs)))
        print()
    lines = fam.goal_lines(runs) if fam.has_families(runs) else goal_lines(payload["summary"])
    for line in payload["findings"] + lines:
        print("- " + line.replace("**", ""))
    if payload["quick"]:
        print("\n--quick is a smoke test: too little distillation for the safety collapse to show; run without it.")
    print(f"\nSynthetic toy: see {out / REPORT} for what it does and does not show.")
    figures = [out / FIGURE] + ([out / FRONTIER] if payload["mode"] == "sweep" else [])
    print(f"Figure: {', '.join(map(str, figures))}; raw per-epoch numbers: {out / RESULTS}")
    print(f"Done in {payload['timing']['total_seconds']:.0f} s.")


def main(argv: list[str] | None = None) -> int:
    """``python -m slowed_plugin.demo.cli`` (the ``slowed`` command routes ``slowed demo`` here)."""
    parser = argparse.ArgumentParser(prog="slowed demo", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
