"""Back-of-the-envelope GPU memory of the recipes in ``recipes/`` (estimates, not measurements).

    python -m slowed_plugin.axolotl.memory                     # print the table of recipes/README.md
    python -m slowed_plugin.axolotl.memory recipes/README.md   # rewrite it between its markers

Peak memory of one training step, per GPU, with gradient checkpointing, in GiB:

- weights: the frozen base (NF4 with double quantisation: 4.127 bits per linear weight; bf16 for
  embeddings, an untied output head and full-precision bases);
- adapter: LoRA parameters in fp32 with their gradients and optimizer state;
- activations: one checkpointed hidden state per layer plus one layer's recomputed working set;
- logits: the causal-LM loss on N = micro_batch_size x sequence_len tokens over the vocabulary:
  bf16 logits, their fp32 copy and the saved log-probabilities (10 bytes per logit). SLowED's
  entropy pass works in chunks of 1,024 rows under ``no_grad`` and frees them before the loss, so
  it adds max(0, 12·1024·V - 8·N·V) bytes, nothing at these sizes;
- overhead: 0.5 GiB CUDA context, then 10 % for allocator fragmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3
NF4_BYTES = (4 + 0.127) / 8  # 4-bit codes + double-quantised absmax, blocksize 64
ENTROPY_CHUNK = 1024


@dataclass(frozen=True)
class Architecture:
    """The shapes that matter to memory, from each model's published config.json."""

    name: str
    params: float  # total parameters
    hidden: int
    layers: int
    intermediate: int  # MLP width
    heads: int
    kv_heads: int
    vocab: int
    tied: bool  # output head shares the input embedding
    gated_mlp: bool = True  # gate/up/down (Llama, Qwen2) or h->4h->h (BLOOM, fused qkv)

    def lora_params(self, rank: int) -> int:
        """LoRA parameters with every linear layer of every block adapted (``lora_target_linear``)."""
        h, i = self.hidden, self.intermediate
        if self.gated_mlp:
            kv = self.kv_heads * (h // self.heads)
            shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]
        else:  # BLOOM: query_key_value, dense, dense_h_to_4h, dense_4h_to_h
            shapes = [(h, 3 * h), (h, h), (h, i), (i, h)]
        return self.layers * sum(rank * (a + b) for a, b in shapes)


ARCHITECTURES = {
    arch.name: arch
    for arch in (
        Architecture("Qwen/Qwen2.5-1.5B-Instruct", 1.544e9, 1536, 28, 8960, 12, 2, 151936, True),
        Architecture("Qwen/Qwen2.5-3B-Instruct", 3.086e9, 2048, 36, 11008, 16, 2, 151936, True),
        Architecture("meta-llama/Llama-3.2-1B-Instruct", 1.236e9, 2048, 16, 8192, 32, 8, 128256, True),
        Architecture("meta-llama/Llama-3.2-3B-Instruct", 3.213e9, 3072, 28, 8192, 24, 8, 128256, True),
        Architecture("meta-llama/Llama-3.1-8B-Instruct", 8.030e9, 4096, 32, 14336, 32, 8, 128256, False),
        Architecture("bigscience/bloom-1b1", 1.065e9, 1536, 24, 6144, 16, 16, 250880, True, gated_mlp=False),
    )
}


@dataclass(frozen=True)
class Estimate:
    weights: float
    adapter: float
    activations: float
    logits: float
    slowed_extra: float
    total: float


def estimate(
    arch: Architecture,
    sequence_len: int,
    micro_batch_size: int,
    lora_r: int,
    quantized: bool,
    optimizer_bytes: float = 8.0,
) -> Estimate:
    """Peak GiB of one training step (see the module docstring for what each term counts).

    ``optimizer_bytes`` per trainable parameter: 8 for AdamW, 2 for 8-bit AdamW.
    """
    embed = arch.vocab * arch.hidden
    head = 0 if arch.tied else embed
    linear = arch.params - embed - head
    weights = (linear * (NF4_BYTES if quantized else 2.0) + 2.0 * (embed + head)) / GIB
    adapter = arch.lora_params(lora_r) * (4 + 4 + optimizer_bytes) / GIB
    tokens = sequence_len * micro_batch_size
    activations = (
        arch.layers * tokens * arch.hidden * 2 + tokens * (10 * arch.hidden + 4 * arch.intermediate) * 2
    ) / GIB
    logits = tokens * arch.vocab * 10 / GIB
    slowed_extra = max(0.0, 12 * ENTROPY_CHUNK * arch.vocab - 8 * tokens * arch.vocab) / GIB
    total = (weights + adapter + activations + logits + slowed_extra + 0.5) * 1.1
    return Estimate(weights, adapter, activations, logits, slowed_extra, total)


def recipe_estimate(cfg: dict) -> Estimate:
    """The estimate for an Axolotl recipe (a YAML mapping) whose ``base_model`` is in :data:`ARCHITECTURES`."""
    optimizer = str(cfg.get("optimizer") or "adamw_torch")
    return estimate(
        ARCHITECTURES[cfg["base_model"]],
        int(cfg["sequence_len"]),
        int(cfg["micro_batch_size"]),
        int(cfg["lora_r"]),
        quantized=bool(cfg.get("load_in_4bit")),
        optimizer_bytes=2.0 if "8bit" in optimizer else 8.0,
    )


def table(recipes: dict[str, dict]) -> str:
    """A Markdown table of :func:`recipe_estimate` for ``{file name: recipe}``."""
    rows = [
        "| recipe | base model | seq x batch | weights | adapter + optimizer | activations | logits + loss | estimated peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, cfg in recipes.items():
        e = recipe_estimate(cfg)
        rows.append(
            f"| `{name}` | {cfg['base_model']} | {cfg['sequence_len']} x {cfg['micro_batch_size']} | "
            f"{e.weights:.1f} | {e.adapter:.1f} | {e.activations:.1f} | {e.logits:.1f} | **{e.total:.1f} GiB** |"
        )
    return "\n".join(rows)


BEGIN = "<!-- memory:begin (generated by `python -m slowed_plugin.axolotl.memory`) -->"
END = "<!-- memory:end -->"


def recipes_table(folder: str = "recipes") -> str:
    """The table for every SLowED recipe in ``folder`` whose base model is in :data:`ARCHITECTURES`."""
    import glob
    import os

    import yaml

    recipes = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.yaml"))):
        with open(path, encoding="utf-8") as handle:
            cfg = yaml.safe_load(handle)
        if cfg.get("base_model") in ARCHITECTURES and cfg.get("slowed") is not None:
            recipes[os.path.basename(path)] = cfg
    return table(recipes)


def main(argv: list[str] | None = None) -> int:
    import os
    import re
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(recipes_table())
        return 0
    readme = argv[0]
    with open(readme, encoding="utf-8") as handle:
        text = handle.read()
    block = f"{BEGIN}\n{recipes_table(os.path.dirname(readme) or '.')}\n{END}"
    new, count = re.subn(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    if count != 1:
        print(f"{readme}: no {BEGIN!r} ... {END!r} block to replace", file=sys.stderr)
        return 1
    with open(readme, "w", encoding="utf-8") as handle:
        handle.write(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
