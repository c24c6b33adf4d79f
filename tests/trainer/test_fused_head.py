"""Low-Entropy Masking on every TRL the ranges allow, through each loss path SFTTrainer takes: TRL 1.4-1.14's
`chunked_nll` and `nll`, and TRL 1.15+'s fused LM head (`add_fused_lm_head`, `fused_lm_head=True`), where both
loss types take it. One optimizer step's gradient against the reference computed by hand; the fused-head answer
against TRL's own fused head on the masked labels. Runs in the main, floors and newest venvs."""

from __future__ import annotations

import pytest
import torch
from trl_helpers import GradientCatcher, history, sft_trainer

from slowed_plugin import SLowEDCallback
from slowed_plugin.config import SLowEDConfig
from slowed_plugin.core.masking import IGNORE_INDEX, mask_low_entropy_targets, token_entropy
from slowed_plugin.trainer.loss import MaskedCausalLMLoss
from slowed_plugin.trainer.patches import Patches, install_masked_forward, redirect_fused_lm_head
from slowed_plugin.trainer.private_api import fused_lm_head_trl

NO_FUSED_HEAD = "TRL < 1.15 has no fused LM head (trl.trainer.utils.add_fused_lm_head)"

# (loss_type or None for TRL's default, scope, packing, LoRA)
CASES = [
    (None, "sequence", False, True),
    ("nll", "batch", False, True),
    (None, "sequence", True, True),
    ("nll", "sequence", False, False),
    (None, "batch", True, False),
]


@pytest.mark.parametrize(
    ("loss_type", "scope", "packing", "lora"),
    CASES,
    ids=[f"{t or 'default'}-{s}-{'packed' if p else 'rows'}-{'lora' if lo else 'full'}" for t, s, p, lo in CASES],
)
def test_one_step_gradient_is_the_masked_reference(llama_dir, cot_rows, tmp_path, loss_type, scope, packing, lora):
    """The accumulated gradient of a step is that of the mean cross-entropy over the kept targets, with the mask of
    the reference (transformers' ForCausalLMLoss on labels whose dropped targets are -100)."""
    rows = cot_rows[:6]
    overrides = dict(max_steps=1, per_device_train_batch_size=6, packing=packing, max_length=512)
    if loss_type is not None:
        overrides["loss_type"] = loss_type
    catcher = GradientCatcher()
    callback = SLowEDCallback(tau=None, mask_ratio=0.3, mask_scope=scope)
    trainer = sft_trainer(llama_dir, rows, tmp_path / "ours", [callback, catcher], peft=lora, **overrides)
    batch = next(iter(trainer.get_train_dataloader()))
    if packing:
        assert "position_ids" in batch and batch["input_ids"].shape[0] < len(rows)  # really packed
    trainer.train()
    assert history(trainer, "slowed/masked_fraction")  # masking ran

    model = sft_trainer(llama_dir, rows, tmp_path / "ref", peft=lora, **overrides).model
    model.train()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    logits = model(**inputs).logits
    masked, _ = mask_low_entropy_targets(logits.detach(), batch["labels"], 0.3, scope, batch.get("position_ids"))
    kept = masked != IGNORE_INDEX
    assert 0 < kept.sum() < (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    torch.nn.functional.cross_entropy(logits[:, :-1][kept], masked[kept]).backward()
    by_hand = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert catcher.grads.keys() == by_hand.keys() and by_hand
    for name, grad in by_hand.items():
        torch.testing.assert_close(catcher.grads[name], grad, rtol=1e-4, atol=1e-6)


def _fused_model(llama_dir):
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    model.train()
    return model, add_fused_lm_head


def _batch(tokenizer, cot_rows):
    texts = [row["prompt"] + row["completion"] for row in cot_rows[:3]]
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, IGNORE_INDEX)
    labels[:, :3] = IGNORE_INDEX  # a prompt
    return enc["input_ids"], enc["attention_mask"], labels


