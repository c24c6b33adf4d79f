"""The ``slowed`` command line: one sub-command per module.

Each sub-command module exposes ``add_arguments(parser)`` and ``run(args) -> int``. The parser imports every
sub-command module to read its options, so those modules stay light: torch, transformers and the trainers are
imported inside ``run``, when that command runs (tests/test_repo.py checks the import stays light).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

# name -> (module, one-line help); nested names ("eval safety") become nested sub-commands.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "slowed_plugin.demo.cli",
        "CoT distillation that costs safety, and what SLowED does about it (CPU, no downloads).",
    ),
    "quickstart": ("slowed_plugin.quickstart", "A short SLowED run of a tiny local model (CPU, about a minute)."),
    "check": ("slowed_plugin.axolotl.check", "Check that an Axolotl recipe will train with SLowED on."),
    "eval safety": ("slowed_plugin.evaluation.safety_cli", "Safety ratio of a model on harmful prompts."),
    "inspect": ("slowed_plugin.inspector.cli", "Show which target tokens Low-Entropy Masking drops."),
    "recipes": ("slowed_plugin.recipes_cli", "List the bundled Axolotl recipes, or copy one out."),
    "doctor": ("slowed_plugin.doctor.cli", "Check this machine: versions, device, loss kernels, 4-bit, step speed."),
}

# name -> (packages the command imports beyond the base install, the extra that brings them).
NEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    "demo": (("matplotlib", "trl"), "demo"),
    "quickstart": (("trl",), "trl"),
    "check": (("axolotl",), "axolotl"),
    # The inspector prepares rows with TRL's own helpers (is_conversational, maybe_convert_to_chatml), so that
    # it shows what SFTTrainer trains on: the dependency is the point, not an accident.
    "inspect": (("trl",), "trl"),
}
VERBOSE_ENV = "SLOWED_VERBOSE"


def missing_extra(command: str) -> str | None:
    """The one line saying which extra ``command`` needs, or None when its packages are installed.

    Checked before any work, so that a long run does not die on an import at its end.
    """
    packages, extra = NEEDS.get(command, ((), ""))
    missing = [name for name in packages if not _installed(name)]
    if not missing:
        return None
    return f"slowed {command} needs {' and '.join(missing)}: pip install 'slowed-plugin[{extra}]'"


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def _offline_defaults() -> None:
    # Telemetry off unless the user asked for it; nothing here needs the network.
    os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slowed", description="SLowED: safer chain-of-thought distillation.")
    # Accepted before and after the sub-command; SUPPRESS keeps the sub-parser from resetting the top one.
    verbose_help = (
        f"Show third-party import noise (torchao, torch, bitsandbytes) hidden by default; or {VERBOSE_ENV}=1."
    )
    verbose = argparse.ArgumentParser(add_help=False)
    for target in (parser, verbose):
        target.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
    top = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, (module, help_text) in COMMANDS.items():
        parts = name.split()
        parent = top
        for depth, part in enumerate(parts[:-1]):
            key = " ".join(parts[: depth + 1])
            if key not in groups:
                group = parent.add_parser(part, help=f"{part} sub-commands")
                groups[key] = group.add_subparsers(dest=f"command_{depth + 1}", required=True)
            parent = groups[key]
        sub = parent.add_parser(parts[-1], help=help_text, description=help_text, parents=[verbose])
        sub.set_defaults(_module=module, _command=name)
        try:
            importlib.import_module(module).add_arguments(sub)
        except ImportError as err:  # an optional extra is missing: say so when the command runs
            sub.set_defaults(_import_error=err)
            sub.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    _offline_defaults()
    args = build_parser().parse_args(argv)
    needed = missing_extra(args._command)
    if needed is not None:
        print(needed, file=sys.stderr)
        return 2
    error = getattr(args, "_import_error", None)
    if error is not None:
        extra = NEEDS[args._command][1] if args._command in NEEDS else ""
        target = f"slowed-plugin[{extra}]" if extra else "slowed-plugin"
        print(f"slowed {args._command}: a package is missing ({error}): pip install '{target}'", file=sys.stderr)
        return 2
    verbose = getattr(args, "verbose", False) or os.environ.get(VERBOSE_ENV, "").strip() not in ("", "0")
    if not verbose:
        from .quiet import silence_import_noise

        silence_import_noise()
    from .config import SLowEDConfigError

    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except SLowEDConfigError as err:  # bad input: one line, no traceback
        print(f"slowed: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
