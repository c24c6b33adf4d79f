"""``slowed inspect``: which target tokens Low-Entropy Masking would drop, with each token's entropy.

    slowed inspect --model PATH_OR_ID [--adapter PATH] --data train.jsonl --mask-ratio 0.2 --html mask.html

Examples are tokenised the way TRL's ``SFTTrainer`` does (prompt/completion rows train on the
completion only, ``messages`` and ``text`` rows on every token), the model scores them in one
forward pass in eval mode (no dropout), and the selection is the training code's own
(:func:`slowed_plugin.core.masking.mask_low_entropy_targets`), so what is shown is what training drops
for these logits. In the terminal dropped tokens are red and struck through (``[-token-]`` without
colour), kept targets green, the prompt dim; a table lists every target with its entropy. The HTML
file is standalone: each token carries its entropy above it and in its tooltip.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100
BUNDLED_DATA = os.path.join(os.path.dirname(__file__), "data", "cot_tiny.jsonl")


@dataclass
class InspectedExample:
    """One example: per input token its display text, whether it is a training target, the entropy
    of the prediction of it (targets only), and whether masking drops it."""

    tokens: list[str]
    token_ids: list[int]
    is_target: list[bool]
    entropy: list[float | None]
    dropped: list[bool]
    n_targets: int = 0
    n_dropped: int = 0
    threshold: float | None = None  # highest entropy dropped in this example


# ---------------------------------------------------------------------- tokenising like TRL
def _ids(encoded: Any) -> list[int]:
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return list(encoded)


def encode_example(tokenizer: Any, row: Any, max_length: int | None = None) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of one training row, labels -100 where the trainer does not train.

    Rows: ``{"prompt", "completion"}`` as strings (completion only) or as message lists (chat
    template, completion only); ``{"messages"}`` (chat template, every token); ``{"text"}`` or a
    plain string (every token). An EOS token ends the text as TRL adds it.
    """
    eos = tokenizer.eos_token or ""
    if isinstance(row, str):
        row = {"text": row}
    if not isinstance(row, dict):
        raise ValueError(
            f"An example must be a string or an object with prompt/completion, messages or text; got {row!r}."
        )
    if "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, list):
            prompt_ids = _ids(tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True))
            full = _ids(tokenizer.apply_chat_template(prompt + completion, tokenize=True))
        else:
            if eos and not completion.endswith(eos):
                completion = completion + eos
            prompt_ids = _ids(tokenizer(prompt))
            full = _ids(tokenizer(prompt + completion))
        labels = [IGNORE_INDEX] * len(prompt_ids) + full[len(prompt_ids) :]
    elif "messages" in row:
        full = _ids(tokenizer.apply_chat_template(row["messages"], tokenize=True))
        labels = list(full)
    elif "text" in row:
        text = row["text"]
        full = _ids(tokenizer(text + eos if eos and not text.endswith(eos) else text))
        labels = list(full)
    else:
        raise ValueError(f"An example needs `prompt` and `completion`, `messages`, or `text`; got keys {sorted(row)}.")
    if max_length is not None:
        full, labels = full[:max_length], labels[:max_length]
    return full, labels


def token_texts(tokenizer: Any, ids: list[int]) -> list[str]:
    """Display text of each token: what it adds to the decoded text (spaces included)."""
    texts, previous = [], ""
    for i in range(len(ids)):
        current = tokenizer.decode(ids[: i + 1], skip_special_tokens=False)
        piece = current[len(previous) :] if current.startswith(previous) else tokenizer.decode([ids[i]])
        texts.append(piece)
        previous = current
    return texts


