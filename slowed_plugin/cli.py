"""The ``slowed`` command line: one sub-command per module, imported only when it runs.

Each sub-command module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help); nested names ("eval safety") become nested sub-commands.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "slowed_plugin.demo.cli",
        "CoT distillation that costs safety, and what SLowED does about it (CPU, no downloads).",
    ),
    "quickstart": ("slowed_plugin.quickstart", "A short SLowED run of a tiny local model (CPU, seconds)."),
    "check": ("slowed_plugin.axolotl.check", "Check that an Axolotl recipe will train with SLowED on."),
    "eval safety": ("slowed_plugin.evaluation.safety_cli", "Safety ratio of a model on harmful prompts."),
    "inspect": ("slowed_plugin.inspector.cli", "Show which target tokens Low-Entropy Masking drops."),
}


def _offline_defaults() -> None:
    # Telemetry off unless the user asked for it; nothing here needs the network.
    os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slowed", description="SLowED: safer chain-of-thought distillation.")
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
        sub = parent.add_parser(parts[-1], help=help_text, description=help_text)
        sub.set_defaults(_module=module)
        try:
            importlib.import_module(module).add_arguments(sub)
        except ImportError as err:  # an optional extra is missing: say so when the command runs
            sub.set_defaults(_import_error=err)
            sub.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    _offline_defaults()
    args = build_parser().parse_args(argv)
    error = getattr(args, "_import_error", None)
    if error is not None:
        print(f"slowed: this command needs a missing package ({error}); install slowed-plugin[demo].", file=sys.stderr)
        return 2
    from .config import SLowEDConfigError

    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except SLowEDConfigError as err:  # bad input: one line, no traceback
        print(f"slowed: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
