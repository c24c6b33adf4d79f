"""The safety subspace on a ``transformers.Trainer``: the directions, taken once when SLowED attaches.

The starting model (PEFT adapters off, :func:`~slowed_plugin.anchor.answers.adapters_disabled`) reads the harmful
and the benign prompts, rendered the way the safety anchor renders them (the training set's format, through the
row format); its hidden states at each prompt's last token give, per residual stream, the directions
(:func:`~slowed_plugin.core.subspace.safety_directions`). The projection itself is pure torch
(:class:`~slowed_plugin.core.subspace.SubspaceProjector`); the callback runs it where Slow Tuning projects.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..anchor.answers import adapters_disabled
from ..core.subspace import SubspaceProjector, directions_from_states
from ..evaluation.generation import padding
from ..log import get_logger

logger = get_logger()


@torch.no_grad()
def last_token_states(
    model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int, add_special_tokens: bool
) -> list[torch.Tensor]:
    """Per residual stream, the ``n x d`` hidden states (float32, CPU) at the last token of each text."""
    per_stream: list[list[torch.Tensor]] = []
    device = next(model.parameters()).device
    # Right padding: the last real token is then at (length - 1); padding is masked out and never read.
    with padding(tokenizer, "right", "The safety subspace's hidden states"):
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                list(texts[start : start + batch_size]),
                return_tensors="pt",
                padding=True,
                add_special_tokens=add_special_tokens,
            ).to(device)
            out = model(**batch, output_hidden_states=True, use_cache=False)
            last = batch["attention_mask"].sum(1) - 1
            rows = torch.arange(len(last), device=last.device)
            for i, states in enumerate(out.hidden_states):
                if len(per_stream) <= i:
                    per_stream.append([])
                per_stream[i].append(states[rows, last].float().cpu())
    return [torch.cat(chunks) for chunks in per_stream]


def build_projector(
    trainer: Any,
    settings: Mapping[str, Any],
    render: Callable[[str], str],
    add_special_tokens: bool,
    reference_device: str,
    log: Any = logger,
) -> SubspaceProjector:
    """The directions of ``trainer.model`` as it starts, and the projector of its adapted weights."""
    from ..evaluation.prompts import load_prompts

    column = settings["prompt_column"]
    harmful = load_prompts(settings["prompts"], column=column)
    benign = load_prompts(settings["benign_prompts"], column=column)
    started = time.perf_counter()
    model = trainer.model
    was_training = model.training
    model.eval()
    try:
        with adapters_disabled(model):
            states = [
                last_token_states(
                    model,
                    trainer.processing_class,
                    [render(p) for p in prompts],
                    settings["batch_size"],
                    add_special_tokens,
                )
                for prompts in (harmful, benign)
            ]
    finally:
        model.train(was_training)
    directions = directions_from_states(states[0], states[1], settings["directions"])
    seconds = time.perf_counter() - started
    projector = SubspaceProjector(
        model, directions, reference_device, engine=lambda: getattr(trainer, "deepspeed", None)
    )
    if getattr(trainer.accelerator, "is_main_process", True):
        skipped = f"; not projected (elementwise, 1-D): {len(projector.skipped)} tensors" if projector.skipped else ""
        log.info(
            "SLowED: safety subspace: %d direction(s) in %d of %d residual streams from %d harmful and %d benign "
            "prompts (the starting model's hidden states, %.1f s); every change of %d adapted weights "
            "(%d LoRA, %d dense) is projected off them%s.",
            settings["directions"],
            sum(1 for u in directions if u.shape[1]),
            len(directions),
            len(harmful),
            len(benign),
            seconds,
            len(projector.weights),
            len(projector.lora),
            len(projector.dense),
            skipped,
        )
    return projector
