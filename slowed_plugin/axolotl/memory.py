"""Back-of-the-envelope GPU memory of the SLowED recipes (estimates, not measurements).

    python -m slowed_plugin.axolotl.memory                  # the table for the repository's recipes/
    python -m slowed_plugin.axolotl.memory --recipes DIR    # ... for the recipes in DIR

``scripts/docs.py`` writes the same table into recipes/README.md. Peak memory per GPU, with
gradient checkpointing, in GiB: the larger of one training step and one evaluation step, each the
sum of

- weights: the frozen base (NF4 with double quantisation: 4.127 bits per linear weight; bf16 for
  embeddings, an untied output head and full-precision bases);
- adapter: LoRA parameters in fp32 with their gradients and optimizer state;
- activations: in training, one checkpointed hidden state per layer plus one layer's recomputed
  working set; in evaluation (no gradient), one layer's working set;
- training loss, on the path SLowED's masked loss takes (``SLowEDCallback._install_masked_loss``),
  for N = micro_batch_size x sequence_len tokens, hidden size H and a vocabulary of V:

  - from hidden states (:mod:`slowed_plugin.core.hidden_states_loss`), the default for a decoder
    with a plain linear head, which every recipe here is: the logits never exist beyond one chunk of
    ``DEFAULT_CHUNK_SIZE`` (256) rows, in bf16, in the entropy pass (no gradient) and again in the
    backward; the compiled kernels keep their float32 work in registers. With the final hidden
    states and their gradient: 2·256·V + 2·N·H bytes. (If ``torch.compile`` is unavailable, the
    eager kernels hold about 20 more bytes per chunk element in float32 temporaries: 0.7 GiB at
    V = 151,936, not counted.)
  - on logits (:mod:`slowed_plugin.core.logits_loss`), for MoE models, VLMs and a PEFT-wrapped or
    quantised ``lm_head`` (a recipe whose ``lora_target_modules`` names ``lm_head``): the model's
    bf16 logits of all N tokens and their gradient, 4·N·V bytes.
- evaluation loss (a recipe with ``val_set_size`` or ``test_datasets``): evaluation runs the
  untouched forward, so transformers' ``ForCausalLMLoss`` holds the bf16 logits of the
  ``eval_batch_size`` x sequence_len tokens, their float32 copy and the float32 log-probabilities,
  10 bytes per logit. With a large vocabulary this step, not training, sets the peak;
- overhead: 0.5 GiB CUDA context, then 10 % for allocator fragmentation.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

GIB = 1024**3
NF4_BYTES = (4 + 0.127) / 8  # 4-bit codes + double-quantised absmax, blocksize 64
LOSS_CHUNK = 256  # rows of logits at a time: slowed_plugin.core.hidden_states_loss.DEFAULT_CHUNK_SIZE
LossPath = Literal["hidden_states", "logits"]


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
    """GiB per term; ``total`` is the peak of the training step and (if any) the evaluation step."""

    weights: float
    adapter: float
    activations: float
    loss: float
    loss_path: LossPath
    eval_loss: float | None  # None: the recipe does not evaluate
    total: float


def loss_bytes(arch: Architecture, tokens: int, loss_path: LossPath = "hidden_states") -> float:
    """Peak bytes of SLowED's masked training loss over ``tokens`` rows, on ``loss_path`` (module docstring)."""
    if loss_path == "hidden_states":
        return 2.0 * LOSS_CHUNK * arch.vocab + 2.0 * tokens * arch.hidden
    if loss_path == "logits":
        return 4.0 * tokens * arch.vocab
    raise ValueError(f"`loss_path` must be hidden_states or logits; got {loss_path!r}.")


def estimate(
    arch: Architecture,
    sequence_len: int,
    micro_batch_size: int,
    lora_r: int,
    quantized: bool,
    optimizer_bytes: float = 8.0,
    loss_path: LossPath = "hidden_states",
    eval_batch_size: int | None = None,
) -> Estimate:
    """Peak GiB of one training step and, with ``eval_batch_size``, one evaluation step (module docstring).

    ``optimizer_bytes`` per trainable parameter: 8 for AdamW, 2 for 8-bit AdamW.
    """
    embed = arch.vocab * arch.hidden
    head = 0 if arch.tied else embed
    linear = arch.params - embed - head
    weights = (linear * (NF4_BYTES if quantized else 2.0) + 2.0 * (embed + head)) / GIB
    adapter = arch.lora_params(lora_r) * (4 + 4 + optimizer_bytes) / GIB

    def working_set(tokens: int) -> float:  # one layer's recomputed (or, in evaluation, only) activations
        return tokens * (10 * arch.hidden + 4 * arch.intermediate) * 2 / GIB

    tokens = sequence_len * micro_batch_size
    activations = arch.layers * tokens * arch.hidden * 2 / GIB + working_set(tokens)
    loss = loss_bytes(arch, tokens, loss_path) / GIB
    peak = weights + adapter + activations + loss
    eval_loss = None
    if eval_batch_size is not None:
        # transformers' ForCausalLMLoss on the untouched forward: bf16 logits, fp32 copy, fp32 log-probs.
        eval_tokens = sequence_len * eval_batch_size
        eval_loss = eval_tokens * arch.vocab * 10 / GIB
        peak = max(peak, weights + adapter + working_set(eval_tokens) + eval_loss)
    total = (peak + 0.5) * 1.1
    return Estimate(weights, adapter, activations, loss, loss_path, eval_loss, total)


