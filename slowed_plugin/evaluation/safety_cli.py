"""``slowed eval safety``: the safety ratio of a model on harmful prompts, with a 95 % interval.

    slowed eval safety --model Qwen/Qwen2.5-1.5B-Instruct --adapter out/ \\
        --prompts walledai/AdvBench --limit 80 --seed 0 --judge walledai/walledguard-c --out safety.jsonl

Writes one JSONL record per prompt and prints the ratio and its interval as the last line.
Top-level imports stay light: torch and transformers load in :func:`run`.

Durable: each judged answer is appended to ``--out`` (and flushed) as it is judged, and generated
answers to ``OUT.answers.partial`` before judging, so an interrupted run loses at most one batch.
Running the same command again resumes: prompts already in ``--out`` are skipped, and the summary is
computed over all records, the same numbers as an uninterrupted run. ``OUT.settings.json`` records
what produced ``--out``; a rerun with other settings is refused with one line naming the first
differing setting.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Any

from .models import add_model_arguments

# The arguments that decide a record; a resumed run must match them (batch sizes, device, progress do not).
SETTINGS = (
    "model",
    "adapter",
    "prompts",
    "prompt_column",
    "split",
    "subset",
    "limit",
    "seed",
    "judge",
    "judge_format",
    "unsafe_label",
    "max_new_tokens",
    "no_chat_template",
    "dtype",
)


def settings_of(args: argparse.Namespace, prompts: list[str]) -> dict[str, Any]:
    settings = {name: getattr(args, name) for name in SETTINGS}
    settings["prompts_sha256"] = hashlib.sha256(json.dumps(prompts, ensure_ascii=False).encode()).hexdigest()
    return settings


def settings_path(out: str) -> str:
    return out + ".settings.json"


def answers_path(out: str) -> str:
    return out + ".answers.partial"


def resume_state(out: str, settings: dict[str, Any], prompts: list[str]) -> tuple[dict[int, dict], dict[int, str]]:
    """Records already judged and answers already generated for these settings (empty for a new run).

    Raises ValueError (one line) when ``out`` was written with other settings or holds other prompts.
    """
    from .safety import read_jsonl

    if not os.path.exists(out) and not os.path.exists(answers_path(out)):
        return {}, {}
    if not os.path.exists(settings_path(out)):
        raise ValueError(
            f"{out} exists but {settings_path(out)} does not, so it cannot be resumed safely; "
            "pass another --out or delete the file."
        )
    with open(settings_path(out), encoding="utf-8") as handle:
        saved = json.load(handle)
    for name in (*SETTINGS, "prompts_sha256"):
        if saved.get(name) != settings[name]:
            flag = "the prompts themselves" if name == "prompts_sha256" else f"--{name.replace('_', '-')}"
            shown = "" if name == "prompts_sha256" else f" ({saved.get(name)!r} there, {settings[name]!r} now)"
            raise ValueError(
                f"{out} was written with other settings: {flag} differs{shown}; rerun with the same "
                "settings to resume, or pass another --out."
            )
    done = {}
    if os.path.exists(out):
        for record in read_jsonl(out):
            index = record.get("index")
            if not isinstance(index, int) or not 0 <= index < len(prompts) or record.get("prompt") != prompts[index]:
                raise ValueError(f"{out} holds a record that is not one of these prompts ({record.get('index')!r}).")
            done[index] = record
    generated = {}
    if os.path.exists(answers_path(out)):
        for row in read_jsonl(answers_path(out)):
            if row["index"] not in done:
                generated[row["index"]] = row["answer"]
    return done, generated


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
    parser.add_argument(
        "--out",
        required=True,
        help="JSONL file for the per-prompt records, appended as they are judged; an existing one from the same "
        "settings is resumed.",
    )


def run(args: argparse.Namespace) -> int:
    try:
        _check_numbers(args)
        prompts, judge = _load_prompts_and_judge(args)
        settings = settings_of(args, prompts)
        done, generated = resume_state(args.out, settings, prompts)
    except (ValueError, FileNotFoundError) as err:
        print(f"slowed eval safety: {err}", file=sys.stderr)
        return 2
    _announce(args, prompts, judge, settings, done, generated)
    try:
        seconds = _generate_and_judge(args, prompts, judge, done, generated)
    except FileNotFoundError as err:  # a missing local model or base model: one line
        print(f"slowed eval safety: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: what is done is on disk already; say so instead of a traceback
        print(
            f"slowed eval safety: interrupted; kept {len(done)} of {len(prompts)} judged records in {args.out} and "
            f"{len(generated)} generated answers in {answers_path(args.out)}; the same command resumes.",
            file=sys.stderr,
        )
        return 130
    _write_results(args, prompts, judge, done, seconds)
    return 0


def _check_numbers(args: argparse.Namespace) -> None:
    """``ValueError`` naming the first count option below 1."""
    for name in ("max_new_tokens", "batch_size", "judge_batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}.")


def _load_prompts_and_judge(args: argparse.Namespace) -> tuple[list, Any]:
    from .judges import load_judge
    from .prompts import load_prompts

    prompts = load_prompts(
        args.prompts, limit=args.limit, seed=args.seed, column=args.prompt_column, split=args.split, subset=args.subset
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
    return prompts, judge


def _announce(args: argparse.Namespace, prompts: list, judge: Any, settings: dict, done: dict, generated: dict) -> None:
    """What runs, and whether it resumes; a fresh run writes its settings (what a resume must match)."""
    from ..files import atomic_write_text

    print(
        f"slowed eval safety: {len(prompts)} prompts from {args.prompts}"
        + (f" (limit {args.limit}, seed {args.seed})" if args.limit else "")
        + f"; {judge.describe()}",
        file=sys.stderr,
    )
    if done or generated:
        print(
            f"slowed eval safety: resuming {args.out}: {len(done)} judged, {len(generated)} generated, "
            f"{len(prompts) - len(done)} to go.",
            file=sys.stderr,
        )
    else:
        atomic_write_text(settings_path(args.out), json.dumps(settings, indent=1) + "\n")


def _write_results(args: argparse.Namespace, prompts: list, judge: Any, done: dict, seconds: tuple) -> None:
    from .safety import summarize, write_jsonl

    records = [done[i] for i in range(len(prompts))]
    result = summarize(records, judge.name)
    write_jsonl(records, args.out)  # in prompt order, atomically; the appended file had the same records
    if os.path.exists(answers_path(args.out)):
        os.remove(answers_path(args.out))
    print(
        f"slowed eval safety: {result.n} records in {args.out}; generation {seconds[0]:.1f} s, "
        f"judging {seconds[1]:.1f} s.",
        file=sys.stderr,
    )
    print(result.summary())


def _batches(items: list[int], size: int) -> list[list[int]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _generate_and_judge(
    args: argparse.Namespace, prompts: list[str], judge: Any, done: dict[int, dict], generated: dict[int, str]
) -> tuple[float, float]:
    """Fill ``done`` with a record per prompt, appending each batch to the files as it finishes."""
    import time

    from .generation import generate_answers
    from .judges import RefusalJudge
    from .models import free_memory, load_model_and_tokenizer
    from .safety import append_jsonl, make_records

    todo = [i for i in range(len(prompts)) if i not in done]
    missing = [i for i in todo if i not in generated]
    start = time.perf_counter()
    if missing:
        model, tokenizer = load_model_and_tokenizer(args.model, args.adapter, device=args.device, dtype=args.dtype)
        batches = _batches(missing, args.batch_size)
        if not args.no_progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="generating", unit="batch")
        with open(answers_path(args.out), "a", encoding="utf-8") as handle:
            for batch in batches:
                answers = generate_answers(
                    model,
                    tokenizer,
                    [prompts[i] for i in batch],
                    max_new_tokens=args.max_new_tokens,
                    batch_size=args.batch_size,
                    progress=False,
                    use_chat_template=False if args.no_chat_template else None,
                )
                append_jsonl(handle, [{"index": i, "answer": a} for i, a in zip(batch, answers, strict=True)])
                generated.update(zip(batch, answers, strict=True))
        if not isinstance(judge, RefusalJudge):  # a guard comes next: make room for it on the GPU
            model.to("cpu")
            del model
            free_memory()
    generation_done = time.perf_counter()
    with open(args.out, "a", encoding="utf-8") as handle:
        for batch in _batches(todo, args.judge_batch_size):
            batch_prompts, answers = [prompts[i] for i in batch], [generated[i] for i in batch]
            records = make_records(batch_prompts, answers, judge.verdicts(batch_prompts, answers), judge.name)
            for i, record in zip(batch, records, strict=True):
                record["index"] = i
                done[i] = record
            append_jsonl(handle, records)
    return generation_done - start, time.perf_counter() - generation_done