# ---------------------------------------------------------------------- scoring
def inspect_examples(
    model: Any,
    tokenizer: Any,
    rows: list[Any],
    mask_ratio: float,
    mask_scope: str = "sequence",
    max_length: int | None = None,
) -> list[InspectedExample]:
    """Score ``rows`` in one padded batch and report, per token, entropy and whether it is dropped."""
    import torch

    from ..config import SLowEDConfig
    from ..core.masking import mask_low_entropy_targets, token_entropy
    from ..evaluation.generation import model_device

    SLowEDConfig(tau=None, mask_ratio=mask_ratio, mask_scope=mask_scope)  # same validation as training
    if not rows:
        raise ValueError("No examples to inspect.")
    encoded = [encode_example(tokenizer, row, max_length) for row in rows]
    width = max(len(ids) for ids, _ in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, (ids, labs) in enumerate(encoded):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(labs)] = torch.tensor(labs)
        attention[i, : len(ids)] = 1
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
    finally:
        if was_training:
            model.train()
    masked, _ = mask_low_entropy_targets(logits, labels.to(logits.device), mask_ratio, mask_scope)
    entropy = token_entropy(logits[:, :-1]).cpu()
    targets = labels[:, 1:]
    dropped = (targets != IGNORE_INDEX) & (masked.cpu() == IGNORE_INDEX)

    out = []
    for i, (ids, _labs) in enumerate(encoded):
        n = len(ids)
        is_target = [False] + (targets[i, : n - 1] != IGNORE_INDEX).tolist()
        drop = [False] + dropped[i, : n - 1].tolist()
        ent: list[float | None] = [None] + [
            float(e) if t else None for e, t in zip(entropy[i, : n - 1].tolist(), is_target[1:], strict=True)
        ]
        dropped_entropies = [e for e, d in zip(ent, drop, strict=True) if d and e is not None]
        out.append(
            InspectedExample(
                tokens=token_texts(tokenizer, ids),
                token_ids=list(ids),
                is_target=is_target,
                entropy=ent,
                dropped=drop,
                n_targets=sum(is_target),
                n_dropped=sum(drop),
                threshold=max(dropped_entropies) if dropped_entropies else None,
            )
        )
    return out


# ---------------------------------------------------------------------- rendering
_RESET, _DIM, _RED, _GREEN, _STRIKE, _BOLD = "\x1b[0m", "\x1b[2m", "\x1b[31m", "\x1b[32m", "\x1b[9m", "\x1b[1m"


def _visible(text: str) -> str:
    return text.replace("\n", "\\n").replace("\t", "\\t")


def render_terminal(
    examples: list[InspectedExample],
    mask_ratio: float,
    mask_scope: str = "sequence",
    color: bool = True,
    table: bool = True,
) -> str:
    """Text report: each example inline (prompt dim, kept green, dropped red struck through, or
    ``[-token-]`` without colour), then a table of its targets with their entropies."""
    lines = [
        f"Low-Entropy Masking preview: mask_ratio={mask_ratio:g}, scope {mask_scope}; entropies in nats "
        "(the entropy of the model's prediction of that token)."
    ]
    for number, ex in enumerate(examples, 1):
        floor_note = f" = floor({mask_ratio:g} x {ex.n_targets})" if mask_scope == "sequence" else ""
        threshold = f", entropy threshold {ex.threshold:.4f}" if ex.threshold is not None else ""
        lines.append("")
        lines.append(
            (_BOLD if color else "")
            + f"example {number}: {ex.n_targets} target tokens, {ex.n_dropped} dropped{floor_note}{threshold}"
            + (_RESET if color else "")
        )
        pieces = []
        for text, target, drop in zip(ex.tokens, ex.is_target, ex.dropped, strict=True):
            if not color:
                pieces.append(f"[-{text}-]" if drop else text)
            elif drop:
                pieces.append(f"{_RED}{_STRIKE}{text}{_RESET}")
            elif target:
                pieces.append(f"{_GREEN}{text}{_RESET}")
            else:
                pieces.append(f"{_DIM}{text}{_RESET}")
        lines.append("  " + "".join(pieces))
        if table:
            lines.append(f"  {'pos':>5}  {'token':<20} {'entropy':>9}  mask")
            for pos, (text, ent, drop) in enumerate(zip(ex.tokens, ex.entropy, ex.dropped, strict=True)):
                if ent is None:
                    continue
                status = "dropped" if drop else "kept"
                if color:
                    status = f"{_RED}{status}{_RESET}" if drop else f"{_GREEN}{status}{_RESET}"
                lines.append(f"  {pos:>5}  {_visible(text)[:20]:<20} {ent:>9.4f}  {status}")
    total_targets = sum(ex.n_targets for ex in examples)
    total_dropped = sum(ex.n_dropped for ex in examples)
    lines.append("")
    lines.append(f"total: {total_targets} target tokens, {total_dropped} dropped.")
    return "\n".join(lines) + "\n"


