"""``python -m slowed_plugin.demo.probe``: does this machine compute the demo's bits?

Runs a short piece of the demo's pipeline under the floating-point pin (:mod:`.numerics`) and compares its
sha256 with the one recorded in the repository. Both of its optimizers are torch's fused AdamW: the default
(non-fused) one takes its square root through MKL's ``vsSqrt``, which rounds differently on Intel and AMD
processors even in MKL's COMPATIBLE branch (every other op of a training step gave the same bits on both, op by
op: ``tests/demo/numerics/``), so with it the probe would measure that known difference and nothing else. The
demo's own runs from a shipped base model use TRL's default optimizer, which is the fused one too.
"""

from __future__ import annotations

import os
import sys

from .numerics import PINNED_ENV, describe, numerics_record, pinned_env

# probe_digest() under the pin, torch 2.13.0 CPU (recorded on an Intel Xeon of the Sapphire Rapids class).
PROBE_SHA256 = "c10b81384dd6d8edb28e4c068f16b5a3dd752e53156b5f6a26fbb3f9848b1959"


def probe_digest(base_steps: int = 3, lora_steps: int = 3, batch_size: int = 16) -> str:
    """sha256 of a short piece of the demo's pipeline, computed in this process: ``base_steps`` steps of the
    base-model build (the real build code, a smaller batch, fused AdamW), then ``lora_steps`` LoRA steps on
    distillation chains and one greedy generation. Equal digests on two machines (or dispatch settings) mean
    equal bits."""
    import hashlib
    import tempfile
    from dataclasses import replace

    import torch
    from peft import LoraConfig, get_peft_model

    from .base_model import BaseSettings, build_base_model, collate, encode, state_digest
    from .world import build_world

    settings = replace(BaseSettings(), steps=base_steps, batch_size=batch_size, warmup_steps=1)
    world = build_world(settings.world)
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = build_base_model(settings, tmp, progress=False, world=world, fused_adamw=True)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, fused=True)
    chains = [encode(tokenizer, e.prompt, e.completion) for e in world.cot_train[: lora_steps * batch_size]]
    for step in range(lora_steps):
        batch = collate(chains[step * batch_size : (step + 1) * batch_size], tokenizer.pad_token_id)
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    prompt = tokenizer(world.cot_test[0].prompt, return_tensors="pt")
    with torch.no_grad():
        answer = model.generate(**prompt, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    digest = hashlib.sha256(state_digest(model).encode())
    digest.update(answer.numpy().tobytes())
    return digest.hexdigest()


def main() -> int:
    """Run the probe under the pin and compare it with the recorded digest; exit status 0 when equal and pinned."""
    if any(os.environ.get(k) != v for k, v in PINNED_ENV.items()):  # the pin must precede torch: start afresh
        os.execve(sys.executable, [sys.executable, "-m", "slowed_plugin.demo.probe"], pinned_env(os.environ))
    record = numerics_record()
    digest = probe_digest()
    print(describe(record))
    same = digest == PROBE_SHA256
    print(f"probe sha256 {digest[:16]}... {'equals' if same else 'DIFFERS from'} the recorded {PROBE_SHA256[:16]}...")
    return 0 if same and record["pinned"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
