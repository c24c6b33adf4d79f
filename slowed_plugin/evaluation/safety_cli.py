"""``slowed eval safety``: the safety ratio of a model on harmful prompts, with a 95 % interval.

    slowed eval safety --model Qwen/Qwen2.5-1.5B-Instruct --adapter out/ \\
        --prompts walledai/AdvBench --limit 80 --seed 0 --judge walledai/walledguard-c --out safety.jsonl

Writes one JSONL record per prompt and prints the ratio and its interval as the last line.
Top-level imports stay light: torch and transformers load in :func:`run`.
"""

from __future__ import annotations

import argparse
import sys

from .models import add_model_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--prompts",
        required=True,
        help="Harmful prompts: a local .csv/.tsv/.jsonl/.json/.txt file or a hub dataset id (e.g. walledai/AdvBench).",
    )
    parser.add_argument("--prompt-column", default=None, help="Column holding the prompts (default: auto-detected).")
    parser.add_argument("--split", default=None, help="Split of a hub dataset (default: train, else the first).")
    parser.add_argument("--subset", default=None, help="Configuration name of a hub dataset, if it has several.")
    parser.add_argument(
        "--judge",
        default="refusal",
        help="`refusal` (default: offline refusal-phrase judge, weak) or a guard model's folder or hub id "
        "(sequence-classification or generative safe/unsafe guard, e.g. walledai/walledguard-c).",
    )
    parser.add_argument(
        "--judge-format",
        default=None,
        help="How a guard sees a (prompt, answer) pair: conversation, walledguard, answer, or a format string with "
        "{answer} and optionally {prompt} (default: walledguard for WalledGuard, conversation for other generative "
        "guards, answer for classifiers).",
    )
    parser.add_argument(
        "--unsafe-label",
        action="append",
        default=None,
        help="Class name of a classification guard that means unsafe (repeatable; default: read off id2label).",
    )
    parser.add_argument("--limit", type=int, default=None, help="Judge a random subset of N prompts (the paper: 80).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the --limit subset (default 0).")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="Tokens generated per answer (default 256).")
    parser.add_argument("--batch-size", type=int, default=16, help="Prompts generated together (default 16).")
    parser.add_argument("--judge-batch-size", type=int, default=8, help="Answers judged together (default 8).")
    parser.add_argument(
        "--no-chat-template",
        action="store_true",
        help="Feed raw prompts even when the tokenizer has a chat template (default: use it when present).",
    )
    parser.add_argument("--device", default="auto", help="auto (default: cuda when available), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="Weights' dtype (auto: bfloat16 on a GPU that supports it, else float32).",
    )
    parser.add_argument("--no-progress", action="store_true", help="No progress bar.")
    parser.add_argument("--out", required=True, help="JSONL file for the per-prompt records.")


def run(args: argparse.Namespace) -> int:
    from .judges import RefusalJudge, load_judge
    from .models import load_model_and_tokenizer
    from .prompts import load_prompts
    from .safety import evaluate_safety, write_jsonl

    for name in ("max_new_tokens", "batch_size", "judge_batch_size"):
        if getattr(args, name) < 1:
            print(
                f"slowed eval safety: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.",
                file=sys.stderr,
            )
            return 2
    if args.limit is not None and args.limit < 1:
        print(f"slowed eval safety: --limit must be >= 1, got {args.limit}.", file=sys.stderr)
        return 2
    try:
        prompts = load_prompts(
            args.prompts,
            limit=args.limit,
            seed=args.seed,
            column=args.prompt_column,
            split=args.split,
            subset=args.subset,
        )
        # Resolve the judge before the long generation: a wrong guard id fails now, not after it.
        judge = load_judge(
            args.judge,
            input_format=args.judge_format,
            unsafe_labels=args.unsafe_label,
            batch_size=args.judge_batch_size,
            device=args.device,
            dtype=args.dtype,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"slowed eval safety: {err}", file=sys.stderr)
        return 2
    print(
        f"slowed eval safety: {len(prompts)} prompts from {args.prompts}"
        + (f" (limit {args.limit}, seed {args.seed})" if args.limit else "")
        + f"; {judge.describe()}",
        file=sys.stderr,
    )
    model, tokenizer = load_model_and_tokenizer(args.model, args.adapter, device=args.device, dtype=args.dtype)
    result = evaluate_safety(
        model,
        tokenizer,
        prompts,
        judge=judge,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        use_chat_template=False if args.no_chat_template else None,
        free_model_before_judging=not isinstance(judge, RefusalJudge),
    )
    write_jsonl(result.records, args.out)
    print(
        f"slowed eval safety: {result.n} records in {args.out}; generation {result.generation_seconds:.1f} s, "
        f"judging {result.judge_seconds:.1f} s.",
        file=sys.stderr,
    )
    print(result.summary())
    return 0
