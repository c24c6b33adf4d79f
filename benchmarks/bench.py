"""SLowED against the stock loss paths, measured side by side on this machine.

    python benchmarks/bench.py            # the full run (about 10 minutes on 2 idle cores)
    python benchmarks/bench.py --quick    # smaller shapes, fewer repetitions, 3 real-shape step pairs
    python benchmarks/bench.py --only cd  # some parts only

(a) loss forward+backward on the same logits: SLowED's fused loss (and the reference
    ``masked_causal_lm_loss``) vs transformers' ``ForCausalLMLoss``; 2,048 tokens x 151,936
    vocabulary (Qwen2.5), bf16, ``mask_ratio=0.2`` (``--quick``: 1,024 tokens). Time: median of
    repetitions interleaved in one process, after a warm-up round. Memory: peak RSS above the
    baseline during one forward+backward (VmHWM reset through /proc/self/clear_refs), with glibc's
    mmap threshold fixed so that every freed buffer leaves RSS at once.
(b) one training step of a tiny Qwen2-shaped model with the real vocabulary, LoRA r=16 (LoRA as
    in the paper): stock ``SFTTrainer`` (default ``chunked_nll``, and ``loss_type="nll"``) vs
    ``SFTTrainer`` + ``SLowEDCallback(tau=10, mask_ratio=0.2)`` ("slowed": the default loss type,
    which the callback serves with the chunked loss from hidden states; "slowed_nll": ``loss_type="nll"``,
    served with the fused loss on the logits TRL's "nll" metrics read). Every run is a fresh fork of one process that imported everything
    (runs alternate between variants, twice in the full run); step time is the median of the
    steps after the warm-up step(s); peak RSS is the fork's high-water mark (VmHWM).
(c) ``SlowTuner.project()`` as the callback calls it, on a PEFT LoRA model of Llama-3-8B's shape (r=64, all
    linear layers; the frozen base on the meta device, real float32 adapters; tau=1 leaves the 64 gate/up
    projections outside the ball): one Gram-identity norm per adapter, the rescale of B where needed, and (bf16
    adapters, full run) the re-check of the scaled ones; against materialising every ``ΔW = s·B@A``.
(d) the real shape: a Qwen2.5-0.5B-shaped model built locally from ``Qwen2Config`` (24 layers, hidden 896,
    intermediate 4864, 14/2 heads, vocabulary 151,936, tied head), LoRA r=16 on all linear layers, batch 1 x 512,
    float32 and bfloat16 weights: stock ``SFTTrainer`` (default ``chunked_nll``) and the same with
    ``SLowEDCallback`` run in two forks that take turns step by step (one runs while the other waits), so that
    every pair of steps meets the same background load; the ratio is taken per pair (min-median-max shown).
    Also: the callback's one-off kernel compile in a fresh process with an empty inductor cache
    (``TORCHINDUCTOR_CACHE_DIR``) and again from that cache, and the chunked loss at mask_ratio 0.2 against the
    same kernels at 0 (what the masking itself saves).

The machine's load average is printed with the results: on a shared machine absolute times move with it, the
ratios measured side by side much less. The last line reads ``ratios loss_time=X loss_mem=X step_time=X
step_rss=X slow_tuning_s=X step_time_real=X step_rss_real=X step_time_real_bf16=X step_rss_real_bf16=X
mask_vs_unmasked=X compile_s=X compile_warm_s=X``: fused / ``ForCausalLMLoss``, SLowED / stock (tiny model, then
real shape, medians of per-pair ratios), seconds of one ``project()``, the masked / unmasked chunked loss and the
compile seconds (cold, warm).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 151_936
MASK_RATIO = 0.2

# Child processes: no hub, no telemetry, and freed buffers go back to the OS at once (a fixed mmap
# threshold), so that the RSS high-water mark measures what a call really holds.
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


# --------------------------------------------------------------------------- memory helpers
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


# --------------------------------------------------------------------------- (a) loss
def _loss_inputs(tokens: int):
    import torch

    torch.manual_seed(0)
    # Logits of a trained-looking model: a few confident rows, most spread out.
    logits = torch.randn(1, tokens, VOCAB, dtype=torch.bfloat16)
    logits[0, ::7] *= 6
    labels = torch.randint(0, VOCAB, (1, tokens))
    return logits.requires_grad_(True), labels


def _loss_methods():
    from transformers.loss.loss_utils import ForCausalLMLoss

    from slowed_plugin.core.logits_loss import fused_masked_causal_lm_loss
    from slowed_plugin.trainer.reference_loss import masked_causal_lm_loss

    def stock(logits, labels):
        return ForCausalLMLoss(logits, labels, VOCAB)

    def fused(logits, labels):
        return fused_masked_causal_lm_loss(logits, labels, MASK_RATIO, "sequence")[0]

    def reference(logits, labels):
        return masked_causal_lm_loss(logits, labels, MASK_RATIO, "sequence")[0]

    return {"stock": stock, "fused": fused, "reference": reference}


def worker_loss(tokens: int, reps: int, methods: list[str]) -> dict:
    """Times (interleaved rounds, the first one a warm-up), then each method's peak extra RSS.

    With a fixed mmap threshold every large buffer is unmapped when freed, so RSS is back at its
    baseline after each call and the methods can be measured one after the other in one process.
    """
    import gc

    import torch

    from slowed_plugin.core.kernels import KERNELS, warmup

    compile_s = warmup(VOCAB, (torch.bfloat16,))
    logits, labels = _loss_inputs(tokens)
    fns = _loss_methods()
    times: dict[str, list[float]] = {m: [] for m in methods}
    for rep in range(reps + 1):
        for name in methods:
            start = time.perf_counter()
            fns[name](logits, labels).backward()
            elapsed = time.perf_counter() - start
            logits.grad = None
            if rep:
                times[name].append(elapsed)
    memory = {}
    for name in methods:
        gc.collect()
        base = rss_mib()
        reset_peak()
        fns[name](logits, labels).backward()
        memory[name] = peak_rss_mib() - base
        logits.grad = None
    return {
        "times": times,
        "peak_extra_mib": memory,
        "logits_mib": logits.numel() * 2 / 2**20,
        "compile_s": compile_s,
        "compiled": KERNELS.failed is None,
    }


# --------------------------------------------------------------------------- (b) training step
def run_variant(variant: str, steps: int, batch: int, length: int) -> dict:
    """One SFTTrainer run of ``variant``; called in a fresh fork of the step worker."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

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
    from slowed_plugin import SLowEDCallback

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
            output_dir=tempfile.mkdtemp(prefix="slowed-bench-"),
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


