"""Every checkpoint satisfies the Slow Tuning bound, whatever the save strategy; a run resumed from one ends where
an uninterrupted run with the same saves ends; projection metrics land on the log row of their step."""

from __future__ import annotations

import math

import pytest
import torch
from trl_helpers import StopAt, history, sft_trainer, trainable_state

from slowed_plugin import SLowEDCallback

TAU = 0.05
ROWS = 12  # at batch 4: 3 optimizer steps an epoch
SCALING = 8 / 4  # lora_alpha / r in trl_helpers


def adapter_norms(folder) -> dict[str, float]:
    """||scaling · B @ A||_F of every LoRA layer stored in a saved adapter, materialised."""
    from safetensors.torch import load_file

    weights = load_file(str(folder / "adapter_model.safetensors"))
    norms = {}
    for name, a in weights.items():
        if name.endswith("lora_A.weight"):
            b = weights[name.replace("lora_A", "lora_B")]
            norms[name] = float((SCALING * b.double() @ a.double()).norm())
    assert norms
    return norms


def _run(llama_dir, cot_rows, out, resume=None, extra=(), **settings):
    base = dict(num_train_epochs=2, max_steps=-1, learning_rate=2e-2, save_strategy="steps", save_steps=3)
    base.update(settings)
    callback = SLowEDCallback(tau=TAU, mask_ratio=0.3)
    trainer = sft_trainer(llama_dir, cot_rows[:ROWS], out, [callback, *extra], **base)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.mark.parametrize("save_steps", [3, 2], ids=["at-epoch-end", "mid-epoch"])
def test_every_checkpoint_is_inside_the_ball(llama_dir, cot_rows, tmp_path, save_steps):
    out = tmp_path / "run"
    trainer = _run(llama_dir, cot_rows, out, save_steps=save_steps)
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [int(p.name.split("-")[1]) for p in checkpoints] == list(range(save_steps, 7, save_steps)) + (
        [6] if 6 % save_steps else []
    )
    # The bound binds: without it the adapters would be far outside (lr 2e-2, tau 0.05).
    assert max(history(trainer, "slowed/max_delta_norm")) > 2 * TAU
    for checkpoint in checkpoints:
        largest = max(adapter_norms(checkpoint).values())
        assert largest <= TAU * (1 + 1e-5), f"{checkpoint.name}: max ||ΔW|| {largest:.4g} > tau {TAU}"


def test_resume_from_epoch_end_checkpoint_equals_uninterrupted_run(llama_dir, cot_rows, tmp_path):
    whole = _run(llama_dir, cot_rows, tmp_path / "whole")
    cut = tmp_path / "cut"
    _run(llama_dir, cot_rows, cut, extra=[StopAt(3)])  # interrupted at step 3 = the end of epoch 1, saved
    resumed = _run(llama_dir, cot_rows, cut, resume=str(cut / "checkpoint-3"))
    assert resumed.state.global_step == 6
    a, b = trainable_state(whole.model), trainable_state(resumed.model)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("logging_steps", [1, 2])
def test_projection_metrics_land_on_the_row_of_their_step(llama_dir, cot_rows, tmp_path, logging_steps):
    trainer = _run(llama_dir, cot_rows, tmp_path / "run", save_strategy="no", logging_steps=logging_steps)
    rows = [e for e in trainer.state.log_history if "slowed/max_delta_norm" in e]
    assert [e["step"] for e in rows] == [3, 6]  # the epochs end at steps 3 and 6
    assert all(math.isclose(e["epoch"], e["step"] / 3) for e in rows)
    assert all(e["slowed/layers_projected"] > 0 for e in rows)
