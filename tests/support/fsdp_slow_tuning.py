"""Slow Tuning on FSDP2-sharded parameters (torch's fully_shard, gloo, CPU), for tests/test_distributed.py.

Usage: torchrun --nproc_per_node 2 fsdp_slow_tuning.py MODEL_DIR OUT_DIR
Builds the same LoRA model on every rank, builds the tuner, then shards the model (as an engine would,
after the tuner exists), moves the adapters off the ball, projects, and saves the gathered result.
"""

import os
import sys

import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM

from slowed_plugin.core.slow_tuning import SlowTuner, _full


def build(model_dir: str, full_ft: bool):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if not full_ft:
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    return model


def perturb(model) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.requires_grad:
                noise = torch.randn(param.shape, generator=gen) * 0.2
                if hasattr(param, "device_mesh"):
                    from torch.distributed.tensor import distribute_tensor

                    noise = distribute_tensor(noise, param.device_mesh, param.placements)
                param.add_(noise)


def main() -> None:
    model_dir, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    results = {}
    for full_ft in (False, True):
        model = build(model_dir, full_ft)
        tuner = SlowTuner(model, tau=0.5)
        for layer in model.base_model.model.model.layers if not full_ft else model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        sharded = [n for n, p in model.named_parameters() if p.requires_grad and hasattr(p, "device_mesh")]
        perturb(model)
        before = tuner.norms()
        report = tuner.project()
        after = tuner.norms()
        state = {n: _full(p).clone() for n, p in model.named_parameters() if p.requires_grad}
        # The same steps without sharding, for comparison.
        plain = build(model_dir, full_ft)
        plain_tuner = SlowTuner(plain, tau=0.5)
        perturb(plain)
        plain_tuner.project()
        reference = {n: p.detach().clone() for n, p in plain.named_parameters() if p.requires_grad}
        results["full" if full_ft else "lora"] = {
            "reference": reference,
            "sharded": len(sharded),
            "before": before,
            "after": after,
            "projected": report.num_projected,
            "state": state,
        }
    torch.save(results, os.path.join(out, f"rank{dist.get_rank()}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
