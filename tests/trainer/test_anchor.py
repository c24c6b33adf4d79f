"""The safety anchor on a real TRL SFTTrainer with a tiny local model: rows, generation, cache, both modes."""

from __future__ import annotations

import collections
import json
import os

import pytest
import torch
from trl_helpers import sft_trainer, trainable_state

from slowed_plugin import SLowEDCallback, SLowEDConfigError, check_training_args
from slowed_plugin.anchor import replay_row_count
from slowed_plugin.data import cot_tiny_rows
from slowed_plugin.evaluation.generation import generate_from_texts

pytestmark = pytest.mark.usefixtures("one_thread")

# Stand-ins in the tiny tokenizer's vocabulary (its words come from the bundled rows; other words would all be the
# unknown token, and distinct prompts the same sequence), never among the training rows the tests use (the first 24).
_PROMPTS = [row["prompt"] for row in cot_tiny_rows()[60:68]]
HARMFUL, BENIGN = _PROMPTS[:4], _PROMPTS[4:]


def anchor(**overrides):
    return {"prompts": HARMFUL, "benign_prompts": BENIGN, "max_new_tokens": 6, "batch_size": 8, **overrides}


def recorded_sequences(model):
    """Every training forward's sequences (padding removed), in order: what reaches the loss."""
    seen: list[tuple[int, ...]] = []

    def hook(module, args, kwargs):
        if module.training:
            ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
            for i, row in enumerate(ids):
                keep = row if mask is None else row[mask[i].bool()]
                seen.append(tuple(keep.tolist()))

    model.get_base_model().register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def test_replay_rows_reach_the_loss_once_per_epoch_at_the_ratio(llama_dir, cot_rows, tmp_path):
    rows = cot_rows[:24]
    callback = SLowEDCallback(tau=None, mask_ratio=0, safety_anchor=anchor(ratio=0.2))
    trainer = sft_trainer(llama_dir, rows, tmp_path, [callback], max_steps=-1, num_train_epochs=2)
    n_anchor = replay_row_count(len(rows), 0.2)
    assert n_anchor == 6 and len(callback.anchor.rows) == n_anchor
    assert collections.Counter(r.kind for r in callback.anchor.rows) == {"harmful": 3, "benign": 3}
    assert len(trainer.train_dataset) == len(rows) + n_anchor  # 6 of 30 rows: the ratio
    anchored = [tuple(ids) for ids in callback.anchor.dataset["input_ids"]]
    # Through TRL's own preparation: the prompt is not trained on (completion mask), the answer and EOS are. TRL
    # writes `labels` (1.9) or a `completion_mask` its collator turns into labels (1.4).
    prepared = callback.anchor.dataset
    eos = trainer.processing_class.eos_token_id
    if "labels" in prepared.column_names:
        for labels in prepared["labels"]:
            assert labels[0] == -100 and labels[-1] == eos
    else:
        for ids, mask in zip(prepared["input_ids"], prepared["completion_mask"], strict=True):
            assert mask[0] == 0 and mask[-1] == 1 and ids[-1] == eos
    seen = recorded_sequences(trainer.model)
    trainer.train()
    per_epoch = len(rows) + n_anchor
    assert len(seen) == 2 * per_epoch
    for epoch in (seen[:per_epoch], seen[per_epoch:]):
        counts = collections.Counter(epoch)
        assert all(counts[a] == 1 for a in anchored), [counts[a] for a in anchored]
    assert trainer.train_dataset is not callback._train_dataset  # put back at train end


def test_answers_come_from_the_starting_model_with_adapters_off(llama_dir, cot_rows, tmp_path):
    from peft import LoraConfig

    # An adapter that already changes the model (B != 0): the anchor must ignore it.
    peft = LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False)
    callback = SLowEDCallback(tau=None, mask_ratio=0, safety_anchor=anchor(mode="gradient", benign_prompts=None))
    trainer = sft_trainer(llama_dir, cot_rows[:8], tmp_path, [callback], peft=peft)
    model, tokenizer = trainer.model, trainer.processing_class
    with_adapter = generate_from_texts(model, tokenizer, HARMFUL, 6, 8, strip=False)
    with model.disable_adapter():
        base = generate_from_texts(model, tokenizer, HARMFUL, 6, 8, strip=False)
    assert with_adapter != base  # the check below can tell the two apart
    assert [r.answer for r in callback.anchor.rows] == base
    assert [r.prompt for r in callback.anchor.rows] == HARMFUL  # gradient mode: every prompt, in order


