"""One demo run: one method with one seed through a stock TRL ``SFTTrainer``, and its measurements.

A run registers SLowED exactly as the README tells users,
``SFTTrainer(..., callbacks=[SLowEDCallback(tau=..., mask_ratio=..., safety_anchor={...})])`` (plain LoRA and
the placebo register nothing), measures the safety ratio per epoch with the product's
:class:`~slowed_plugin.trainer.monitor.SafetyMonitorCallback` and its refusal judge, and the reasoning
accuracy per epoch with the demo's :class:`~slowed_plugin.demo.epoch_eval.DemoCallback`.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Iterator
from typing import Any

from .methods import Method, RunSpec, TrainSettings
from .metrics import INSPECTED_ROWS, SAFETY_TOKENS, EvalSets, answer_kinds, benign_helpfulness, eval_sets
from .world import World, WorldSettings, build_world, subsample

# Logged metrics kept per epoch. The projection's are left out: they reach the logs one epoch late (see
# `logging_steps` in `_sft_config`).
_LOGGED = ("loss", "slowed/masked_fraction", "slowed/entropy_threshold")


def run_one(
    spec: RunSpec,
    train: TrainSettings,
    world_settings: WorldSettings,
    base_dir: str,
    out_dir: str,
    queue=None,
) -> dict[str, Any]:
    """Train one method with one seed; return its per-epoch measurements and final numbers."""
    with _one_quiet_thread():
        return _train_and_measure(spec, train, world_settings, base_dir, out_dir, queue)


@contextlib.contextmanager
def _one_quiet_thread() -> Iterator[None]:
    """One torch thread (the same bits whatever ``--jobs`` is) and no library progress bars or chatter, for the
    duration of a run. In a demo worker that is the whole process; a caller that runs :func:`run_one` in its own
    process (the tests) gets its thread count and verbosity back."""
    import datasets
    import torch
    import transformers
    from datasets.utils import logging as datasets_logging

    threads, verbosity = torch.get_num_threads(), transformers.logging.get_verbosity()
    bars = datasets_logging.is_progress_bar_enabled()
    torch.set_num_threads(1)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        transformers.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()


def _train_and_measure(
    spec: RunSpec, train: TrainSettings, world_settings: WorldSettings, base_dir: str, out_dir: str, queue
) -> dict[str, Any]:
    import datasets
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    started = time.perf_counter()
    world = build_world(world_settings)
    sets = eval_sets(world, train)
    method = spec.method

    transformers.set_seed(spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    rows = [{"prompt": e.prompt, "completion": e.completion} for e in sets.train]
    placebo = placebo_rows(rows, method.anchor_ratio, spec.seed) if method.placebo else []
    dataset = datasets.Dataset.from_list(rows + placebo)
    slowed, demo, monitor, callbacks = _callbacks(
        spec,
        train,
        sets,
        tokenizer,
        queue,
        rows,
        world_settings.opener,
        world,
    )
    args = _sft_config(spec, train, os.path.join(out_dir, "runs", spec.name), trained_rows(method, len(rows)))
    build_start = time.perf_counter()
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=_lora_config(train) if not method.full else None,
        callbacks=callbacks,
    )
    build_seconds = time.perf_counter() - build_start
    helpful_before = benign_helpfulness(trainer.model, tokenizer, sets.benign, train.generation_batch_size)
    train_start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - train_start
    helpful = benign_helpfulness(trainer.model, tokenizer, sets.benign, train.generation_batch_size)
    epochs = merge_epochs(monitor.history, demo.history, trainer.state.log_history)
    if any(e.family for e in sets.harmful):  # the hard world: safety per family of held-out harmful prompts
        from .families import epoch_family_safety

        by_family = epoch_family_safety([e.family for e in sets.harmful], monitor.history)
        for row, counts in zip(epochs, by_family, strict=True):
            row["safety_by_family"] = counts
    return {
        **_run_fields(spec, args.learning_rate),
        "anchor": anchor_record(method, slowed, len(placebo)),
        "steps": trainer.state.global_step,
        "timing": _timing(build_seconds, train_seconds, demo.step_seconds),
        "epochs": epochs,
        "final": _final(epochs, monitor.history[-1], demo.history[-1], helpful),
        "before": {
            "safety_ratio": epochs[0]["safety_ratio"],
            "reasoning_accuracy": epochs[0]["reasoning_accuracy"],
            **helpful_before,
        },
        **_answers(sets, monitor.history[-1]["answers"], demo.samples),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _timing(build_seconds: float, train_seconds: float, step_seconds: float) -> dict[str, float]:
    return {
        # Building the trainer: the anchor's answers are generated here (once, before training).
        "build_seconds": round(build_seconds, 2),
        # trainer.train(): the steps and the per-epoch evaluations (the same evaluations for every method).
        "train_seconds": round(train_seconds, 2),
        # The optimizer steps alone (on_step_begin to on_step_end, SLowED's own step-end work included).
        "step_seconds": round(step_seconds, 2),
    }


def anchor_prompts(world: World, count: int | None = None) -> tuple[list[str], list[str]]:
    """The safety anchor's prompts: the world's TRAINING-split harmful and benign requests (the base model's own
    training pool), already formatted; ``count`` of each kind (a fixed subset) or all. Never the held-out prompts
    the runs are evaluated on."""
    harmful = subsample(world.base["harmful"], count, seed=5)
    benign = subsample(world.base["benign"], count, seed=6)
    return [e.prompt for e in harmful], [e.prompt for e in benign]


def anchor_config(method: Method, world: World, train: TrainSettings) -> dict[str, Any] | None:
    """The ``safety_anchor`` mapping of ``method`` (None without an anchor), as a user writes it."""
    if method.anchor is None:
        return None
    harmful, benign = anchor_prompts(world, train.anchor_prompts)
    config: dict[str, Any] = {
        "prompts": harmful,
        "benign_prompts": benign,
        "mode": method.anchor,
        "batch_size": train.generation_batch_size,
        "use_chat_template": False,  # the world's prompts are already formatted, as in training
    }
    if method.anchor in ("replay", "kl"):
        config["ratio"] = method.anchor_ratio
    return config


def placebo_count(n_rows: int, ratio: float) -> int:
    """As many extra rows as replay at ``ratio`` adds to ``n_rows`` distillation rows (the product's count)."""
    from ..anchor import replay_row_count

    return replay_row_count(n_rows, ratio)


def placebo_rows(rows: list[dict[str, str]], ratio: float, seed: int) -> list[dict[str, str]]:
    """The placebo's extra rows: as many as replay adds, distillation chains drawn (without replacement) with
    the run's seed and duplicated. The data change without the anchor's answers."""
    count = placebo_count(len(rows), ratio)
    rng = random.Random(f"placebo-{seed}")
    picks = [i for _ in range(count // len(rows)) for i in range(len(rows))]
    picks += sorted(rng.sample(range(len(rows)), count % len(rows)))
    return [dict(rows[i]) for i in picks]


def trained_rows(method: Method, n_rows: int) -> int:
    """Rows of one training epoch: the distillation rows, plus replay's anchor rows or the placebo's
    duplicates (gradient mode keeps its replay batch out of the training data)."""
    return n_rows + (placebo_count(n_rows, method.anchor_ratio) if method.extra_rows else 0)


def anchor_record(method: Method, slowed, placebo: int) -> dict[str, Any] | None:
    """What a run records of its anchor: rows, refusal share of the harmful answers, projected steps
    (gradient), generation time when the product reports it; for the placebo, its extra rows."""
    if method.placebo:
        return {"mode": "placebo", "ratio": method.anchor_ratio, "rows": placebo}
    if method.anchor is None:
        return None
    anchor = slowed.anchor
    rows = [_row(r) for r in anchor.rows]
    record: dict[str, Any] = {
        "mode": method.anchor,
        "ratio": method.anchor_ratio if method.anchor == "replay" else None,
        "rows": len(rows),
        "harmful_rows": sum(r["kind"] == "harmful" for r in rows),
        "benign_rows": sum(r["kind"] == "benign" for r in rows),
        "refusal_share": None if anchor.refusal_share is None else float(anchor.refusal_share),
        "projected_steps": int(anchor.projected_steps) if method.anchor == "gradient" else None,
    }
    for name in ("generation_seconds", "cached"):
        if hasattr(anchor, name):
            value = getattr(anchor, name)
            record[name] = round(value, 2) if isinstance(value, float) else value
    record["samples"] = [[r["prompt"], r["answer"], r["kind"]] for r in rows[:2]]
    return record


def _row(row) -> dict[str, str]:
    """An anchor row as a dict (prompt, answer, kind), whether the product gives a mapping or an object."""
    if isinstance(row, dict):
        return {k: row[k] for k in ("prompt", "answer", "kind")}
    return {k: getattr(row, k) for k in ("prompt", "answer", "kind")}


def _callbacks(
    spec: RunSpec,
    train: TrainSettings,
    sets: EvalSets,
    tokenizer,
    queue,
    rows: list[dict[str, str]],
    opener: str,
    world: World,
):
    """SLowED (the product, registered as the README says; plain and placebo runs register nothing), then the
    demo's measurements, then the safety monitor."""
    from .. import SLowEDCallback
    from ..evaluation.judges import RefusalJudge
    from ..trainer.monitor import SafetyMonitorCallback
    from .epoch_eval import DemoCallback

    method = spec.method
    callbacks = []
    slowed = None
    if method.uses_slowed:
        anchor = anchor_config(method, world, train)
        extra = {"safety_anchor": anchor} if anchor is not None else {}
        if method.subspace is not None:  # the anchor's prompts, as a user passes the anchor's files
            harmful, benign = anchor_prompts(world, train.anchor_prompts)
            extra["safety_subspace"] = {
                "prompts": harmful,
                "benign_prompts": benign,
                "directions": method.subspace,
                "use_chat_template": False,
                "batch_size": train.generation_batch_size,
            }
        slowed = SLowEDCallback(tau=method.tau, mask_ratio=method.mask_ratio, **extra)
        callbacks.append(slowed)
    demo = DemoCallback(
        sets.cot,
        tokenizer,
        train.generation_batch_size,
        queue,
        spec.index,
        mask_ratio=method.mask_ratio,
        inspect_rows=rows[:INSPECTED_ROWS],
        opener=opener,
    )
    monitor = SafetyMonitorCallback(
        [e.prompt for e in sets.harmful],
        judge=RefusalJudge(),
        every="epoch",
        max_new_tokens=SAFETY_TOKENS,
        batch_size=train.generation_batch_size,
        use_chat_template=False,  # the world's prompts are already formatted, as in training
    )
    return slowed, demo, monitor, [*callbacks, demo, monitor]


def _lora_config(train: TrainSettings):
    from peft import LoraConfig

    return LoraConfig(r=train.lora_r, lora_alpha=train.lora_alpha, lora_dropout=0.0, target_modules="all-linear")


def _sft_config(spec: RunSpec, train: TrainSettings, run_dir: str, n_rows: int):
    from trl import SFTConfig

    return SFTConfig(
        output_dir=run_dir,
        num_train_epochs=train.epochs,
        per_device_train_batch_size=train.batch_size,
        learning_rate=train.full_learning_rate if spec.method.full else train.learning_rate,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=train.warmup_steps,
        weight_decay=0.0,
        # One log row at the last step of every epoch. (Epoch-end logging would be cancelled by the
        # monitor's own log call at epoch end, which resets the trainer's `should_log`.)
        logging_strategy="steps",
        logging_steps=math.ceil(n_rows / train.batch_size),
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=spec.seed,
        data_seed=spec.seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
        max_length=128,
    )


def _run_fields(spec: RunSpec, learning_rate: float) -> dict[str, Any]:
    method: Method = spec.method
    return {
        "name": spec.name,
        "method": method.key,
        "label": method.label,
        "seed": spec.seed,
        "tau": method.tau,
        "mask_ratio": method.mask_ratio,
        "full_fine_tuning": method.full,
        "anchor_mode": "placebo" if method.placebo else method.anchor,
        "anchor_ratio": method.anchor_ratio if method.extra_rows else None,
        "anchor_text": method.anchor_text(),
        "learning_rate": learning_rate,
    }


def _final(epochs: list[dict], safety: dict[str, Any], reasoning: dict[str, Any], helpful: dict) -> dict[str, Any]:
    """The last evaluation's numbers with their intervals."""
    from ..evaluation.stats import wilson_interval

    n_correct = reasoning["n_correct"]
    return {
        "safety_ratio": safety["safety_ratio"],
        "safety_ci": [safety["ci_low"], safety["ci_high"]],
        "n_safe": safety["n_safe"],
        "n_harmful": safety["n"],
        "reasoning_accuracy": reasoning["reasoning_accuracy"],
        "reasoning_ci": list(wilson_interval(n_correct, reasoning["n"])),
        "n_correct": n_correct,
        "n_cot": reasoning["n"],
        "mean_safety_ratio": sum(e["safety_ratio"] for e in epochs[1:]) / max(1, len(epochs) - 1),
        "harmful_answers": answer_kinds(safety["answers"], safety["verdicts"]),
        **helpful,
    }


def _answers(sets: EvalSets, harmful: list[str], cot: list[str]) -> dict[str, Any]:
    return {
        "samples": {
            "harmful": [[e.question, a] for e, a in list(zip(sets.harmful, harmful, strict=True))[:4]],
            "cot": [[e.question, a, e.value] for e, a in list(zip(sets.cot, cot, strict=True))[:4]],
        },
        # Every answer of the last evaluation, in the order of the held-out sets, to read or re-judge.
        "answers": {"harmful": harmful, "cot": cot},
    }


def merge_epochs(safety: list[dict], reasoning: list[dict], log_history: list[dict]) -> list[dict]:
    """One row per evaluation (epoch 0 = before training): safety, reasoning, loss and SLowED metrics."""
    logs: dict[int, dict[str, float]] = {}
    for entry in log_history:
        epoch = int(round(entry.get("epoch", 0.0)))
        for key, value in entry.items():
            if key in _LOGGED:
                logs.setdefault(epoch, {})[key] = value
    rows = []
    for s, r in zip(safety, reasoning, strict=True):
        epoch = int(round(s["epoch"]))
        row = {
            "epoch": epoch,
            "step": s["step"],
            "safety_ratio": s["safety_ratio"],
            "safety_ci": [s["ci_low"], s["ci_high"]],
            "reasoning_accuracy": r["reasoning_accuracy"],
            "max_delta_norm": r["max_delta_norm"],
            "mean_delta_norm": r["mean_delta_norm"],
        }
        if r.get("dropped_tokens") is not None:
            row["dropped_tokens"] = r["dropped_tokens"]
        if epoch > 0:
            row.update({k.replace("slowed/", "slowed_"): v for k, v in logs.get(epoch, {}).items()})
        rows.append(row)
    return rows
