"""The two views of inspected examples: coloured terminal text with a table, and a standalone HTML page."""

from __future__ import annotations

import html

from .score import InspectedExample

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
