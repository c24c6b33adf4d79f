"""Failure modes through the real SFTTrainer: degenerate batches train, and failures never damage checkpoints."""

from __future__ import annotations

import hashlib
import math
import os
from fractions import Fraction

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl_helpers import history, sft_trainer, trainable_state

from slowed_plugin import SLowEDCallback
from slowed_plugin.trainer.callback import REFERENCE_FILE

LOSS_PATHS = ["chunked_nll", "nll"]  # SLowED's chunked loss (TRL's default) and its fused loss on logits
# The trainer's logs otherwise replace a NaN/inf step loss by the running mean, hiding it.
RAW_LOSS = dict(logging_nan_inf_filter=False)


# --------------------------------------------------------------------------- helpers
class StepRecorder(TrainerCallback):
    """Per optimizer step: whether every gradient is finite, and every gradient's largest magnitude."""

    def __init__(self):
        self.finite, self.grad_max = [], []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        assert grads, "no gradient reached the trainable parameters"
        self.finite.append(all(bool(torch.isfinite(g).all()) for g in grads))
        self.grad_max.append(max(float(g.abs().max()) for g in grads))


class HashOnSave(TrainerCallback):
    """Hashes every file of each checkpoint when it has just been written. Registered after SLowEDCallback,
    so SLowED's own file is part of the record."""

    def __init__(self):
        self.hashes: dict[str, dict[str, str]] = {}

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        self.hashes[folder] = _hash_tree(folder)


def _hash_tree(folder) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _record_micro_batches(trainer) -> list[tuple[int, float]]:
    """(targets, loss) of every training micro-batch, as the trainer computes it."""
    seen = []
    compute_loss = trainer.compute_loss

    def recording(model, inputs, *args, **kwargs):
        loss = compute_loss(model, inputs, *args, **kwargs)
        value = loss[0] if isinstance(loss, tuple) else loss
        seen.append((int((inputs["labels"][:, 1:] != -100).sum()), float(value.detach())))
        return loss

    trainer.compute_loss = recording
    return seen


def _tokenized_rows(llama_dir, cot_rows, masked):
    """Pre-tokenized rows with explicit labels; the `masked` ones have every label -100."""
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    rows = []
    for row, drop in zip(cot_rows, masked, strict=True):
        ids = tokenizer(row["prompt"] + " " + row["completion"])["input_ids"]
        rows.append({"input_ids": ids, "labels": [-100] * len(ids) if drop else list(ids)})
    return rows