@pytest.mark.skipif(not fused_lm_head_trl(), reason=NO_FUSED_HEAD)
@pytest.mark.parametrize("scope", ["sequence", "batch"])
def test_fused_answer_is_trls_fused_head_on_the_masked_labels(llama_dir, tokenizer, cot_rows, scope):
    """SLowED's answer to `fused_lm_head=True` (sent down through TRL's head, as SFTTrainer leaves it) equals,
    field for field and in the gradient, what TRL's own fused head returns when the dropped targets are -100."""
    model, add_fused_lm_head = _fused_model(llama_dir)
    outputs = ("log_probs", "entropy", "is_top1")
    patches = Patches()
    masked_loss = MaskedCausalLMLoss(
        SLowEDConfig.from_value({"tau": None, "mask_ratio": 0.3, "mask_scope": scope}),
        model,
        None,
        lambda stats: None,
        lambda: 1,
    )
    install_masked_forward(patches, model, masked_loss)  # at on_init_end, before SFTTrainer adds its head
    add_fused_lm_head(model, outputs=outputs)
    assert redirect_fused_lm_head(patches, model, masked_loss)  # at train begin
    assert not redirect_fused_lm_head(patches, model, masked_loss)  # once on top, it stays

    input_ids, attention_mask, labels = _batch(tokenizer, cot_rows)
    ours = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
    (-ours.log_probs.sum() / ours.label_mask.sum()).backward()
    ours_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    patches.undo()  # TRL's fused head alone again
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    masked, _ = mask_low_entropy_targets(logits, labels, 0.3, scope)
    masked_labels = torch.nn.functional.pad(masked, (1, 0), value=IGNORE_INDEX)
    trl = model(input_ids=input_ids, attention_mask=attention_mask, labels=masked_labels, fused_lm_head=True)
    (-trl.log_probs.sum() / trl.label_mask.sum()).backward()

    assert torch.equal(ours.label_mask, trl.label_mask) and 0 < trl.label_mask.sum() < (labels[:, 1:] >= 0).sum()
    assert torch.equal(ours.is_top1, trl.is_top1)
    torch.testing.assert_close(ours.log_probs, trl.log_probs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.entropy, trl.entropy, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.loss, -trl.log_probs.sum() / trl.label_mask.sum(), rtol=1e-5, atol=1e-6)
    for name, param in model.named_parameters():
        torch.testing.assert_close(ours_grads[name], param.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not fused_lm_head_trl(), reason=NO_FUSED_HEAD)
def test_the_fused_heads_entropies_are_slowed_s_up_to_rounding(llama_dir, tokenizer, cot_rows):
    """SLowED masks with its own entropies (pass 1 of its loss, the same code on every TRL), not the fused head's.
    The two agree to float32 rounding, and here the mask chosen from either is the same; where two entropies are
    closer than that rounding they could order differently, which is why SLowED does not mix them."""
    model, add_fused_lm_head = _fused_model(llama_dir)
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    input_ids, attention_mask, labels = _batch(tokenizer, cot_rows)
    with torch.no_grad():
        fused = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    ours = token_entropy(logits[:, :-1])
    candidates = labels[:, 1:] != IGNORE_INDEX
    difference = (fused.entropy - ours)[candidates].abs().max()
    assert 0 <= difference < 1e-5
    from slowed_plugin.core.masking import select_mask

    by_fused = select_mask(fused.entropy, labels[:, 1:], 0.3, "sequence", None, True)[1]
    by_ours = select_mask(ours, labels[:, 1:], 0.3, "sequence", None, True)[1]
    assert torch.equal(by_fused, by_ours)


@pytest.mark.skipif(not fused_lm_head_trl(), reason=NO_FUSED_HEAD)
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_sft_trainer_trains_masked_through_the_fused_head(llama_dir, cot_rows, tmp_path, bf16):
    """The symptom of issue 30: at trl 1.16 SLowED stopped at the first optimizer step ("Low-Entropy Masking did not
    run"). Now it trains, also under accelerate's autocast wrapper (on top of TRL's head, mixed precision), TRL's
    metrics come from the masked fields, and train end leaves the model's forward without a SLowED layer on top."""
    callback = SLowEDCallback(tau=0.05, mask_ratio=0.5)
    trainer = sft_trainer(llama_dir, cot_rows[:8], tmp_path, [callback], max_steps=2, bf16=bf16)
    trainer.train()
    assert all(0.4 < f <= 0.5 for f in history(trainer, "slowed/masked_fraction"))
    assert len(history(trainer, "entropy")) == 2 and len(history(trainer, "mean_token_accuracy")) == 2
    outermost = vars(trainer.model.get_base_model())["forward"]
    assert not getattr(getattr(outermost, "__func__", outermost), "slowed_forward", False)