# --------------------------------------------------------------------------- (c) Slow Tuning
LLAMA3_8B = {  # LlamaConfig of Llama-3-8B; the base weights stay on the meta device (never allocated)
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128_256,
}


def _llama3_8b_lora(rank: int, alpha: int, dtype, seed: int = 0):
    """A PEFT LoRA model of Llama-3-8B's shape (all linear layers): the frozen base on the meta device,
    real adapters (A as PEFT initialises it, a trained-looking B) on the CPU."""
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**LLAMA3_8B))
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, target_modules="all-linear"))
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, LoraLayer):
            lora_a, lora_b = module.lora_A["default"], module.lora_B["default"]
            fan_in, fan_out = lora_a.in_features, lora_b.out_features
            bound = fan_in**-0.5
            a = torch.empty(rank, fan_in).uniform_(-bound, bound, generator=generator)
            b = torch.randn(fan_out, rank, generator=generator) * 1e-3  # trained: ΔW != 0
            lora_a.weight = torch.nn.Parameter(a.to(dtype))
            lora_b.weight = torch.nn.Parameter(b.to(dtype))
    return model


def worker_slow_tuning(reps: int, dense_layers: int, bf16: bool) -> dict:
    """``SlowTuner.project()`` as the callback calls it, on Llama-3-8B-shaped LoRA adapters (r=64, all
    linear layers, float32; tau=1 puts the 64 gate/up projections outside the ball)."""
    import torch

    from slowed_plugin.core import slow_tuning
    from slowed_plugin.core.slow_tuning import SlowTuner, lora_delta_norm

    rank, alpha, tau = 64, 128, 1.0

    def timed(tuner, saved, threads: int):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        times, reports, calls = [], [], []
        original = slow_tuning.lora_delta_norm
        counter = [0]

        def counting(*args):
            counter[0] += 1
            return original(*args)

        slow_tuning.lora_delta_norm = counting
        try:
            for _ in range(reps + 1):
                with torch.no_grad():
                    for weight, b in zip(tuner.lora, saved, strict=True):
                        weight.lora_b.copy_(b)
                counter[0] = 0
                start = time.perf_counter()
                reports.append(tuner.project())
                times.append(time.perf_counter() - start)
                calls.append(counter[0])
        finally:
            slow_tuning.lora_delta_norm = original
            torch.set_num_threads(previous)
        return times[1:], reports[-1], calls[-1]

    result = {}
    for name in ["float32", "bfloat16"] if bf16 else ["float32"]:
        model = _llama3_8b_lora(rank, alpha, getattr(torch, name))
        tuner = SlowTuner(model, tau, check_start=False)
        saved = [w.lora_b.detach().clone() for w in tuner.lora]
        # Default threads (what a user gets), then one thread: 448 small GEMMs, each an OpenMP region,
        # suffer from spin-waiting when other processes hold the cores.
        times, report, calls = timed(tuner, saved, torch.get_num_threads())
        times_one, _, _ = timed(tuner, saved, 1)
        result[name] = {
            "times": times,
            "times_one_thread": times_one,
            "max_norm": report.max_norm,
            "projected": report.num_projected,
            "weights": report.num_weights,
            "norm_calls": calls,
            "adapter_params": sum(w.lora_a.numel() + w.lora_b.numel() for w in tuner.lora),
        }
        if name != "float32":
            del model, tuner, saved
            continue
        # Materialising ΔW, for `dense_layers` layers, extrapolated to all 32.
        pairs = [(w.lora_a.detach(), b, w.scaling) for w, b in zip(tuner.lora, saved, strict=True)]
        pairs = pairs[: dense_layers * 7]
        start = time.perf_counter()
        check = [float(torch.linalg.vector_norm(s * (b @ a))) for a, b, s in pairs]
        result["dense_s"] = (time.perf_counter() - start) * 32 / dense_layers
        result["dense_layers"] = dense_layers
        # Accuracy against float64: the Gram identity in float32, and the materialised ΔW in float32.
        truth = [
            float(((b.double().T @ b.double()) * (a.double() @ a.double().T)).sum().sqrt() * s) for a, b, s in pairs
        ]
        gram = [float(lora_delta_norm(a, b, s)) for a, b, s in pairs]
        result["rel_err_gram"] = max(abs(x - y) / y for x, y in zip(gram, truth, strict=True))
        result["rel_err_dense"] = max(abs(x - y) / y for x, y in zip(check, truth, strict=True))
        del model, tuner, saved, pairs
    return result


