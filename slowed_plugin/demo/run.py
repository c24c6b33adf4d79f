"""One demo run: one method with one seed through a stock TRL ``SFTTrainer``, and its measurements.

A run registers SLowED exactly as the README tells users,
``SFTTrainer(..., callbacks=[SLowEDCallback(tau=..., mask_ratio=...)])`` (plain LoRA registers nothing),
measures the safety ratio per epoch with the product's
:class:`~slowed_plugin.trainer.monitor.SafetyMonitorCallback` and its refusal judge, and the reasoning
accuracy per epoch with the demo's :class:`~slowed_plugin.demo.callback.DemoCallback`.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from .methods import Method, RunSpec, TrainSettings
from .metrics import INSPECTED_ROWS, SAFETY_TOKENS, EvalSets, answer_kinds, benign_helpfulness, eval_sets
from .world import WorldSettings, build_world

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
    import torch

    torch.set_num_threads(1)  # one thread per run: the same bits whatever --jobs is
    import datasets
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    started = time.perf_counter()
    sets = eval_sets(build_world(world_settings), train)
    method = spec.method

    transformers.set_seed(spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    rows = [{"prompt": e.prompt, "completion": e.completion} for e in sets.train]
    dataset = datasets.Dataset.from_list(rows)
    demo, monitor, callbacks = _callbacks(spec, train, sets, tokenizer, queue, rows, world_settings.rationale_opener)
    args = _sft_config(spec, train, os.path.join(out_dir, "runs", spec.name), len(dataset))
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=_lora_config(train) if not method.full else None,
        callbacks=callbacks,
    )
    helpful_before = benign_helpfulness(trainer.model, tokenizer, sets.benign, train.generation_batch_size)
    trainer.train()
    helpful = benign_helpfulness(trainer.model, tokenizer, sets.benign, train.generation_batch_size)
    epochs = merge_epochs(monitor.history, demo.history, trainer.state.log_history)
    return {
        **_run_fields(spec, args.learning_rate),
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


def _callbacks(
    spec: RunSpec, train: TrainSettings, sets: EvalSets, tokenizer, queue, rows: list[dict[str, str]], opener: str
):
    """SLowED (the product, registered as the README says; plain runs register nothing), then the demo's
    measurements, then the safety monitor."""
    from .. import SLowEDCallback
    from ..evaluation.judges import RefusalJudge
    from ..trainer.monitor import SafetyMonitorCallback
    from .callback import DemoCallback

    method = spec.method
    callbacks = []
    if method.uses_slowed:
        callbacks.append(SLowEDCallback(tau=method.tau, mask_ratio=method.mask_ratio))
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
    return demo, monitor, [*callbacks, demo, monitor]


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
