"""(f) The consumer-card claim: each QLoRA recipe's shape trained under its card's memory, peak against the
estimate of ``slowed_plugin/axolotl/memory.py``.

Per ``recipes/qlora-*gb.yaml``: the recipe's model built from its config (random weights, nothing downloaded), the
decoder's linear layers in NF4 (:func:`slowed_plugin.bench.qlora.build_qlora`), LoRA ``lora_r`` on all linear
layers, gradient checkpointing as the recipe sets it, the recipe's optimizer (paged 8-bit AdamW), a few SLowED
steps of ``micro_batch_size x sequence_len`` tokens (a packed batch is exactly that) and, when the recipe
evaluates, one evaluation step at its eval batch through the model's own loss (as Axolotl evaluates). The
process's CUDA allocator is capped with ``torch.cuda.set_per_process_memory_fraction`` at the card's memory less
what CUDA holds outside the allocator (context, other processes). Measured peak: the allocator's peak reserved
memory plus that outside part, the quantity the estimate's total stands for (it adds 0.5 GiB of context and 10 %).

Differences from an Axolotl run, on purpose: the steps call SLowED's loss directly (no Trainer), and embeddings
and norms stay bf16 (Axolotl's ``prepare_model_for_kbit_training`` may upcast some to fp32).

``--device cpu`` runs the same code at a tiny shape of each recipe's family, without a cap (the dry run).
"""

from __future__ import annotations

import re
from pathlib import Path

from harness import ROOT, run_worker

GIB = 2**30


def recipes(folder: Path = ROOT / "recipes") -> list[Path]:
    return sorted(folder.glob("qlora-*gb.yaml"), key=lambda p: int(re.search(r"(\d+)gb", p.name).group(1)))


def model_config(arch, tiny: bool):
    from transformers import LlamaConfig, Qwen2Config

    family = Qwen2Config if arch.name.startswith("Qwen/") else LlamaConfig
    if tiny:
        shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=1024)  # fmt: skip
    else:
        shape = dict(hidden_size=arch.hidden, intermediate_size=arch.intermediate, num_hidden_layers=arch.layers,
                     num_attention_heads=arch.heads, num_key_value_heads=arch.kv_heads, vocab_size=arch.vocab)  # fmt: skip
    return family(**shape, tie_word_embeddings=arch.tied, max_position_embeddings=8192, use_cache=False)


def worker_qlora(recipe: str, device: str, steps: int) -> dict:
    import torch
    import yaml

    from slowed_plugin.axolotl.memory import ARCHITECTURES, recipe_estimate
    from slowed_plugin.axolotl.memory import recipe_eval_batch_size as eval_batch
    from slowed_plugin.bench.qlora import build_qlora, random_batch, slowed_step
    from slowed_plugin.core.slow_tuning import SlowTuner

    cfg = yaml.safe_load(Path(recipe).read_text())
    card_gib = int(re.search(r"(\d+)gb", Path(recipe).name).group(1))
    estimate = recipe_estimate(cfg)
    arch = ARCHITECTURES[cfg["base_model"]]
    cuda = device == "cuda"
    config = model_config(arch, tiny=not cuda)
    length = int(cfg["sequence_len"]) if cuda else 64
    batch, evaluation = int(cfg["micro_batch_size"]), eval_batch(cfg)
    rank = int(cfg["lora_r"]) if cuda else 8
    dtype = torch.bfloat16 if cuda else torch.float32
    result = {"recipe": Path(recipe).name, "card_gib": card_gib, "estimate_gib": estimate.total, "device": device,
              "shape": f"{arch.name} ({'tiny' if not cuda else 'real'})", "tokens": batch * length}  # fmt: skip
    model = build_qlora(config, device, rank, dtype, checkpointing=bool(cfg.get("gradient_checkpointing")))
    outside = 0
    if cuda:
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info()
        outside = (total - free) - torch.cuda.memory_reserved()  # CUDA context and anything not ours
        fraction = (card_gib * GIB - outside) / total
        torch.cuda.set_per_process_memory_fraction(fraction)
        torch.cuda.reset_peak_memory_stats()
        result.update(outside_gib=outside / GIB, fraction=fraction)
    tuner = SlowTuner(model, float(cfg["slowed"]["tau"]))
    params = [p for p in model.parameters() if p.requires_grad]
    if cuda and "8bit" in str(cfg.get("optimizer")):
        import bitsandbytes as bnb

        optimizer = bnb.optim.PagedAdamW8bit(params, lr=float(cfg["learning_rate"]))
    else:
        optimizer = torch.optim.AdamW(params, lr=float(cfg["learning_rate"]))
    losses = []
    try:
        model.train()
        for step in range(steps):
            ids, labels = random_batch(config.vocab_size, batch, length, device, seed=step)
            losses.append(slowed_step(model, ids, labels, optimizer, tuner, dtype)[0])
        if evaluation:
            model.eval()
            ids, labels = random_batch(config.vocab_size, evaluation, length, device, seed=99)
            with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=cuda):
                losses.append(float(model(input_ids=ids, labels=labels).loss))
        result["fits"] = True
    except torch.cuda.OutOfMemoryError as err:
        result.update(fits=False, error=str(err).splitlines()[0])
    result["losses"] = losses
    if cuda:
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
        result["measured_gib"] = result["peak_reserved_gib"] + outside / GIB
    return result


WORKERS = {"qlora": worker_qlora}


def report(quick: bool, ratios: dict, device: str = "cuda", timeout: float | None = None) -> dict:
    steps = 3 if device == "cuda" else 1
    print(
        f"\n(f) QLoRA recipes on their cards ({device}): NF4 base from the recipe's config, LoRA, checkpointing, "
        f"{steps} SLowED step(s) + the recipe's evaluation step, memory capped at the card"
    )
    results = {}
    for path in recipes():
        r = run_worker("qlora", timeout=timeout, recipe=str(path), device=device, steps=steps)
        results[r["recipe"]] = r
        if device != "cuda":
            print(
                f"    {r['recipe']}: code path ran at a tiny shape ({r['shape']}), losses {r['losses']}; no memory measured"
            )
            continue
        if not r["fits"]:
            print(
                f"    {r['recipe']}: DOES NOT FIT {r['card_gib']} GiB: {r['error']} (estimate {r['estimate_gib']:.1f} GiB)"
            )
            ratios[f"qlora_fits_{r['card_gib']}gb"] = 0.0
            continue
        ratio = r["estimate_gib"] / r["measured_gib"]
        print(
            f"    {r['recipe']}: fits {r['card_gib']} GiB; measured peak {r['measured_gib']:.2f} GiB (allocator "
            f"reserved {r['peak_reserved_gib']:.2f}, allocated {r['peak_allocated_gib']:.2f}, outside "
            f"{r['outside_gib']:.2f}); estimate {r['estimate_gib']:.2f} GiB: x{ratio:.2f} of measured"
        )
        ratios[f"qlora_fits_{r['card_gib']}gb"] = 1.0
        ratios[f"qlora_estimate_vs_measured_{r['card_gib']}gb"] = ratio
    return results