# --------------------------------------------------------------------------- (d) real-shape step
QWEN25_05B = {  # Qwen2.5-0.5B's shape, built locally (random weights: step time does not depend on them)
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": VOCAB,
    "tie_word_embeddings": True,
    "max_position_embeddings": 4096,
}


def worker_real_model(path: str) -> dict:
    """Build the Qwen2.5-0.5B-shaped model once and save it, so that every step process loads the same
    weights (a memory map) instead of initialising 494M parameters again."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**QWEN25_05B, bos_token_id=2, eos_token_id=3, pad_token_id=0))
    model.save_pretrained(path)
    return {"params": sum(p.numel() for p in model.parameters())}


def _real_trainer(variant: str, model_dir: str, dtype: str, steps: int, length: int, callbacks: list):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from slowed_plugin import SLowEDCallback
    from slowed_plugin.tiny import build_tokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(steps):
        ids = torch.randint(4, VOCAB, (length,), generator=generator).tolist()
        prompt = length // 4  # completion-only loss: the prompt quarter is ignored
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    slowed = [SLowEDCallback(tau=10.0, mask_ratio=MASK_RATIO)] if variant == "slowed" else []
    return SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=tempfile.mkdtemp(prefix="slowed-bench-"),
            max_steps=steps,
            per_device_train_batch_size=1,
            learning_rate=1e-4,
            logging_steps=steps,
            report_to=[],
            save_strategy="no",
            use_cpu=True,
            bf16=dtype == "bfloat16",
            seed=0,
            dataloader_num_workers=0,
            max_length=None,
            disable_tqdm=True,
        ),
        train_dataset=Dataset.from_list(rows),
        processing_class=build_tokenizer(["a b c d e f g"]),
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"),
        callbacks=[*slowed, *callbacks],
    )


def worker_real_steps(model_dir: str, dtype: str, pairs: int, length: int) -> dict:
    """Stock SFTTrainer and SFTTrainer + SLowEDCallback in two forks that take turns, one step at a time:
    a fork runs its step while the other waits (idle), the order flips every pair, so each pair of steps
    meets the same background load. The first step of each is a warm-up, not paired."""
    import multiprocessing

    import datasets  # noqa: F401 - imported before forking, like the rest
    import peft  # noqa: F401
    import trl  # noqa: F401
    from transformers import TrainerCallback
    from trl import SFTTrainer  # noqa: F401

    import slowed_plugin.core.hidden_states_loss  # noqa: F401
    import slowed_plugin.trainer.callback  # noqa: F401

    steps = pairs + 1
    context = multiprocessing.get_context("fork")

    def child(connection, variant):
        try:
            reset_peak()

            class Turn(TrainerCallback):  # last callback: its step_end comes after SLowED's projection
                def on_step_begin(self, args, state, control, **kwargs):
                    connection.send(("ready", None))
                    connection.recv()  # "go"
                    self.start = time.perf_counter()

                def on_step_end(self, args, state, control, **kwargs):
                    connection.send(("step", time.perf_counter() - self.start))

            start = time.perf_counter()
            trainer = _real_trainer(variant, model_dir, dtype, steps, length, [Turn()])
            trainer.train()
            connection.send(("done", {"peak_rss_mib": peak_rss_mib(), "process_s": time.perf_counter() - start}))
        except BaseException as err:  # noqa: BLE001 - report any failure to the parent
            connection.send(("error", f"{type(err).__name__}: {err}"))
        finally:
            connection.close()

    links, processes = {}, []
    for variant in ("stock", "slowed"):
        parent_end, child_end = context.Pipe()
        process = context.Process(target=child, args=(child_end, variant))
        process.start()
        links[variant] = parent_end
        processes.append(process)

    def expect(variant, kind):
        got, value = links[variant].recv()
        if got == "error":
            raise RuntimeError(f"variant {variant}: {value}")
        assert got == kind, (got, kind)
        return value

    times: dict[str, list[float]] = {"stock": [], "slowed": []}
    for step in range(steps):
        for variant in ("stock", "slowed") if step % 2 == 0 else ("slowed", "stock"):
            expect(variant, "ready")
            links[variant].send("go")
            times[variant].append(expect(variant, "step"))
    result = {v: {"step_times": times[v], **expect(v, "done")} for v in links}
    for process in processes:
        process.join()
    return result


def worker_compile(dtypes: list[str]) -> dict:
    """The callback's warm-up in a fresh process (TORCHINDUCTOR_CACHE_DIR set by the caller)."""
    import torch

    from slowed_plugin.core.kernels import KERNELS, warmup

    seconds = warmup(VOCAB, tuple(getattr(torch, d) for d in dtypes))
    return {"compile_s": seconds, "compiled": KERNELS.failed is None}


