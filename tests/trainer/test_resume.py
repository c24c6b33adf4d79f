"""Interrupted and resumed runs end where uninterrupted ones do; a failure never corrupts checkpoints."""

import os

import pytest
import torch
from trl_helpers import StopAt, sft_trainer, trainable_state

from slowed_plugin import SLowEDCallback
from slowed_plugin.trainer.callback import REFERENCE_FILE


def _run(llama_dir, rows, out, peft, extra=(), resume=None):
    # 12 examples at batch 4: 3 steps an epoch, so epoch-end projections fall inside both halves.
    settings = dict(max_steps=5, save_strategy="steps", save_steps=2, learning_rate=2e-3)
    callback = SLowEDCallback(tau=0.05 if peft else 0.3, mask_ratio=0.3)
    trainer = sft_trainer(llama_dir, rows, out, [callback, *extra], peft=peft, **settings)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.mark.slow
@pytest.mark.parametrize("peft", [True, False], ids=["lora", "full"])
def test_resume_mid_epoch_matches_uninterrupted_run(llama_dir, cot_rows, tmp_path, peft):
    rows = cot_rows[:12]
    whole = _run(llama_dir, rows, tmp_path / "whole", peft)
    _run(llama_dir, rows, tmp_path / "cut", peft, extra=[StopAt(4)])
    checkpoint = tmp_path / "cut" / "checkpoint-4"
    assert checkpoint.is_dir()
    assert (checkpoint / REFERENCE_FILE).exists() == (not peft)  # LoRA's start is ΔW = 0: nothing to save
    resumed = _run(llama_dir, rows, tmp_path / "cut", peft, resume=str(checkpoint))
    assert resumed.state.global_step == 5
    a, b = trainable_state(whole.model), trainable_state(resumed.model)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_full_fine_tuning_checkpoint_without_slowed_state_is_refused(llama_dir, cot_rows, tmp_path):
    rows = cot_rows[:12]
    _run(llama_dir, rows, tmp_path / "cut", False, extra=[StopAt(2)])
    checkpoint = tmp_path / "cut" / "checkpoint-2"
    os.remove(checkpoint / REFERENCE_FILE)
    before = sorted(os.listdir(checkpoint))
    with pytest.raises(ValueError, match="written without SLowED"):
        _run(llama_dir, rows, tmp_path / "cut", False, resume=str(checkpoint))
    assert sorted(os.listdir(checkpoint)) == before  # the refusal touched nothing


def test_nan_logits_stop_before_the_weights_change(llama_dir, cot_rows, tmp_path):
    callback = SLowEDCallback(tau=None, mask_ratio=0.3)
    trainer = sft_trainer(llama_dir, cot_rows, tmp_path / "run", [callback], max_steps=2)
    before = trainable_state(trainer.model)
    head = trainer.model.get_base_model().lm_head
    with torch.no_grad():
        head.weight[5, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"NaN or inf logits .*optimizer step 1"):
        trainer.train()
    after = trainable_state(trainer.model)
    assert all(torch.equal(before[k], after[k]) for k in before)
