"""Stock TRL ``SFTTrainer`` against the same trainer + ``SLowEDCallback``, one step at a time, side by side.

Each variant trains in its own fork of one process that imported everything; the forks take turns (one runs its
step while the others wait), the order rotating every step, so each set of steps meets the same background load,
and the ratio is taken per set. The first step of each fork is a warm-up (compiles, allocator growth) and is not
paired. Peak memory is each fork's own: ``torch.cuda.max_memory_allocated`` on CUDA, the RSS high-water mark
(VmHWM) on CPU. The one step machinery of ``slowed doctor --bench`` and of ``benchmarks/`` ((b), (d), (e)).

The parent must not have initialised CUDA before it forks: call :func:`run_pairs` from a fresh process
(:func:`run_in_subprocess` starts one).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from typing import Any

from .process import peak_mib, print_result, reset_peak, run_for_result

MASK_RATIO = 0.2
VOCAB = 151_936
_TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
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
    "tiny": {**_TINY, "num_key_value_heads": 2, "vocab_size": 4096, "tie_word_embeddings": True},
    # benchmarks/ (b): the tiny body under Qwen2's real vocabulary and an untied head, where the loss dominates.
    "tiny-real-vocab": {**_TINY, "num_key_value_heads": 2, "vocab_size": VOCAB, "tie_word_embeddings": False},
}
VARIANTS = {
    "stock": "stock SFTTrainer, TRL's default loss (chunked_nll before TRL 1.15)",
    "nll": 'stock SFTTrainer loss_type="nll"',
    "slowed": f"+ SLowEDCallback(tau=10, mask_ratio={MASK_RATIO})",
    "slowed_nll": f'+ SLowEDCallback(tau=10, mask_ratio={MASK_RATIO}), loss_type="nll" (fused from logits)',
    "liger": "stock SFTTrainer, use_liger_kernel (fused linear cross-entropy)",
}
# Variants whose trainer computes its loss from logits (TRL refuses Liger's fused loss with chunked_nll).
NLL_VARIANTS = ("nll", "slowed_nll", "liger")
SLOWED_VARIANTS = ("slowed", "slowed_nll")


# TRL 1.15 made ``loss_type="nll"`` (its fused LM head) the default and turned ``"chunked_nll"`` into a deprecated
# alias of it: from there on "stock" leaves ``loss_type`` unset, so that it runs exactly what a user gets.
FUSED_HEAD_TRL = "1.15"


def stock_loss_type() -> str | None:
    """The ``loss_type`` that "stock" and "slowed" pass: ``None`` (TRL's own default) from TRL 1.15 on, where the
    default is the fused LM head; ``"chunked_nll"`` before, where the default built every logit."""
    import trl
    from packaging.version import Version

    return None if Version(trl.__version__) >= Version(FUSED_HEAD_TRL) else "chunked_nll"


def loss_path(trainer: Any, device: str) -> str:
    """Which loss path ``trainer`` took, in words: its ``loss_type`` and, from TRL 1.15 on, how its fused LM head
    computes (Triton kernels only on CUDA/XPU; PyTorch tiles elsewhere, e.g. on a CPU)."""
    import trl
    from packaging.version import Version

    loss_type = trainer.args.loss_type
    if trainer.args.use_liger_kernel:
        return f'loss_type="{loss_type}", Liger'
    if Version(trl.__version__) < Version(FUSED_HEAD_TRL):
        return f'loss_type="{loss_type}"'
    import torch
    from trl.kernels.chunked_logprob import _use_triton

    tiles = "Triton" if _use_triton(torch.device(device)) else "PyTorch tiles"
    return f'loss_type="{loss_type}" (fused LM head, {tiles})'


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
) -> Any:
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
    slowed = [SLowEDCallback(tau=10.0, mask_ratio=MASK_RATIO)] if variant in SLOWED_VARIANTS else []
    loss_type = "nll" if variant in NLL_VARIANTS else stock_loss_type()
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
            use_liger_kernel=variant == "liger",
            **({} if loss_type is None else {"loss_type": loss_type}),
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
    warm-up), ``peak_mib``, ``process_s`` and ``loss_path`` (:func:`loss_path`). Raises ``RuntimeError`` naming the variant that failed."""
    variants = tuple(variants)
    _check_variants(variants)
    _prepare_fork(device)
    steps = pairs + 1
    build = dict(shape=shape, dtype=dtype, steps=steps, batch=batch, length=length, device=device, rank=rank)
    turns = _Turns(variants, {**build, "model_dir": model_dir})
    try:
        times: dict[str, list[float]] = {v: [] for v in variants}
        for step in range(steps):
            shift = step % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                times[variant].append(turns.step(variant))
        return {v: {"step_times": times[v], **turns.expect(v, "done")} for v in variants}
    finally:
        turns.join()


def _check_variants(variants: tuple[str, ...]) -> None:
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"`variants` must be among {sorted(VARIANTS)}; got {sorted(unknown)}.")


