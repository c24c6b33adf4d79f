"""(b) One training step of a tiny Qwen2-shaped model with the real vocabulary, LoRA r=16: stock ``SFTTrainer``
(``chunked_nll`` and ``loss_type="nll"``) against ``SFTTrainer`` + ``SLowEDCallback``, each in a fresh fork."""

from __future__ import annotations

import tempfile
import time

from harness import MASK_RATIO, VOCAB, med, peak_rss_mib, reset_peak, run_worker


def run_variant(variant: str, steps: int, batch: int, length: int) -> dict:
    """One SFTTrainer run of ``variant``; called in a fresh fork of the step worker."""
    with tempfile.TemporaryDirectory(prefix="slowed-bench-") as output_dir:  # save_strategy "no": stays empty
        return _run_variant(variant, steps, batch, length, output_dir)


def _run_variant(variant: str, steps: int, batch: int, length: int, output_dir: str) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from slowed_plugin import SLowEDCallback
    from slowed_plugin.tiny import build_model, build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer(["a b c d e f g"])
    model = build_model("qwen2", VOCAB, hidden=64, layers=2, seed=0)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(steps * batch):
        ids = torch.randint(4, VOCAB, (length,), generator=generator).tolist()
        prompt = length // 4  # completion-only loss: the prompt quarter is ignored
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    slowed = variant in ("slowed", "slowed_nll")
    callbacks = [SLowEDCallback(tau=10.0, mask_ratio=MASK_RATIO)] if slowed else []
    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=output_dir,
            max_steps=steps,
            per_device_train_batch_size=batch,
            learning_rate=1e-4,
            logging_steps=steps,
            report_to=[],
            save_strategy="no",
            use_cpu=True,
            bf16=False,
            seed=0,
            dataloader_num_workers=0,
            loss_type="nll" if variant.endswith("nll") else "chunked_nll",
            max_length=None,
            disable_tqdm=True,
        ),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"]
        ),
        callbacks=[*callbacks, Clock()],
    )
    start = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - start
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {
        "step_times": [marks[i + 1] - marks[i] for i in range(0, len(marks) - 1, 2)],
        "train_s": total,
        "peak_rss_mib": peak_rss_mib(),
        "loss": losses[-1] if losses else None,
    }


def worker_steps(variants: list[str], rounds: int, steps: int, batch: int, length: int) -> dict:
    """Import once, then run every variant in its own fork, alternating ``rounds`` times.

    A fork starts from the same imported state (its RSS high-water mark is reset at the fork), so
    peak RSS compares like a fresh process per variant, without paying the imports each time; the
    alternation spreads the machine's background load over all variants alike.
    """
    import multiprocessing

    import datasets  # noqa: F401 - imported before forking, like the rest
    import peft  # noqa: F401
    import trl  # noqa: F401
    from trl import SFTTrainer  # noqa: F401

    import slowed_plugin.core.hidden_states_loss  # noqa: F401
    import slowed_plugin.trainer.callback  # noqa: F401

    context = multiprocessing.get_context("fork")
    results: dict[str, list[dict]] = {v: [] for v in variants}

    def child(connection, variant):
        try:
            reset_peak()
            connection.send(run_variant(variant, steps, batch, length))
        except BaseException as err:  # noqa: BLE001 - report any failure to the parent
            connection.send({"error": f"{type(err).__name__}: {err}"})
        finally:
            connection.close()

    for _ in range(rounds):
        for variant in variants:
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(target=child, args=(sender, variant))
            process.start()
            sender.close()
            result = receiver.recv()
            process.join()
            if "error" in result:
                raise RuntimeError(f"variant {variant}: {result['error']}")
            results[variant].append(result)
    return results


WORKERS = {"steps": worker_steps}


def report(quick: bool, ratios: dict) -> None:
    steps, batch, length, warm = (3, 1, 512, 1) if quick else (7, 2, 512, 2)
    variants = ["default", "slowed"] if quick else ["default", "nll", "slowed", "slowed_nll"]
    rounds = 1 if quick else 2
    runs = run_worker("steps", variants=variants, rounds=rounds, steps=steps, batch=batch, length=length)
    print(
        f"\n(b) SFTTrainer step, tiny Qwen2 (hidden 64, 2 layers, vocab {VOCAB}), LoRA r=16, "
        f"batch {batch} x {length} tokens (first quarter prompt), {steps} steps, median after {warm} warm-up step(s)"
    )
    print(f"    {'variant':<46}{'step s':>8}{'x default':>11}{'peak RSS MiB':>14}{'x default':>11}")
    labels = {
        "default": "stock SFTTrainer (chunked_nll)",
        "nll": 'stock SFTTrainer loss_type="nll"',
        "slowed": "SLowED (chunked from hidden states)",
        "slowed_nll": 'SLowED, loss_type="nll" (fused)',
    }
    step = {v: med([t for r in rs for t in r["step_times"][warm:]]) for v, rs in runs.items()}
    rss = {v: med([r["peak_rss_mib"] for r in rs]) for v, rs in runs.items()}
    for v in variants:
        print(
            f"    {labels[v]:<46}{step[v]:>8.3f}{step[v] / step['default']:>11.2f}"
            f"{rss[v]:>14.0f}{rss[v] / rss['default']:>11.2f}"
        )
    first = {v: med([r["step_times"][0] for r in runs[v]]) for v in variants}
    print("    first step s: " + ", ".join(f"{v} {first[v]:.2f}" for v in variants))
    ratios["step_time"] = step["slowed"] / step["default"]
    ratios["step_rss"] = rss["slowed"] / rss["default"]
