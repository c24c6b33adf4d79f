"""Stock TRL ``SFTTrainer`` against the same trainer + ``SLowEDCallback``, one step at a time, side by side.

Each variant trains in its own fork of one process that imported everything; the forks take turns (one runs its
step while the others wait), the order rotating every step, so each set of steps meets the same background load,
and the ratio is taken per set. The first step of each fork is a warm-up (compiles, allocator growth) and is not
paired. Peak memory is each fork's own: ``torch.cuda.max_memory_allocated`` on CUDA, the RSS high-water mark
(VmHWM) on CPU. Used by ``slowed doctor --bench`` and by ``benchmarks/`` ((d) and the GPU cases).

The parent must not have initialised CUDA before it forks: call :func:`run_pairs` from a fresh process
(:func:`run_in_subprocess` starts one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MASK_RATIO = 0.2
VOCAB = 151_936
# Shapes built from a config (random weights: step time and memory do not depend on them; nothing downloaded).
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": VOCAB,
        "tie_word_embeddings": True,
    },
    "qwen2.5-1.5b": {
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": VOCAB,
        "tie_word_embeddings": True,
    },
    # The tests' and dry runs' shape: every code path, in seconds.
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 4096,
        "tie_word_embeddings": True,
    },
}
VARIANTS = {
    "stock": "stock SFTTrainer (chunked_nll)",
    "slowed": f"+ SLowEDCallback(tau=10, mask_ratio={MASK_RATIO})",
    "liger": "stock SFTTrainer, use_liger_kernel (fused linear cross-entropy)",
}
# Child processes: no hub, no telemetry, and freed buffers go back to the OS at once (a fixed mmap threshold), so
# that the RSS high-water mark measures what a step really holds.
CHILD_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
    "MALLOC_MMAP_THRESHOLD_": "65536",
    "MALLOC_TRIM_THRESHOLD_": "0",
    "PYTHONWARNINGS": "ignore",
}


# --------------------------------------------------------------------------- memory
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_mib() -> float:
    return _status_kib("VmRSS") / 1024


def peak_rss_mib() -> float:
    return _status_kib("VmHWM") / 1024


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_mib(device: str) -> float:
    """This process's peak memory on ``device``: CUDA allocations, or the RSS high-water mark on CPU."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_mib()


# --------------------------------------------------------------------------- models
def model_config(shape: str):
    from transformers import Qwen2Config

    return Qwen2Config(**SHAPES[shape], max_position_embeddings=4096, bos_token_id=2, eos_token_id=3, pad_token_id=0)


def save_model(shape: str, path: str) -> int:
    """Build ``shape`` once and save it, so that every fork memory-maps the same weights instead of initialising
    them again (the CPU benchmark's way); returns the parameter count."""
    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(model_config(shape))
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def _model(shape: str, model_dir: str | None, dtype: str, device: str):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    if model_dir is not None:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    with torch.device(device):  # a GPU initialises a 1.5B model in a second; the same seed in every fork
        return AutoModelForCausalLM.from_config(model_config(shape), dtype=getattr(torch, dtype))


