"""The kernels' warm-up compiles every graph a training step runs: no step compiles after it."""

import pytest
import torch
from transformers import TrainerCallback
from trl_helpers import sft_trainer

from slowed_plugin import SLowEDCallback
from slowed_plugin.core import kernels


def _frames_compiled() -> int:
    from torch._dynamo.utils import counters

    return counters["frames"]["ok"]


class _CompileLog(TrainerCallback):
    """Dynamo's compiled-frame count when training begins (after SLowED's warm-up) and after each step."""

    def __init__(self):
        self.counts: list[int] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.counts.append(_frames_compiled())

    def on_step_end(self, args, state, control, **kwargs):
        self.counts.append(_frames_compiled())


@pytest.mark.slow
@pytest.mark.parametrize(
    "loss_type, bf16",
    [("chunked_nll", False), ("nll", False), ("chunked_nll", True)],
    ids=["hidden-states-fp32", "logits-fp32", "hidden-states-bf16-autocast"],
)
def test_no_step_compiles_after_warmup(llama_dir, cot_rows, tmp_path, monkeypatch, loss_type, bf16):
    # A fresh process state: graphs compiled by earlier tests (e.g. run without grad) must not hide a
    # warm-up that compiled different ones.
    torch._dynamo.reset()
    monkeypatch.setattr(kernels, "KERNELS", kernels._Kernels(compile=True))  # both losses and the warm-up read this one
    log = _CompileLog()
    trainer = sft_trainer(
        llama_dir,
        cot_rows,
        tmp_path,
        [SLowEDCallback(tau=1.0, mask_ratio=0.2), log],
        max_steps=3,
        loss_type=loss_type,
        bf16=bf16,
    )
    trainer.train()
    assert kernels.KERNELS.failed is None
    assert log.counts[0] > 0, "the warm-up compiled nothing"
    # Steps 1-3 (forward, backward, one-row and partial chunks, the trainer's autocast) compile nothing more.
    assert log.counts == [log.counts[0]] * 4, f"compiled frames after warm-up, then per step: {log.counts}"
