"""SLowED against the stock loss paths, measured side by side on this machine.

    python benchmarks/bench.py                    # (a)-(d) on CPU, the full run (tens of minutes on 2 cores)
    python benchmarks/bench.py --quick            # smaller shapes and fewer repetitions; (d) still trains the real shape
    python benchmarks/bench.py --only cd          # some parts only
    python benchmarks/bench.py --only d --steps-only --dtypes float32 --pairs 3   # (d)'s step pairs alone
    python benchmarks/bench.py --only cef --device cuda   # the GPU cases (scripts/gpu-check.sh runs them)

One file per benchmark, each with its worker(s) and its report:

(a) ``loss.py``: the loss alone on the same logits, SLowED's fused loss (and the reference) vs transformers'
    ``ForCausalLMLoss``; 2,048 tokens x 151,936 vocabulary, bf16, ``mask_ratio=0.2`` (``--quick``: 1,024), CPU.
(b) ``vocab_step.py``: one ``SFTTrainer`` step of a tiny Qwen2-shaped model with the real vocabulary, LoRA r=16: stock
    (``chunked_nll`` and ``"nll"``) vs + ``SLowEDCallback``, in forks taking turns step by step, CPU.
(c) ``slow_tuning.py``: ``SlowTuner.project()`` on Llama-3-8B-shaped LoRA adapters (r=64, all linear layers) vs
    materialising every ΔW; on ``--device``.
(d) ``real_shape.py``: a Qwen2.5-0.5B-shaped model, LoRA r=16, batch 1 x 512, stock vs SLowED in forks taking turns
    step by step (fp32, bf16); the kernels' compile, cold and cached; masked vs unmasked chunked loss, CPU.
(e) ``gpu_step.py``: the GPU cases, Qwen2.5-0.5B and -1.5B shapes, bf16, LoRA r=64, batch 4 x 1024: SLowED vs
    stock ``chunked_nll`` and vs Liger (if installed), peak GPU memory, the loss alone against its matmul floor.
(f) ``qlora_memory.py``: each QLoRA recipe's shape in 4-bit under its card's memory, peak vs the estimate.

``harness.py`` runs each worker in a fresh process; (b), (d) and (e) train through
:mod:`slowed_plugin.bench.step_pairs`, the step machinery of ``slowed doctor --bench``. With ``--device cpu``, (e) and (f) run their code at tiny
shapes (``--tiny`` does the same for (c)): the GPU check's dry run, whose timings mean nothing.

The machine's load average is printed with the results: on a shared machine absolute times move with it, the
ratios measured side by side much less. The last line reads ``ratios key=value ...`` for the parts that ran:
SLowED / stock (or the named pair), seconds of one ``project()``, compile seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import gpu_step
import harness
import loss
import qlora_memory
import real_shape
import slow_tuning
import vocab_step

PARTS = {"a": loss, "b": vocab_step, "c": slow_tuning, "d": real_shape, "e": gpu_step, "f": qlora_memory}
WORKERS = {name: fn for module in PARTS.values() for name, fn in module.WORKERS.items()}
DEVICES = ("cpu", "cuda")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller shapes, fewer repetitions; (d) still builds and trains the real Qwen2.5-0.5B shape, which "
        "takes many minutes on a CPU (--only abc leaves it out)",
    )
    parser.add_argument("--only", default="abcd", help="which parts to run, e.g. 'a' or 'bd' (default abcd)")
    parser.add_argument("--device", default="cpu", help="device of (c), (e) and (f): cpu or cuda (default cpu)")
    parser.add_argument("--tiny", action="store_true", help="(c) at a tiny shape (the GPU check's dry run)")
    parser.add_argument("--json", metavar="FILE", help="also write every part's results and the ratios to FILE")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed to each worker of (e) and (f)")
    parser.add_argument(
        "--pairs", type=int, default=None, help="(d)'s step pairs per dtype (default 3 with --quick, else 5)"
    )
    parser.add_argument(
        "--dtypes", default="float32,bfloat16", help="(d)'s weight dtypes, comma-separated (default float32,bfloat16)"
    )
    parser.add_argument("--steps-only", action="store_true", help="(d) without the compile and the loss alone")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--args", default="{}", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.worker:
        harness.print_result(WORKERS[opts.worker](**json.loads(opts.args)))
        return 0
    unknown = set(opts.only) - set(PARTS)
    if unknown:
        parser.error(f"--only {opts.only!r}: unknown part(s) {''.join(sorted(unknown))}; parts are {''.join(PARTS)}")
    dtypes = tuple(opts.dtypes.split(","))
    if set(dtypes) - set(real_shape.DTYPES):
        parser.error(f"--dtypes {opts.dtypes!r}: each must be one of {', '.join(real_shape.DTYPES)}")
    if opts.pairs is not None and opts.pairs < 1:
        parser.error(f"--pairs {opts.pairs}: must be 1 or more")
    if opts.device not in DEVICES:
        parser.error(f"--device {opts.device!r} is not one of {', '.join(DEVICES)}")

    started = time.perf_counter()
    print(f"machine: {harness.machine()}")
    print(f"command: python benchmarks/bench.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    ratios: dict[str, float] = {}
    results: dict[str, object] = {}
    for letter in opts.only:
        module = PARTS[letter]
        if letter == "c":
            shape = "tiny" if opts.tiny else "llama-3-8b"
            results[letter] = module.report(opts.quick, ratios, device=opts.device, shape=shape)
        elif letter == "d":
            results[letter] = module.report(
                opts.quick, ratios, pairs=opts.pairs, dtypes=dtypes, steps_only=opts.steps_only
            )
        elif letter in "ef":
            results[letter] = module.report(opts.quick, ratios, device=opts.device, timeout=opts.timeout)
        else:
            results[letter] = module.report(opts.quick, ratios)
    print(f"\ntotal {time.perf_counter() - started:.0f} s, load average at the end {harness.load()}")
    print("ratios " + " ".join(f"{k}={v:.3f}" for k, v in ratios.items()))
    if opts.json:
        Path(opts.json).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.json).write_text(
            json.dumps({"machine": harness.machine(), "ratios": ratios, "results": results}, indent=2, default=str)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
