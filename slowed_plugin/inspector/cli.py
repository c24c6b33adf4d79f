"""``slowed inspect``: the command line over :mod:`.score` and :mod:`.render`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..data import COT_TINY
from ..evaluation.models import add_model_arguments
from ..files import atomic_write_text
from .render import render_html, render_terminal
from .score import inspect_examples

_DATA_HELP = (
    "Training examples: a .jsonl/.json file or hub dataset id with prompt/completion, messages or text rows "
    "(default: the bundled chain-of-thought sample)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--data", default=None, help=_DATA_HELP)
    parser.add_argument("--split", default="train", help="Split of a hub dataset (default train).")
    parser.add_argument(
        "--text", action="append", default=None, help="An example given inline (repeatable); trains on every token."
    )
    parser.add_argument("--examples", type=int, default=3, help="How many examples to show (default 3).")
    parser.add_argument("--start", type=int, default=0, help="Index of the first example (default 0).")
    parser.add_argument("--mask-ratio", type=float, default=0.2, help="Low-Entropy Masking ratio k (default 0.2).")
    parser.add_argument(
        "--mask-scope", default="sequence", choices=("sequence", "batch"), help="Masking scope (default sequence)."
    )
    parser.add_argument("--max-length", type=int, default=1024, help="Truncate examples to this many tokens.")
    parser.add_argument("--html", default=None, help="Also write a standalone HTML file here.")
    parser.add_argument(
        "--color", default="auto", choices=("auto", "always", "never"), help="Terminal colours (auto: when a terminal)."
    )
    parser.add_argument("--no-table", action="store_true", help="Only the coloured text, no per-token table.")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, ...")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))


def _load_rows(args: argparse.Namespace) -> list[Any]:
    import json

    if args.text:
        return list(args.text)
    source = args.data or str(COT_TINY)
    if source.lower().endswith((".jsonl", ".json")) and not os.path.isfile(source):
        raise FileNotFoundError(f"Example file {source} does not exist.")
    if os.path.isfile(source):
        with open(source, encoding="utf-8") as handle:
            if source.endswith(".jsonl"):
                rows = [json.loads(line) for line in handle if line.strip()]
            else:
                rows = json.load(handle)
    else:
        import datasets

        rows = list(
            datasets.load_dataset(source, split=args.split).select(range(args.start, args.start + args.examples))
        )
        return rows
    return rows[args.start : args.start + args.examples]


def run(args: argparse.Namespace) -> int:
    from ..evaluation.models import load_model_and_tokenizer

    if args.examples < 1:
        print(f"slowed inspect: --examples must be >= 1, got {args.examples}.", file=sys.stderr)
        return 2
    try:
        from ..config import SLowEDConfig

        SLowEDConfig(tau=None, mask_ratio=args.mask_ratio, mask_scope=args.mask_scope)
        rows = _load_rows(args)
    except (ValueError, OSError) as err:
        print(f"slowed inspect: {err}", file=sys.stderr)
        return 2
    if not rows:
        print("slowed inspect: no examples (check --data, --start and --examples).", file=sys.stderr)
        return 2
    model, tokenizer = load_model_and_tokenizer(args.model, args.adapter, device=args.device, dtype=args.dtype)
    try:
        examples = inspect_examples(model, tokenizer, rows, args.mask_ratio, args.mask_scope, args.max_length)
    except ValueError as err:
        print(f"slowed inspect: {err}", file=sys.stderr)
        return 2
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    sys.stdout.write(render_terminal(examples, args.mask_ratio, args.mask_scope, color=color, table=not args.no_table))
    if args.html:
        title = f"SLowED mask: {os.path.basename(os.path.normpath(args.adapter or args.model))}"
        atomic_write_text(args.html, render_html(examples, args.mask_ratio, args.mask_scope, title=title))
        print(f"HTML written to {args.html}")
    return 0