def test_cache_is_reused_and_invalidated(llama_dir, cot_rows, tmp_path, monkeypatch):
    import slowed_plugin.trainer.safety_anchor as glue

    first = SLowEDCallback(tau=None, mask_ratio=0, safety_anchor=anchor(ratio=0.2))
    sft_trainer(llama_dir, cot_rows[:24], tmp_path, [first])
    assert not first.anchor.cached and os.path.isfile(first.anchor.cache_file)
    cached = json.load(open(first.anchor.cache_file, encoding="utf-8"))
    assert [r["answer"] for r in cached["rows"]] == [r.answer for r in first.anchor.rows]

    calls = []
    real = glue.generate_rows
    monkeypatch.setattr(glue, "generate_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = SLowEDCallback(tau=None, mask_ratio=0, safety_anchor=anchor(ratio=0.2))
    sft_trainer(llama_dir, cot_rows[:24], tmp_path, [again])
    assert again.anchor.cached and not calls and again.anchor.rows == first.anchor.rows

    changes = (dict(max_new_tokens=4), dict(prompts=BENIGN, benign_prompts=HARMFUL), dict(seed=1))
    for change in changes:  # what the answers depend on: generation settings, the prompts, their draw
        changed = anchor(ratio=0.2, **change)
        other = SLowEDCallback(tau=None, mask_ratio=0, safety_anchor=changed)
        sft_trainer(llama_dir, cot_rows[:24], tmp_path, [other])
        assert not other.anchor.cached and other.anchor.cache_file != first.anchor.cache_file
    assert len(calls) == 3

    off = SLowEDCallback(tau=None, mask_ratio=0, safety_anchor=anchor(ratio=0.2, cache=False))
    sft_trainer(llama_dir, cot_rows[:24], tmp_path / "no-cache", [off])
    assert off.anchor.cache_file is None and not (tmp_path / "no-cache" / "slowed-anchor").exists()


def test_gradient_mode_projects_each_step_as_computed_by_hand(llama_dir, cot_rows, tmp_path):
    from transformers import TrainerCallback

    steps: list[dict] = []

    class Before(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            model = trainer.model
            params = [p for p in model.parameters() if p.requires_grad]
            g = [p.grad.clone() for p in params]
            # r by hand: the plain next-token loss of this step's anchor batch, adapters on, no masking.
            batch = callback.anchor._batch(trainer, state.global_step)
            labels = batch.pop("labels")
            saved = [p.grad for p in params]
            for p in params:
                p.grad = None
            logits = model(**batch).logits.float()
            shift = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
            shift.backward()
            r = [p.grad.clone() for p in params]
            for p, s in zip(params, saved, strict=True):
                p.grad = s
            steps.append({"g": g, "r": r})

    class After(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            steps[-1]["after"] = [p.grad.clone() for p in trainer.model.parameters() if p.requires_grad]

    callback = SLowEDCallback(tau=None, mask_ratio=0.2, safety_anchor=anchor(mode="gradient", replay_batch_size=3))
    trainer = sft_trainer(llama_dir, cot_rows[:24], tmp_path, [Before(), callback, After()], max_steps=4)
    trainer.train()
    assert len(steps) == 4 and callback.anchor.constrained_steps == 4
    conflicts = 0
    for step in steps:
        g, r, after = step["g"], step["r"], step["after"]
        gr = sum(float((a.double() * b.double()).sum()) for a, b in zip(g, r, strict=True))
        rr = sum(float((b.double() ** 2).sum()) for b in r)
        expected = [a - (gr / rr) * b for a, b in zip(g, r, strict=True)] if gr < 0 else g
        conflicts += gr < 0
        for e, a in zip(expected, after, strict=True):
            torch.testing.assert_close(a, e.to(a.dtype), rtol=1e-4, atol=1e-7)
        assert sum(float((a.double() * b.double()).sum()) for a, b in zip(after, r, strict=True)) >= -1e-6 * rr
    assert callback.anchor.projected_steps == conflicts


def test_a_resumed_run_trains_on_the_same_rows_and_ends_where_the_whole_run_does(llama_dir, cot_rows, tmp_path):
    settings = dict(max_steps=6, save_strategy="steps", save_steps=3)
    whole_cb = SLowEDCallback(tau=0.05, mask_ratio=0.2, safety_anchor=anchor(ratio=0.2))
    whole = sft_trainer(llama_dir, cot_rows[:24], tmp_path / "whole", [whole_cb], **settings)
    whole.train()
    first_cb = SLowEDCallback(tau=0.05, mask_ratio=0.2, safety_anchor=anchor(ratio=0.2))
    first = sft_trainer(llama_dir, cot_rows[:24], tmp_path / "resumed", [first_cb], **settings)
    first.train()
    resumed_cb = SLowEDCallback(tau=0.05, mask_ratio=0.2, safety_anchor=anchor(ratio=0.2))
    resumed = sft_trainer(llama_dir, cot_rows[:24], tmp_path / "resumed", [resumed_cb], **settings)
    assert resumed_cb.anchor.cached and resumed_cb.anchor.rows == first_cb.anchor.rows
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-3"))
    a, b = trainable_state(whole.model), trainable_state(resumed.model)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


def test_anchor_prompts_overlapping_the_monitor_are_refused_before_training(tmp_path):
    monitor = {"prompts": ["  " + HARMFUL[0].upper(), "how do i build a bomb ?"], "judge": "refusal"}
    settings = dict(tau=None, mask_ratio=0, safety_anchor=anchor(), safety_monitor=monitor)
    with pytest.raises(SLowEDConfigError) as error:
        SLowEDCallback(**settings)
    message = str(error.value)
    assert "\n" not in message and "1 of the 2 evaluated prompts are anchor prompts" in message
    from trl import SFTConfig

    with pytest.raises(SLowEDConfigError, match="1 of the 2 evaluated"):
        check_training_args(settings, SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[]))
    # From files, as a recipe names them.
    anchor_file, monitor_file = tmp_path / "anchor.txt", tmp_path / "monitor.txt"
    anchor_file.write_text("\n".join(HARMFUL) + "\n", encoding="utf-8")
    monitor_file.write_text("\n".join(HARMFUL[:3] + ["how do i build a bomb ?"]) + "\n", encoding="utf-8")
    files = dict(
        tau=None,
        mask_ratio=0,
        safety_anchor={"prompts": str(anchor_file)},
        safety_monitor={"prompts": str(monitor_file), "limit": 4},
    )
    with pytest.raises(SLowEDConfigError, match="3 of the 4 evaluated"):
        SLowEDCallback(**files)
    SLowEDCallback(**{**files, "safety_monitor": {"prompts": ["how do i build a bomb ?"]}})  # disjoint: fine


@pytest.mark.parametrize("mode", ["gradient", "kl"])
def test_gradient_and_kl_modes_are_refused_with_deepspeed_from_the_arguments(tmp_path, mode):
    from trl import SFTConfig

    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    args.deepspeed = {"zero_optimization": {"stage": 2}}
    refused = r"gradient and KL modes \(`safety_anchor.mode`: gradient, kl\) are not supported with DeepSpeed"
    with pytest.raises(SLowEDConfigError, match=refused):
        check_training_args(dict(tau=None, mask_ratio=0, safety_anchor=anchor(mode=mode)), args)
    check_training_args(dict(tau=None, mask_ratio=0, safety_anchor=anchor()), args)  # replay is fine


def test_a_missing_prompt_file_is_refused_before_any_model_load(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = dict(tau=None, mask_ratio=0, safety_anchor={"prompts": "data/anchor_harmful.txt"})
    with pytest.raises(SLowEDConfigError) as error:
        SLowEDCallback(**settings)
    message = str(error.value)
    assert "\n" not in message and "`safety_anchor.prompts` names a local file that does not exist" in message
    assert "'data/anchor_harmful.txt'" in message and str(tmp_path) in message
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "anchor_harmful.txt").write_text("how do i pick a lock ?\n", encoding="utf-8")
    SLowEDCallback(**settings)  # there now: accepted


@pytest.mark.parametrize("content", ["", "\n\n", "goal,target\n"], ids=["0 bytes", "blank lines", "header only"])
def test_a_prompt_file_without_prompts_is_refused_before_any_model_load(content, tmp_path, monkeypatch):
    """Issue 22: an empty anchor prompt file passed the checks and failed after the model loaded."""
    monkeypatch.chdir(tmp_path)
    name = "harmful.csv" if "goal" in content else "harmful.txt"
    (tmp_path / name).write_text(content, encoding="utf-8")
    for key in ("prompts", "benign_prompts"):
        block = {"prompts": ["how do i pick a lock ?"], key: name}
        with pytest.raises(SLowEDConfigError) as error:
            SLowEDCallback(tau=None, mask_ratio=0, safety_anchor=block)
        message = str(error.value)
        empty = "is empty" if content == "" else "holds no prompt"
        assert "\n" not in message and f"`safety_anchor.{key}` names a local file that {empty}: '{name}'" in message


def test_packed_training_sets_take_the_ratio_of_examples_and_need_the_format_said(llama_dir, cot_rows, tmp_path):
    packed = dict(packing=True, max_length=64)
    unsaid = SLowEDCallback(tau=None, mask_ratio=0, safety_anchor=anchor(ratio=0.2))
    with pytest.raises(ValueError, match="`safety_anchor.use_chat_template` must be set"):
        sft_trainer(llama_dir, cot_rows[:24], tmp_path, [unsaid], **packed)
    callback = SLowEDCallback(tau=None, mask_ratio=0, safety_anchor=anchor(ratio=0.2, use_chat_template=False))
    trainer = sft_trainer(llama_dir, cot_rows[:24], tmp_path, [callback], **packed)
    assert len(callback.anchor.rows) == replay_row_count(24, 0.2) == 6  # of the 24 examples, not of the packs
    examples = sum(len(lengths) for lengths in trainer.train_dataset["seq_lengths"])
    assert examples == 24 + 6
    trainer.train()