def recipe_loss_path(cfg: Mapping[str, Any]) -> LossPath:
    """The path SLowED's loss takes for a recipe: on logits when the LoRA adapter wraps ``lm_head``."""
    targets = cfg.get("lora_target_modules") or []
    return "logits" if "lm_head" in ([targets] if isinstance(targets, str) else targets) else "hidden_states"


def recipe_eval_batch_size(cfg: Mapping[str, Any]) -> int | None:
    """Axolotl's evaluation batch (``eval_batch_size``, default ``micro_batch_size``), or None without evaluation."""
    evaluates = (cfg.get("val_set_size") or 0) > 0 or bool(cfg.get("test_datasets"))
    if not evaluates or str(cfg.get("eval_strategy")).lower() == "no":
        return None
    return int(cfg.get("eval_batch_size") or cfg["micro_batch_size"])


def recipe_estimate(cfg: Mapping[str, Any]) -> Estimate:
    """The estimate for an Axolotl recipe (a YAML mapping) whose ``base_model`` is in :data:`ARCHITECTURES`."""
    optimizer = str(cfg.get("optimizer") or "adamw_torch")
    return estimate(
        ARCHITECTURES[cfg["base_model"]],
        int(cfg["sequence_len"]),
        int(cfg["micro_batch_size"]),
        int(cfg["lora_r"]),
        quantized=bool(cfg.get("load_in_4bit")),
        optimizer_bytes=2.0 if "8bit" in optimizer else 8.0,
        loss_path=recipe_loss_path(cfg),
        eval_batch_size=recipe_eval_batch_size(cfg),
    )


def table(recipes: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table of :func:`recipe_estimate` for ``{file name: recipe}``."""
    rows = [
        "| recipe | base model | seq x batch | weights | adapter + optimizer | activations | training loss "
        "| evaluation loss | estimated peak |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, cfg in recipes.items():
        e = recipe_estimate(cfg)
        loss = f"{e.loss:.1f}" + (" (on logits)" if e.loss_path == "logits" else "")
        eval_loss = "none" if e.eval_loss is None else f"{e.eval_loss:.1f}"
        rows.append(
            f"| `{name}` | {cfg['base_model']} | {cfg['sequence_len']} x {cfg['micro_batch_size']} | "
            f"{e.weights:.1f} | {e.adapter:.1f} | {e.activations:.1f} | {loss} | {eval_loss} | **{e.total:.1f} GiB** |"
        )
    return "\n".join(rows)


def default_recipes() -> Path | None:
    """The recipes folder next to the package: bundled in it, or the repository's ``recipes/``."""
    package = Path(__file__).resolve().parents[1]
    for folder in (package / "recipes", package.parent / "recipes"):
        if any(folder.glob("*.yaml")):
            return folder
    return None


def recipes_table(folder: str | Path) -> str:
    """The table for every SLowED recipe in ``folder`` whose base model is in :data:`ARCHITECTURES`."""
    import yaml

    recipes = {}
    for path in sorted(Path(folder).glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(cfg, Mapping) and cfg.get("base_model") in ARCHITECTURES and cfg.get("slowed") is not None:
            recipes[path.name] = cfg
    return table(recipes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m slowed_plugin.axolotl.memory",
        description="Estimated peak GPU memory of the SLowED recipes (estimates, not measurements).",
    )
    parser.add_argument(
        "--recipes", type=Path, default=None, help="folder of recipe YAML files (default: the repository's recipes/)"
    )
    args = parser.parse_args(argv)
    folder = args.recipes or default_recipes()
    if folder is None:
        parser.error("no recipes/ folder next to the package; pass `--recipes DIR`, a folder of recipe YAML files.")
    if not folder.is_dir():
        parser.error(f"`--recipes` must be a folder of recipe YAML files; got {str(folder)!r}.")
    print(recipes_table(folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
