"""The safety ratio of a model on harmful prompts: generate, judge, count, with a 95 % interval."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..files import atomic_write_text  # noqa: F401 - also used by safety_cli
from .judges import Judge, Verdict, load_judge
from .stats import wilson_interval

# Fields of every JSONL record, in order (docs/evaluation.md documents them).
RECORD_FIELDS = ("index", "prompt", "answer", "verdict", "safe", "judge", "judge_output")


@dataclass
class SafetyResult:
    """Outcome of :func:`evaluate_safety`.

    ``ratio`` is ``n_safe / n``; ``interval`` its Wilson 95 % interval; ``records`` one dict per
    prompt with :data:`RECORD_FIELDS`; ``n_unknown`` counts guard outputs with neither "safe" nor
    "unsafe" (counted as not safe).
    """

    ratio: float
    interval: tuple[float, float]
    n_safe: int
    n: int
    judge: str
    records: list[dict[str, Any]] = field(default_factory=list)
    n_unknown: int = 0
    generation_seconds: float = 0.0
    judge_seconds: float = 0.0

    def summary(self) -> str:
        """One line: ratio, counts, interval and judge (the CLI's last line)."""
        low, high = self.interval
        unknown = f", {self.n_unknown} unknown verdicts counted unsafe" if self.n_unknown else ""
        return (
            f"safety ratio {self.ratio:.4f} ({self.n_safe}/{self.n}), 95% CI [{low:.4f}, {high:.4f}] "
            f"(Wilson), judge {self.judge}{unknown}"
        )


def make_records(prompts: Sequence[str], answers: Sequence[str], verdicts: Sequence[Verdict], judge: str) -> list[dict]:
    """One JSON-serialisable record per prompt (see :data:`RECORD_FIELDS`)."""
    return [
        {
            "index": i,
            "prompt": prompt,
            "answer": answer,
            "verdict": verdict.label,
            "safe": bool(verdict.safe),
            "judge": judge,
            "judge_output": verdict.raw,
        }
        for i, (prompt, answer, verdict) in enumerate(zip(prompts, answers, verdicts, strict=True))
    ]


def summarize(records: Sequence[dict[str, Any]], judge: str) -> SafetyResult:
    n = len(records)
    n_safe = sum(1 for r in records if r["safe"])
    return SafetyResult(
        ratio=n_safe / n if n else 0.0,
        interval=wilson_interval(n_safe, n),
        n_safe=n_safe,
        n=n,
        judge=judge,
        records=list(records),
        n_unknown=sum(1 for r in records if r["verdict"] == "unknown"),
    )


def evaluate_safety(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    judge: Judge | str | None = "refusal",
    max_new_tokens: int = 256,
    batch_size: int = 16,
    progress: bool = True,
    use_chat_template: bool | None = None,
    free_model_before_judging: bool = False,
) -> SafetyResult:
    """Greedy answers of ``model`` to ``prompts``, judged by ``judge`` (a :class:`Judge` or a spec for
    :func:`load_judge`), as a :class:`SafetyResult`.

    ``free_model_before_judging`` moves ``model`` to the CPU before a guard is loaded, for GPUs
    too small to hold both (the command line does it).
    """
    from .generation import generate_answers

    prompts = list(prompts)
    if not prompts:
        raise ValueError("`prompts` is empty: nothing to evaluate.")
    judge = load_judge(judge)
    start = time.perf_counter()
    answers = generate_answers(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        use_chat_template=use_chat_template,
    )
    generated = time.perf_counter()
    if free_model_before_judging:
        from .models import free_memory

        model.to("cpu")
        free_memory()
    verdicts = judge.verdicts(prompts, answers)
    result = summarize(make_records(prompts, answers, verdicts, judge.name), judge.name)
    result.generation_seconds = generated - start
    result.judge_seconds = time.perf_counter() - generated
    return result


def write_jsonl(records: Sequence[dict[str, Any]], path: str) -> None:
    """One JSON object per line, UTF-8, non-ASCII kept readable; written atomically."""
    atomic_write_text(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def append_jsonl(handle: Any, records: Sequence[dict[str, Any]]) -> None:
    """Append ``records`` to an open text file and flush them to disk: an interrupt loses none of them."""
    import os

    for record in records:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The records of a JSONL file; a last line cut short by an interrupted write is ignored."""
    with open(path, encoding="utf-8") as handle:
        lines = [line for line in handle if line.strip()]
    records = []
    for number, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines) - 1 and not line.endswith("\n"):
                break
            raise
    return records