def worker_chunked_loss(tokens: int, reps: int) -> dict:
    """The chunked loss from hidden states at Qwen2.5-0.5B's head (896 x 151,936, frozen, bf16), at
    mask_ratio 0.2 and at 0 (the same kernels keeping every target): what the masking itself costs or saves."""
    import torch

    from slowed_plugin.core.hidden_states_loss import chunked_masked_causal_lm_loss
    from slowed_plugin.core.kernels import warmup

    warmup(VOCAB, (torch.bfloat16,), paths=("hidden_states",))
    torch.manual_seed(0)
    hidden = torch.randn(1, tokens, QWEN25_05B["hidden_size"], dtype=torch.bfloat16, requires_grad=True)
    head = (torch.randn(VOCAB, QWEN25_05B["hidden_size"]) * 0.05).bfloat16()
    labels = torch.randint(0, VOCAB, (1, tokens))
    labels[0, : tokens // 4] = -100
    times: dict[str, list[float]] = {"masked": [], "unmasked": []}
    for rep in range(reps + 1):
        for name, ratio in (("masked", MASK_RATIO), ("unmasked", 0.0)):
            start = time.perf_counter()
            chunked_masked_causal_lm_loss(hidden, head, labels, ratio)[0].backward()
            if rep:
                times[name].append(time.perf_counter() - start)
            hidden.grad = None
    return times


# --------------------------------------------------------------------------- orchestration
def run_worker(name: str, env_extra: dict | None = None, **kwargs) -> dict:
    env = {**os.environ, **CHILD_ENV, **(env_extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--args", json.dumps(kwargs)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    result = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not result:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-5000:])
        raise RuntimeError(f"benchmark worker {name} {kwargs} failed (exit {done.returncode})")
    return json.loads(result[-1][len("RESULT ") :])


def _load() -> str:
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a"


def _range(values: list[float]) -> str:
    return f"{min(values):.3f}-{statistics.median(values):.3f}-{max(values):.3f}"


def machine() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}, load average at start {load:.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer repetitions (< 2 minutes)")
    parser.add_argument("--only", default="abcd", help="which parts to run, e.g. 'a' or 'bd'")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--args", default="{}", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.worker:
        workers = {
            "loss": worker_loss,
            "steps": worker_steps,
            "slow_tuning": worker_slow_tuning,
            "real_model": worker_real_model,
            "real_steps": worker_real_steps,
            "compile": worker_compile,
            "chunked_loss": worker_chunked_loss,
        }
        print("RESULT " + json.dumps(workers[opts.worker](**json.loads(opts.args))), flush=True)
        return 0

    quick = opts.quick
    started = time.perf_counter()
    print(f"machine: {machine()}")
    print(f"command: python benchmarks/bench.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    ratios = {"loss_time": float("nan"), "loss_mem": float("nan"), "step_time": float("nan"), "step_rss": float("nan")}
    for key in ("slow_tuning_s", "step_time_real", "step_rss_real", "step_time_real_bf16", "step_rss_real_bf16"):
        ratios[key] = float("nan")
    for key in ("mask_vs_unmasked", "compile_s", "compile_warm_s"):
        ratios[key] = float("nan")
    med = statistics.median

    if "a" in opts.only:
        tokens = 1024 if quick else 2048
        methods = ["stock", "fused"] if quick else ["stock", "fused", "reference"]
        timing = run_worker("loss", tokens=tokens, reps=2 if quick else 5, methods=methods)
        mem = timing["peak_extra_mib"]
        t = {m: med(v) for m, v in timing["times"].items()}
        print(f"\n(a) loss forward+backward, {tokens} tokens x {VOCAB} vocab, bf16, mask_ratio={MASK_RATIO}")
        print(
            f"    kernels compiled: {timing['compiled']}, warm-up (compile or cache load) {timing['compile_s']:.1f} s"
        )
        print(f"    {'method':<34}{'time s':>9}{'x stock':>9}{'peak extra MiB':>16}{'x stock':>9}")
        names = {
            "stock": "ForCausalLMLoss (transformers)",
            "fused": "SLowED fused_masked_causal_lm_loss",
            "reference": "SLowED masked_causal_lm_loss (ref)",
        }
        for m in methods:
            print(
                f"    {names[m]:<34}{t[m]:>9.3f}{t[m] / t['stock']:>9.2f}{mem[m]:>16.0f}{mem[m] / mem['stock']:>9.2f}"
            )
        ratios["loss_time"] = t["fused"] / t["stock"]
        ratios["loss_mem"] = mem["fused"] / mem["stock"]

    if "b" in opts.only:
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

    if "c" in opts.only:
        st = run_worker("slow_tuning", reps=3 if quick else 7, dense_layers=1 if quick else 2, bf16=not quick)
        fp32 = st["float32"]
        print(
            f"\n(c) SlowTuner.project(), as the callback calls it: Llama-3-8B-shaped PEFT LoRA r=64, all linear layers "
            f"({fp32['weights']} adapters, {fp32['adapter_params'] / 1e6:.0f}M parameters), tau=1"
        )
        for name, r in ((k, st[k]) for k in ("float32", "bfloat16") if k in st):
            print(
                f"    {name}: {med(r['times']):.3f} s median ({_range(r['times'])}) on default threads, "
                f"{med(r['times_one_thread']):.3f} s on 1 thread; {r['projected']}/{r['weights']} projected, "
                f"{r['norm_calls']} norms computed ({r['norm_calls'] / r['weights']:.2f} per adapter)"
            )
        print(
            f"    materialising every ΔW instead: {st['dense_s']:.1f} s (measured on {st['dense_layers']} layer(s), "
            f"x {32 // st['dense_layers']}), {st['dense_s'] / med(fp32['times']):.0f}x slower"
        )
        print(
            f"    largest relative error of the norm against float64: Gram identity {st['rel_err_gram']:.1e}, "
            f"materialised ΔW {st['rel_err_dense']:.1e}"
        )
        ratios["slow_tuning_s"] = med(fp32["times"])

    if "d" in opts.only:
        print(f"\n(d) real shape: Qwen2.5-0.5B-shaped model (load average now {_load()})")
        cache = tempfile.mkdtemp(prefix="slowed-bench-inductor-")
        try:
            env = {"TORCHINDUCTOR_CACHE_DIR": cache}
            cold = run_worker("compile", env_extra=env, dtypes=["float32"])
            warm = run_worker("compile", env_extra=env, dtypes=["float32"])
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        print(
            f"    one-off compile of the loss kernels (the callback's warm-up, fp32, both loss paths), per process: "
            f"{cold['compile_s']:.1f} s with an empty inductor cache, {warm['compile_s']:.1f} s from the cache "
            f"(compiled: {cold['compiled']})"
        )
        ratios["compile_s"] = cold["compile_s"]
        ratios["compile_warm_s"] = warm["compile_s"]

        loss = run_worker("chunked_loss", tokens=512, reps=3 if quick else 6)
        ratio = [m / u for m, u in zip(loss["masked"], loss["unmasked"], strict=True)]
        print(
            f"    chunked loss from hidden states, 1 x 512 tokens (first quarter prompt), head 896 x {VOCAB} bf16: "
            f"mask_ratio={MASK_RATIO} {med(loss['masked']):.3f} s vs mask_ratio=0 (same kernels) "
            f"{med(loss['unmasked']):.3f} s: x{_range(ratio)} (min-median-max of pairs)"
        )
        ratios["mask_vs_unmasked"] = med(ratio)

        model_dir = tempfile.mkdtemp(prefix="slowed-bench-qwen-")
        try:
            params = run_worker("real_model", path=model_dir)["params"]
            pairs = 3 if quick else 5
            print(
                f"    SFTTrainer step, {params / 1e6:.0f}M parameters (24 layers, hidden 896, vocab {VOCAB}, tied "
                f"head), LoRA r=16 all linear, batch 1 x 512 (first quarter prompt); stock (chunked_nll) and "
                f"+ SLowEDCallback(tau=10, mask_ratio={MASK_RATIO}) in two forks taking turns, {pairs} step pairs "
                "after one warm-up step each"
            )
            print(
                f"    {'weights':<10}{'stock s':>9}{'SLowED s':>10}{'x stock, per pair min-median-max':>36}"
                f"{'RSS MiB':>10}{'x stock':>9}{'load':>7}"
            )
            for dtype, key in (("float32", "real"), ("bfloat16", "real_bf16")):
                run = run_worker("real_steps", model_dir=model_dir, dtype=dtype, pairs=pairs, length=512)
                stock, slowed = run["stock"], run["slowed"]
                ratio = [x / y for x, y in zip(slowed["step_times"][1:], stock["step_times"][1:], strict=True)]
                rss = slowed["peak_rss_mib"] / stock["peak_rss_mib"]
                print(
                    f"    {dtype:<10}{med(stock['step_times'][1:]):>9.2f}{med(slowed['step_times'][1:]):>10.2f}"
                    f"{_range(ratio):>36}{slowed['peak_rss_mib']:>10.0f}{rss:>9.2f}{_load():>7}"
                )
                print(
                    f"    {'':<10}first step s: stock {stock['step_times'][0]:.1f}, SLowED {slowed['step_times'][0]:.1f}; "
                    f"whole process s: stock {stock['process_s']:.0f}, SLowED {slowed['process_s']:.0f}"
                )
                ratios[f"step_time_{key}"] = med(ratio)
                ratios[f"step_rss_{key}"] = rss
        finally:
            shutil.rmtree(model_dir, ignore_errors=True)

    print(f"\ntotal {time.perf_counter() - started:.0f} s, load average at the end {_load()}")
    print("ratios " + " ".join(f"{k}={v:.3f}" for k, v in ratios.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
