"""Low-Entropy Masking's hidden-states loss on an FSDP2-sharded model (torch's fully_shard, gloo, CPU), for
tests/trainer/test_distributed.py.

Usage: torchrun --nproc_per_node 2 fsdp_masking.py MODEL_DIR OUT_DIR

Full fine-tuning (so `lm_head.weight` trains) of the same model on every rank, sharded two ways:

- `root`: every decoder layer and the whole model are FSDP units (the head's weight belongs to the root unit,
  unsharded while the model's forward runs);
- `head`: the head is an FSDP unit of its own as well, so while the loss reads `lm_head.weight` it is still the
  DTensor shard (the loss never calls the head module).

Each rank takes 2 of the same 4 rows, with `num_items_in_batch` = the kept count of all 4 and the loss multiplied
by the world size (as transformers' Trainer does, since FSDP averages gradients over ranks); the full-batch run
without sharding is the reference. Writes OUT_DIR/rank{N}.pt: the summed loss and the full gradients.
"""

import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM, AutoTokenizer

from slowed_plugin.config import SLowEDConfig
from slowed_plugin.core.masking import kept_token_count
from slowed_plugin.data import cot_tiny_rows
from slowed_plugin.trainer.loss import MaskedCausalLMLoss
from slowed_plugin.trainer.patches import Patches, install_masked_forward

CONFIG = SLowEDConfig(tau=None, mask_ratio=0.3, mask_scope="sequence")


def batch(model_dir: str) -> dict[str, torch.Tensor]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = [r["prompt"] + " " + r["completion"] for r in cot_tiny_rows()[:4]]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    labels = encoded["input_ids"].clone()
    labels[encoded["attention_mask"] == 0] = -100
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels}


def masked_model(model_dir: str):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    stats = []
    loss = MaskedCausalLMLoss(CONFIG, model, None, stats.append, lambda: 1)
    install_masked_forward(Patches(), model, loss)
    return model, loss, stats


def step(model, rows: dict[str, torch.Tensor], kept: torch.Tensor, scale: int) -> torch.Tensor:
    out = model(**rows, num_items_in_batch=kept)
    (out.loss * scale).backward()
    return out.loss.detach()


def main() -> None:
    model_dir, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    data = batch(model_dir)
    kept = kept_token_count(data["labels"], CONFIG.mask_ratio, CONFIG.mask_scope)
    mine = {k: v.chunk(world)[rank] for k, v in data.items()}

    reference, reference_loss, _ = masked_model(model_dir)
    results = {"reference": {"loss": step(reference, data, kept, 1), "path": reference_loss.path()}}
    results["reference"]["grads"] = {n: p.grad.clone() for n, p in reference.named_parameters()}

    for layout in ("root", "head"):
        model, loss, stats = masked_model(model_dir)
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        if layout == "head":
            fully_shard(model.lm_head, mesh=mesh)
        fully_shard(model, mesh=mesh)
        head_is_shard = isinstance(model.lm_head.weight, DTensor)
        local = step(model, mine, kept, world)
        total = local.clone()
        dist.all_reduce(total)  # each rank's sum over its kept rows / the global kept count
        dropped = stats[-1].dropped.clone()
        dist.all_reduce(dropped)
        results[layout] = {
            "loss": total,
            "path": loss.path(),
            "head_is_shard": head_is_shard,
            "dropped": int(dropped),
            "grads": {n: p.grad.full_tensor() for n, p in model.named_parameters()},
        }
    results["reference"]["dropped"] = int(data["labels"][:, 1:].ne(-100).sum() - kept)
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