def build_trainer(
    variant: str,
    shape: str,
    dtype: str,
    steps: int,
    batch: int,
    length: int,
    device: str,
    rank: int,
    callbacks: list,
    model_dir: str | None,
    output_dir: str,
):
    """An ``SFTTrainer`` of ``variant`` (see :data:`VARIANTS`): LoRA ``rank`` on all linear layers, random token
    rows of ``length`` with the first quarter (the prompt) ignored; ``output_dir`` is the caller's to remove."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from slowed_plugin import SLowEDCallback
    from slowed_plugin.tiny import build_tokenizer

    vocab = SHAPES[shape]["vocab_size"]
    model = _model(shape, model_dir, dtype, device)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(steps * batch):
        ids = torch.randint(4, vocab, (length,), generator=generator).tolist()
        prompt = length // 4
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    slowed = [SLowEDCallback(tau=10.0, mask_ratio=MASK_RATIO)] if variant == "slowed" else []
    return SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=output_dir,
            max_steps=steps,
            per_device_train_batch_size=batch,
            learning_rate=1e-4,
            logging_steps=steps,
            report_to=[],
            save_strategy="no",
            use_cpu=device == "cpu",
            bf16=dtype == "bfloat16",
            seed=0,
            dataloader_num_workers=0,
            max_length=None,
            disable_tqdm=True,
            # Liger's fused linear cross-entropy replaces the loss itself: TRL refuses it with chunked_nll.
            loss_type="nll" if variant == "liger" else "chunked_nll",
            use_liger_kernel=variant == "liger",
        ),
        train_dataset=Dataset.from_list(rows),
        processing_class=build_tokenizer(["a b c d e f g"]),
        peft_config=LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear"),
        callbacks=[*slowed, *callbacks],
    )


# --------------------------------------------------------------------------- the pairs
def run_pairs(
    shape: str,
    dtype: str,
    pairs: int,
    batch: int,
    length: int,
    device: str = "cpu",
    rank: int = 16,
    variants: tuple[str, ...] = ("stock", "slowed"),
    model_dir: str | None = None,
) -> dict[str, dict]:
    """``pairs`` + 1 steps of every variant in forks that take turns; per variant ``step_times`` (the first one the
    warm-up), ``peak_mib`` and ``process_s``. Raises ``RuntimeError`` naming the variant that failed."""
    import multiprocessing

    import torch

    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"`variants` must be among {sorted(VARIANTS)}; got {sorted(unknown)}.")
    if device == "cuda":
        # A fork of a process that initialised CUDA cannot use it. Importing peft imports bitsandbytes, which may
        # initialise CUDA: on a GPU each fork imports the frameworks itself.
        if torch.cuda.is_initialized():
            raise RuntimeError(
                "run_pairs forks: call it from a process that has not initialised CUDA (run_in_subprocess)"
            )
    else:
        import datasets  # noqa: F401 - imported before forking, once for every fork
        import peft  # noqa: F401
        import trl  # noqa: F401
        from trl import SFTTrainer  # noqa: F401

        import slowed_plugin.core.hidden_states_loss  # noqa: F401
        import slowed_plugin.trainer.callback  # noqa: F401
    steps = pairs + 1
    context = multiprocessing.get_context("fork")

    def child(connection, variant):
        try:
            reset_peak()
            from transformers import TrainerCallback

            class Turn(TrainerCallback):  # last callback: its step_end comes after SLowED's projection
                def on_step_begin(self, args, state, control, **kwargs):
                    if device == "cuda":
                        import torch

                        torch.cuda.synchronize()
                    connection.send(("ready", None))
                    connection.recv()  # "go"
                    self.start = time.perf_counter()

                def on_step_end(self, args, state, control, **kwargs):
                    if device == "cuda":
                        import torch

                        torch.cuda.synchronize()
                    connection.send(("step", time.perf_counter() - self.start))

            start = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="slowed-bench-") as output_dir:  # save_strategy "no": empty
                trainer = build_trainer(
                    variant, shape, dtype, steps, batch, length, device, rank, [Turn()], model_dir, output_dir
                )
                trainer.train()
            connection.send(("done", {"peak_mib": peak_mib(device), "process_s": time.perf_counter() - start}))
        except BaseException as err:  # noqa: BLE001 - report any failure to the parent
            connection.send(("error", f"{type(err).__name__}: {err}"))
        finally:
            connection.close()

    links, processes = {}, []
    for variant in variants:
        parent_end, child_end = context.Pipe()
        process = context.Process(target=child, args=(child_end, variant))
        process.start()
        links[variant] = parent_end
        processes.append(process)

    def expect(variant, kind):
        got, value = links[variant].recv()
        if got == "error":
            for process in processes:
                process.kill()
            raise RuntimeError(f"variant {variant}: {value}")
        if got != kind:
            raise RuntimeError(f"variant {variant}: expected {kind!r}, got {got!r}")
        return value

    times: dict[str, list[float]] = {v: [] for v in variants}
    for step in range(steps):
        shift = step % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            expect(variant, "ready")
            links[variant].send("go")
            times[variant].append(expect(variant, "step"))
    result = {v: {"step_times": times[v], **expect(v, "done")} for v in variants}
    for process in processes:
        process.join()
    return result


def run_in_subprocess(timeout: float | None = None, **kwargs: Any) -> dict:
    """:func:`run_pairs` in a fresh Python process (no CUDA initialised before its forks)."""
    env = {**os.environ, **CHILD_ENV}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "slowed_plugin.doctor.step_pairs", json.dumps(kwargs)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    result = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not result:
        tail = (done.stdout[-1500:] + done.stderr[-2500:]).strip().splitlines()
        raise RuntimeError(f"step pairs failed (exit {done.returncode}): {tail[-1] if tail else 'no output'}")
    return json.loads(result[-1][len("RESULT ") :])


if __name__ == "__main__":
    print("RESULT " + json.dumps(run_pairs(**json.loads(sys.argv[1]))), flush=True)