def render_html(
    examples: list[InspectedExample], mask_ratio: float, mask_scope: str = "sequence", title: str = "SLowED mask"
) -> str:
    """A standalone HTML page: tokens with their entropy above them (ruby text) and in the tooltip;
    targets shaded by entropy (white = confident), dropped ones struck through in red."""
    max_entropy = max((e for ex in examples for e in ex.entropy if e is not None), default=1.0) or 1.0
    parts = []
    for number, ex in enumerate(examples, 1):
        threshold = f", entropy threshold {ex.threshold:.4f}" if ex.threshold is not None else ""
        spans = []
        for pos, (text, ent, drop) in enumerate(zip(ex.tokens, ex.entropy, ex.dropped, strict=True)):
            shown = html.escape(text).replace("\n", "&#8629;<br>")
            if ent is None:
                spans.append(f'<span class="ctx">{shown}</span>')
                continue
            shade = 100 - round(45 * min(ent / max_entropy, 1.0))  # lightness: confident = white-ish
            cls = "tok dropped" if drop else "tok kept"
            tip = f"position {pos}, entropy {ent:.4f} nats, {'dropped' if drop else 'kept'}"
            spans.append(
                f'<ruby class="{cls}" style="background:hsl(210,80%,{shade}%)" title="{tip}">{shown}'
                f"<rt>{ent:.2f}</rt></ruby>"
            )
        parts.append(
            f'<section><h2>Example {number}</h2><p class="meta">{ex.n_targets} target tokens, '
            f'{ex.n_dropped} dropped{threshold}</p><div class="text">{"".join(spans)}</div></section>'
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; color: #222; }}
.text {{ font-family: ui-monospace, monospace; line-height: 2.6; white-space: pre-wrap; }}
.ctx {{ color: #999; }}
ruby.tok {{ padding: 0 1px; border-radius: 3px; }}
ruby.dropped {{ text-decoration: line-through; color: #b00; outline: 1px solid #b00; }}
ruby rt {{ font-size: 0.6em; color: #555; }}
.meta {{ color: #555; margin: 0.2em 0; }}
.legend span {{ margin-right: 1.5em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Low-Entropy Masking with <code>mask_ratio={mask_ratio:g}</code>, scope <code>{html.escape(mask_scope)}</code>.
Each target token shows the entropy (nats) of the model's prediction of it; the lowest-entropy share is left out of the loss.</p>
<p class="legend"><span class="ctx">grey: not a target (prompt)</span>
<span><ruby class="tok kept" style="background:hsl(210,80%,80%)">kept<rt>0.93</rt></ruby> kept target (darker = less confident)</span>
<span><ruby class="tok dropped" style="background:hsl(210,80%,99%)">dropped<rt>0.01</rt></ruby> dropped</span></p>
{"".join(parts)}
</body></html>
"""


# ---------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="Model folder or hub id (a folder holding an adapter works too)."
    )
    parser.add_argument("--adapter", default=None, help="PEFT adapter folder or hub id applied on top of --model.")
    parser.add_argument(
        "--data",
        default=None,
        help="Training examples: a .jsonl/.json file or hub dataset id with prompt/completion, messages or text rows "
        "(default: the bundled chain-of-thought sample).",
    )
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
    source = args.data or BUNDLED_DATA
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
        with open(args.html, "w", encoding="utf-8") as handle:
            handle.write(render_html(examples, args.mask_ratio, args.mask_scope, title=title))
        print(f"HTML written to {args.html}")
    return 0