def _all_finite(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _final_norm(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.norm


# --------------------------------------------------------------------------- 1. degenerate batches
@pytest.mark.parametrize("loss_type", LOSS_PATHS)
def test_micro_batch_without_targets_inside_a_step(llama_dir, cot_rows, tmp_path, loss_type):
    # Two examples, one micro-batch each, two micro-batches a step: every step holds the all-ignored one.
    rows = _tokenized_rows(llama_dir, cot_rows[:2], masked=[False, True])
    settings = dict(per_device_train_batch_size=1, max_length=None, loss_type=loss_type, **RAW_LOSS)
    recorder = StepRecorder()
    trainer = sft_trainer(
        llama_dir,
        rows,
        tmp_path / "mixed",
        [SLowEDCallback(tau=None, mask_ratio=0.3), recorder],
        gradient_accumulation_steps=2,
        max_steps=2,
        **settings,
    )
    micro = _record_micro_batches(trainer)
    start = trainable_state(trainer.model)
    trainer.train()
    assert trainer.state.global_step == 2
    assert sorted(n == 0 for n, _ in micro) == [False, False, True, True]  # really one empty micro-batch a step
    assert all(math.isfinite(loss) for _, loss in micro)
    assert [loss for n, loss in micro if n == 0] == [0.0, 0.0]
    assert recorder.finite == [True, True]
    assert _all_finite(trainer.model)
    assert any(not torch.equal(start[k], v) for k, v in trainable_state(trainer.model).items())

    # The empty micro-batch adds nothing: the step trains exactly as the real example alone does.
    alone_recorder = StepRecorder()
    alone = sft_trainer(
        llama_dir,
        rows[:1],
        tmp_path / "alone",
        [SLowEDCallback(tau=None, mask_ratio=0.3), alone_recorder],
        max_steps=2,
        **settings,
    )
    alone.train()
    assert history(trainer, "loss") == pytest.approx(history(alone, "loss"), rel=1e-6)
    assert recorder.grad_max == pytest.approx(alone_recorder.grad_max, rel=1e-5)
    a, b = trainable_state(trainer.model), trainable_state(alone.model)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("loss_type", LOSS_PATHS)
def test_optimizer_step_without_targets(llama_dir, cot_rows, tmp_path, loss_type):
    # Every label is -100: each optimizer step has no trainable token (num_items_in_batch == 0).
    rows = _tokenized_rows(llama_dir, cot_rows[:4], masked=[True] * 4)
    recorder = StepRecorder()
    trainer = sft_trainer(
        llama_dir,
        rows,
        tmp_path / "run",
        [SLowEDCallback(tau=None, mask_ratio=0.3), recorder],
        per_device_train_batch_size=2,
        max_steps=2,
        max_length=None,
        loss_type=loss_type,
        **RAW_LOSS,
    )
    micro = _record_micro_batches(trainer)
    start = trainable_state(trainer.model)
    trainer.train()
    assert trainer.state.global_step == 2
    assert micro == [(0, 0.0), (0, 0.0)]  # finite: 0 / max(0, 1), not 0 / 0
    losses = history(trainer, "loss")
    assert len(losses) == 2 and losses == [0.0, 0.0]
    assert recorder.finite == [True, True] and recorder.grad_max == [0.0, 0.0]
    # Zero gradients and a fresh Adam state: the weights do not move, and stay finite.
    assert _all_finite(trainer.model)
    end = trainable_state(trainer.model)
    assert all(torch.equal(start[k], end[k]) for k in start)


def _expected_masked_fraction(labels, ratio, scope) -> float:
    counts = (labels[:, 1:] != -100).sum(dim=1).tolist()
    scopes = counts if scope == "sequence" else [sum(counts)]
    dropped = sum(math.floor(Fraction(ratio) * n) for n in scopes)
    assert 0 < dropped < sum(counts)  # the check below can tell "exact count" from "all" or "none"
    return dropped / sum(counts)


@pytest.mark.parametrize(("loss_type", "scope"), [("chunked_nll", "sequence"), ("nll", "batch")])
def test_all_entropies_equal_still_drop_exactly_floor_of_ratio(llama_dir, cot_rows, tmp_path, loss_type, scope):
    # A zero lm_head (frozen under LoRA) gives uniform predictions: every target has entropy log V.
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    vocab = model.lm_head.weight.shape[0]
    ratio = "0.3"
    trainer = sft_trainer(
        llama_dir,
        cot_rows[:4],
        tmp_path / "run",
        [SLowEDCallback(tau=None, mask_ratio=float(ratio), mask_scope=scope)],
        model=model,
        max_steps=2,
        loss_type=loss_type,
        **RAW_LOSS,
    )
    # One batch holds the whole data set, so every step sees these labels (in some order).
    labels = next(iter(trainer.get_train_dataloader()))["labels"]
    assert labels.shape[0] == 4
    trainer.train()
    expected = _expected_masked_fraction(labels, ratio, scope)
    assert history(trainer, "slowed/masked_fraction") == pytest.approx([expected] * 2, abs=1e-12)
    assert history(trainer, "slowed/entropy_threshold") == pytest.approx([math.log(vocab)] * 2, rel=1e-5)
    assert history(trainer, "loss") == pytest.approx([math.log(vocab)] * 2, rel=1e-5)


@pytest.mark.parametrize("loss_type", LOSS_PATHS)
def test_ratio_too_small_to_drop_anything_is_plain_sft(llama_dir, cot_rows, tmp_path, loss_type):
    rows = cot_rows[:8]
    plain = sft_trainer(llama_dir, rows, tmp_path / "plain", max_steps=2, loss_type=loss_type, **RAW_LOSS)
    longest = max(int((b["labels"][:, 1:] != -100).sum(dim=1).max()) for b in plain.get_train_dataloader())
    assert 0 < longest * 0.01 < 1  # floor(0.01 * n) = 0 in every example
    plain.train()
    ours = sft_trainer(
        llama_dir,
        rows,
        tmp_path / "ours",
        [SLowEDCallback(tau=None, mask_ratio=0.01)],
        max_steps=2,
        loss_type=loss_type,
        **RAW_LOSS,
    )
    ours.train()
    assert history(ours, "slowed/masked_fraction") == [0.0, 0.0]  # the masked path ran and dropped nothing
    assert history(ours, "loss") == pytest.approx(history(plain, "loss"), rel=1e-5)
    a, b = trainable_state(plain.model), trainable_state(ours.model)
    assert all(torch.allclose(a[k], b[k], atol=2e-5) for k in a)


def _bf16_run(llama_dir, cot_rows, out, loss_type, weights, extra=()):
    dtype = torch.bfloat16 if weights == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=dtype)
    return sft_trainer(
        llama_dir,
        cot_rows[:8],
        out,
        [SLowEDCallback(tau=0.05, mask_ratio=0.3), *extra],
        model=model,
        max_steps=2,
        bf16=weights != "fp32",
        use_cpu=True,
        loss_type=loss_type,
        **RAW_LOSS,
    )


@pytest.fixture(scope="module")
def fp32_history(llama_dir, cot_rows, tmp_path_factory):
    """The same run in float32, once per loss path."""
    cache = {}

    def get(loss_type):
        if loss_type not in cache:
            trainer = _bf16_run(llama_dir, cot_rows, tmp_path_factory.mktemp("fp32"), loss_type, "fp32")
            trainer.train()
            cache[loss_type] = trainer.state.log_history
        return cache[loss_type]

    return get


@pytest.mark.parametrize("weights", ["fp32_autocast", "bf16"])
@pytest.mark.parametrize("loss_type", LOSS_PATHS)
def test_bf16_on_cpu(llama_dir, cot_rows, tmp_path, loss_type, weights, fp32_history):
    recorder = StepRecorder()
    trainer = _bf16_run(llama_dir, cot_rows, tmp_path / "run", loss_type, weights, [recorder])
    start = trainable_state(trainer.model)
    trainer.train()
    assert trainer.state.global_step == 2
    losses = history(trainer, "loss")
    assert len(losses) == 2 and all(math.isfinite(x) and x > 0 for x in losses)
    assert recorder.finite == [True, True] and all(g > 0 for g in recorder.grad_max)
    assert _all_finite(trainer.model)
    assert any(not torch.equal(start[k], v) for k, v in trainable_state(trainer.model).items())
    assert all(0.2 < f <= 0.3 for f in history(trainer, "slowed/masked_fraction"))
    assert all(math.isfinite(t) and t > 0 for t in history(trainer, "slowed/entropy_threshold"))
    # ... and the same losses as in float32 up to bf16 rounding (the loss kernels accumulate in float32).
    reference = fp32_history(loss_type)
    assert losses == pytest.approx([e["loss"] for e in reference if "loss" in e], rel=1e-3)


# --------------------------------------------------------------------------- 2. checkpoints survive failures
def _full_ft(llama_dir, cot_rows, out, extra=(), **overrides):
    """Full fine-tuning with Slow Tuning (writes slowed_reference.pt beside each checkpoint) and masking."""
    settings = dict(max_steps=3, save_strategy="steps", save_steps=1, learning_rate=2e-3)
    settings.update(overrides)
    callbacks = [SLowEDCallback(tau=0.05, mask_ratio=0.3), *extra]
    return sft_trainer(llama_dir, cot_rows[:12], out, callbacks, peft=False, **settings)


def _checkpoints(out) -> list[str]:
    return sorted(name for name in os.listdir(out) if name.startswith("checkpoint-"))


def _assert_no_partial_reference(out):
    """No temporary file in any checkpoint, and every slowed_reference.pt there is complete."""
    for name in _checkpoints(out):
        folder = out / name
        assert not [f for f in os.listdir(folder) if f.endswith(".tmp")], f"{name}: temporary file left behind"
        if (folder / REFERENCE_FILE).exists():
            state = torch.load(folder / REFERENCE_FILE, map_location="cpu", weights_only=True)
            assert state and all(torch.isfinite(t).all() for t in state.values())


def test_nan_at_step_3_leaves_earlier_checkpoints_intact_and_resumable(llama_dir, cot_rows, tmp_path):
    out = tmp_path / "run"
    hashes = HashOnSave()
    trainer = _full_ft(llama_dir, cot_rows, out, [hashes])

    def nan_in_step_3(module, inputs, output):
        if trainer.state.global_step == 2:
            return output * float("nan")

    _final_norm(trainer.model).register_forward_hook(nan_in_step_3)
    with pytest.raises(FloatingPointError, match=r"NaN or inf logits .*optimizer step 3"):
        trainer.train()
    assert _checkpoints(out) == ["checkpoint-1", "checkpoint-2"]
    assert sorted(os.path.basename(k) for k in hashes.hashes) == ["checkpoint-1", "checkpoint-2"]
    for folder, recorded in hashes.hashes.items():
        assert REFERENCE_FILE in recorded and "trainer_state.json" in recorded
        assert _hash_tree(folder) == recorded  # byte for byte, no file added or removed
    _assert_no_partial_reference(out)

    # Resuming from the last checkpoint ends where a run that never failed ends.
    resumed = _full_ft(llama_dir, cot_rows, out)
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert resumed.state.global_step == 3
    # Same save schedule: Slow Tuning projects before every checkpoint, so saves are part of the run.
    whole = _full_ft(llama_dir, cot_rows, tmp_path / "whole")
    whole.train()
    assert history(whole, "slowed/layers_projected")[-1] > 0  # step 3 projects: the resumed reference matters
    a, b = trainable_state(whole.model), trainable_state(resumed.model)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    for folder, recorded in hashes.hashes.items():  # the resumed run did not touch them either
        assert _hash_tree(folder) == recorded


def test_failure_in_transformers_save_keeps_earlier_checkpoint(llama_dir, cot_rows, tmp_path):
    out = tmp_path / "run"
    hashes = HashOnSave()
    trainer = _full_ft(llama_dir, cot_rows, out, [hashes])
    save = trainer._save_optimizer_and_scheduler
    calls = []

    def failing_save(output_dir):
        calls.append(output_dir)
        if len(calls) == 2:
            raise OSError("No space left on device (simulated)")
        return save(output_dir)

    trainer._save_optimizer_and_scheduler = failing_save
    with pytest.raises(OSError, match="simulated"):
        trainer.train()
    # transformers writes straight into checkpoint-2 (no staging folder, no rename): the model is there, the
    # optimizer and trainer_state.json are not. Whatever SLowED wrote there must be complete.
    assert _checkpoints(out) == ["checkpoint-1", "checkpoint-2"]
    partial = set(os.listdir(out / "checkpoint-2"))
    assert "model.safetensors" in partial and not partial & {"optimizer.pt", "trainer_state.json"}
    _assert_no_partial_reference(out)
    ((first, recorded),) = hashes.hashes.items()
    assert os.path.basename(first) == "checkpoint-1" and REFERENCE_FILE in recorded
    assert _hash_tree(first) == recorded

    resumed = _full_ft(llama_dir, cot_rows, out, max_steps=2)
    resumed.train(resume_from_checkpoint=first)
    assert resumed.state.global_step == 2 and _all_finite(resumed.model)
    assert _hash_tree(first) == recorded


def _fail_writing_reference_at(monkeypatch, checkpoint):
    """torch.save writes half of SLowED's reference file in `checkpoint`, then fails (as on a full disk)."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        path = str(f)
        if os.path.basename(path).startswith(REFERENCE_FILE) and os.path.basename(os.path.dirname(path)) == checkpoint:
            real_save(obj, path, *args, **kwargs)
            with open(path, "r+b") as handle:
                handle.truncate(os.path.getsize(path) // 2)
            raise OSError("No space left on device (simulated)")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_failure_while_writing_slowed_reference_keeps_earlier_checkpoint(llama_dir, cot_rows, tmp_path, monkeypatch):
    out = tmp_path / "run"
    hashes = HashOnSave()
    trainer = _full_ft(llama_dir, cot_rows, out, [hashes], max_steps=2)
    _fail_writing_reference_at(monkeypatch, "checkpoint-2")
    with pytest.raises(OSError, match="simulated"):
        trainer.train()
    assert not (out / "checkpoint-2" / REFERENCE_FILE).exists()  # never a truncated file under the real name
    ((first, recorded),) = hashes.hashes.items()
    assert os.path.basename(first) == "checkpoint-1" and _hash_tree(first) == recorded
    monkeypatch.undo()
    resumed = _full_ft(llama_dir, cot_rows, out, max_steps=2)
    resumed.train(resume_from_checkpoint=first)
    assert resumed.state.global_step == 2 and _hash_tree(first) == recorded


def test_failed_reference_write_leaves_no_temporary_file(llama_dir, cot_rows, tmp_path, monkeypatch):
    out = tmp_path / "run"
    trainer = _full_ft(llama_dir, cot_rows, out, max_steps=2)
    _fail_writing_reference_at(monkeypatch, "checkpoint-2")
    with pytest.raises(OSError, match="simulated"):
        trainer.train()
    _assert_no_partial_reference(out)


def test_failed_reference_write_with_save_total_limit_keeps_the_previous_checkpoint(
    llama_dir, cot_rows, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    hashes = HashOnSave()
    trainer = _full_ft(llama_dir, cot_rows, out, [hashes], max_steps=2, save_total_limit=1)
    _fail_writing_reference_at(monkeypatch, "checkpoint-2")
    with pytest.raises(OSError, match="simulated"):
        trainer.train()
    ((first, recorded),) = hashes.hashes.items()
    assert os.path.isdir(first), "checkpoint-1 was deleted although checkpoint-2 never became resumable"
    assert _hash_tree(first) == recorded