def _prepare_fork(device: str) -> None:
    """Refuse a parent that initialised CUDA; on CPU import the frameworks once, before forking, for every fork."""
    import torch

    if device == "cuda":
        # A fork of a process that initialised CUDA cannot use it. Importing peft imports bitsandbytes, which may
        # initialise CUDA: on a GPU each fork imports the frameworks itself.
        if torch.cuda.is_initialized():
            raise RuntimeError(
                "run_pairs forks: call it from a process that has not initialised CUDA (run_in_subprocess)"
            )
        return
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import trl  # noqa: F401
    from trl import SFTTrainer  # noqa: F401

    import slowed_plugin.core.hidden_states_loss  # noqa: F401
    import slowed_plugin.trainer.callback  # noqa: F401


def _turn_callback(connection, device: str):
    """The fork's last callback (its step_end comes after SLowED's projection): waits for "go", times the step."""
    from transformers import TrainerCallback

    def sync():
        if device == "cuda":
            import torch

            torch.cuda.synchronize()

    class Turn(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            connection.send(("ready", None))
            connection.recv()  # "go"
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            connection.send(("step", time.perf_counter() - self.start))

    return Turn()


def _child(connection, variant: str, build: dict[str, Any]) -> None:
    """One fork: train ``variant``, taking its turns over ``connection``; report its peak memory and wall time."""
    try:
        reset_peak()
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="slowed-bench-") as output_dir:  # save_strategy "no": empty
            trainer = build_trainer(
                variant, **build, callbacks=[_turn_callback(connection, build["device"])], output_dir=output_dir
            )
            path = loss_path(trainer, build["device"])
            trainer.train()
        peak = peak_mib(build["device"])
        connection.send(("done", {"peak_mib": peak, "process_s": time.perf_counter() - start, "loss_path": path}))
    except BaseException as err:  # noqa: BLE001 - report any failure to the parent
        connection.send(("error", f"{type(err).__name__}: {err}"))
    finally:
        connection.close()


class _Turns:
    """The parent's side: one fork and one pipe per variant."""

    def __init__(self, variants: tuple[str, ...], build: dict[str, Any]) -> None:
        import multiprocessing

        context = multiprocessing.get_context("fork")
        self.links, self.processes = {}, []
        for variant in variants:
            parent_end, child_end = context.Pipe()
            process = context.Process(target=_child, args=(child_end, variant, build))
            process.start()
            self.links[variant] = parent_end
            self.processes.append(process)

    def expect(self, variant: str, kind: str):
        got, value = self.links[variant].recv()
        if got == "error":
            self.kill()
            raise RuntimeError(f"variant {variant}: {value}")
        if got != kind:
            self.kill()
            raise RuntimeError(f"variant {variant}: expected {kind!r}, got {got!r}")
        return value

    def step(self, variant: str) -> float:
        """Let ``variant`` run its next step alone; its seconds."""
        self.expect(variant, "ready")
        self.links[variant].send("go")
        return self.expect(variant, "step")

    def kill(self) -> None:
        for process in self.processes:
            process.kill()

    def join(self) -> None:
        for process in self.processes:
            process.join()


def run_in_subprocess(timeout: float | None = None, **kwargs: Any) -> dict:
    """:func:`run_pairs` in a fresh Python process (no CUDA initialised before its forks)."""
    argv = ["-m", "slowed_plugin.bench.step_pairs", json.dumps(kwargs)]
    return run_for_result(argv, "step pairs", timeout=timeout)


if __name__ == "__main__":
    print_result(run_pairs(**json.loads(sys.argv[1])))
