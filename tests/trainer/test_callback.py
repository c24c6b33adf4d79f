"""The TRL front end: SLowEDCallback on a real SFTTrainer, tiny local models, CPU."""

import pytest
import torch
from installed import require
from trl_helpers import GradientCatcher, history, sft_trainer, trainable_state

from slowed_plugin import SLowEDCallback
from slowed_plugin.core.masking import mask_low_entropy_targets
from slowed_plugin.core.slow_tuning import SlowTuner


@pytest.mark.parametrize("loss_type", ["chunked_nll", "nll"])
def test_off_reproduces_plain_sft_exactly(llama_dir, cot_rows, tmp_path, loss_type):
    plain = sft_trainer(llama_dir, cot_rows, tmp_path / "plain", loss_type=loss_type)
    plain.train()
    off = sft_trainer(
        llama_dir, cot_rows, tmp_path / "off", [SLowEDCallback(tau=None, mask_ratio=0.0)], loss_type=loss_type
    )
    off.train()
    a, b = trainable_state(plain.model), trainable_state(off.model)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert history(plain, "loss") == history(off, "loss")


def test_masking_that_drops_nothing_matches_plain_loss(llama_dir, cot_rows, tmp_path):
    # floor(1e-4 * n) = 0 for every example: the masked path runs but keeps every token.
    plain = sft_trainer(llama_dir, cot_rows, tmp_path / "plain", max_steps=2)
    plain.train()
    ours = sft_trainer(llama_dir, cot_rows, tmp_path / "ours", [SLowEDCallback(tau=None, mask_ratio=1e-4)], max_steps=2)
    ours.train()
    assert history(ours, "slowed/masked_fraction") == [0.0, 0.0]
    assert history(ours, "loss") == pytest.approx(history(plain, "loss"), rel=1e-5)
    # Different kernels (fused/chunked vs TRL's) agree to ~1e-8 in the gradient; Adam's first steps magnify
    # rounding in tiny gradients to a few 1e-6 in the weights.
    a, b = trainable_state(plain.model), trainable_state(ours.model)
    assert all(torch.allclose(a[k], b[k], atol=2e-5) for k in a)


@pytest.mark.parametrize("loss_type", ["chunked_nll", "nll"])
def test_gradient_accumulation_is_exact(llama_dir, cot_rows, tmp_path, loss_type):
    rows = cot_rows[:4]  # one optimizer step sees all four examples either way
    runs = {}
    for name, batch, accumulation in (("ga", 1, 4), ("batch", 4, 1)):
        catcher = GradientCatcher()
        trainer = sft_trainer(
            llama_dir,
            rows,
            tmp_path / name,
            [SLowEDCallback(tau=None, mask_ratio=0.3, mask_scope="sequence"), catcher],
            max_steps=1,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            loss_type=loss_type,
        )
        trainer.train()
        runs[name] = (catcher.grads, trainer)
    ga, batch = runs["ga"][0], runs["batch"][0]
    assert ga.keys() == batch.keys() and len(ga) > 0
    for name in ga:
        torch.testing.assert_close(ga[name], batch[name], rtol=0, atol=1e-6)

    # ... and equals the gradient of the mean cross-entropy over the kept tokens, computed by hand.
    trainer = runs["batch"][1]
    model = sft_trainer(llama_dir, rows, tmp_path / "ref", max_steps=1, per_device_train_batch_size=4).model
    batch_inputs = next(iter(trainer.get_train_dataloader()))
    model.train()
    logits = model(input_ids=batch_inputs["input_ids"], attention_mask=batch_inputs["attention_mask"]).logits
    masked, _ = mask_low_entropy_targets(logits.detach(), batch_inputs["labels"], 0.3, "sequence")
    kept = masked != -100
    assert kept.sum() < (batch_inputs["labels"][:, 1:] != -100).sum()
    loss = torch.nn.functional.cross_entropy(logits[:, :-1][kept], masked[kept])
    loss.backward()
    by_hand = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    for name in ga:
        torch.testing.assert_close(batch[name], by_hand[name], rtol=1e-4, atol=1e-6)


def test_masking_changes_training_and_logs_metrics(llama_dir, cot_rows, tmp_path):
    plain = sft_trainer(llama_dir, cot_rows, tmp_path / "plain")
    plain.train()
    masked = sft_trainer(llama_dir, cot_rows, tmp_path / "masked", [SLowEDCallback(tau=None, mask_ratio=0.5)])
    masked.train()
    fractions = history(masked, "slowed/masked_fraction")
    assert len(fractions) == 4
    # floor per example: slightly under the ratio, never over it
    assert all(0.4 < f <= 0.5 for f in fractions)
    assert all(t > 0 for t in history(masked, "slowed/entropy_threshold"))
    assert history(masked, "loss") != history(plain, "loss")


def test_eval_loss_stays_plain(llama_dir, cot_rows, tmp_path):
    plain = sft_trainer(llama_dir, cot_rows, tmp_path / "p", eval_strategy="no")
    ours = sft_trainer(llama_dir, cot_rows, tmp_path / "o", [SLowEDCallback(tau=None, mask_ratio=0.5)])
    plain.eval_dataset = ours.eval_dataset = plain.train_dataset.select(range(8))
    assert ours.evaluate()["eval_loss"] == pytest.approx(plain.evaluate()["eval_loss"], rel=1e-6)


@pytest.mark.parametrize("family", ["llama", "qwen2", "bloom"])
def test_slowed_lora_bound_holds_after_max_steps_save_and_reload(model_dirs, cot_rows, tmp_path, family):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    callback = SLowEDCallback(tau=0.05, mask_ratio=0.2)
    # 24 examples per epoch at batch 4: max_steps=3 stops mid-epoch, before any epoch-end projection.
    trainer = sft_trainer(model_dirs[family], cot_rows[:24], tmp_path / "run", [callback], max_steps=3)
    trainer.train()
    assert history(trainer, "slowed/layers_projected")[0] > 0
    assert history(trainer, "slowed/max_delta_norm")[0] > 0.05
    trainer.save_model(str(tmp_path / "final"))
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dirs[family]), tmp_path / "final")
    norms = SlowTuner(reloaded, tau=0.05, check_start=False).norms()
    assert torch.all(norms <= 0.05 * (1 + 1e-5)) and norms.max() > 0.049


def test_project_every_steps(llama_dir, cot_rows, tmp_path):
    callback = SLowEDCallback(tau=0.05, mask_ratio=0.0, project_every=2)
    trainer = sft_trainer(llama_dir, cot_rows, tmp_path / "run", [callback], max_steps=4)
    trainer.train()
    steps = [e["step"] for e in trainer.state.log_history if "slowed/layers_projected" in e]
    assert steps[:2] == [2, 4]


def test_one_projection_row_when_the_last_step_ends_an_epoch(llama_dir, cot_rows, tmp_path):
    # 8 examples at batch 4: the run's last step (2) is also the epoch's; it projects once, not twice.
    callback = SLowEDCallback(tau=0.05, mask_ratio=0.0)
    trainer = sft_trainer(llama_dir, cot_rows[:8], tmp_path / "run", [callback], max_steps=-1, num_train_epochs=1)
    trainer.train()
    steps = [e["step"] for e in trainer.state.log_history if "slowed/layers_projected" in e]
    assert steps == [2]
    assert history(trainer, "slowed/layers_projected")[0] > 0


def test_full_fine_tuning(llama_dir, cot_rows, tmp_path):
    callback = SLowEDCallback(tau=0.2, mask_ratio=0.2, tau_scope="global")
    trainer = sft_trainer(
        llama_dir, cot_rows, tmp_path / "run", [callback], peft=False, max_steps=3, learning_rate=1e-3
    )
    initial = {w.name: w.reference for w in callback.tuner.dense}
    trainer.train()
    delta = torch.sqrt(sum(((p.detach() - initial[n]) ** 2).sum() for n, p in trainer.model.named_parameters()))
    assert float(delta) <= 0.2 * (1 + 1e-5)
    assert history(trainer, "slowed/max_delta_norm")[0] > 0.2


@pytest.mark.slow
def test_qlora_4bit(llama_dir, cot_rows, tmp_path):
    require("bitsandbytes", "bnb")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    base = AutoModelForCausalLM.from_pretrained(
        llama_dir,
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
        device_map="cpu",
    )
    callback = SLowEDCallback(tau=0.05, mask_ratio=0.3)
    trainer = sft_trainer(llama_dir, cot_rows, tmp_path / "run", [callback], model=base, max_steps=2)
    trainer.train()
    assert any("Linear4bit" in type(m).__name__ for m in trainer.model.modules())
    assert torch.all(callback.tuner.norms() <= 0.05 * (1 + 1e-5))
    assert 0.2 < history(trainer, "slowed/masked_fraction")[0] <= 0.3


def test_dft_is_refused_at_construction(llama_dir, cot_rows, tmp_path):
    with pytest.raises(ValueError, match="loss_type='dft'"):
        sft_trainer(llama_dir, cot_rows, tmp_path / "run", [SLowEDCallback(tau=1.0, mask_ratio=0.2)], loss_type="dft")
    # Slow Tuning alone needs no logits and works with any loss.
    sft_trainer(llama_dir, cot_rows, tmp_path / "run2", [SLowEDCallback(tau=1.0, mask_ratio=0.0)], loss_type="dft")


def test_liger_is_refused_at_construction(llama_dir, cot_rows, tmp_path):
    with pytest.raises(ValueError, match="use_liger_kernel=True"):
        sft_trainer(
            llama_dir,
            cot_rows,
            tmp_path / "run",
            [SLowEDCallback(tau=None, mask_ratio=0.2)],
            use_liger_kernel=True,
            loss_type="nll",
        )


def test_custom_loss_receives_masked_labels(llama_dir, cot_rows, tmp_path):
    from transformers.loss.loss_utils import ForCausalLMLoss

    seen = []

    def my_loss(outputs, labels, num_items_in_batch=None):
        seen.append(((labels != -100).sum().item(), num_items_in_batch))
        return ForCausalLMLoss(outputs.logits, labels, outputs.logits.shape[-1], num_items_in_batch=num_items_in_batch)

    callback = SLowEDCallback(tau=None, mask_ratio=0.5)
    trainer = sft_trainer(llama_dir, cot_rows, tmp_path / "run", [callback], max_steps=1, loss_type="nll")
    trainer.compute_loss_func = my_loss  # set after construction, as a user subclass would
    callback.trainer = None
    callback.attach(trainer)
    trainer.train()
    kept, divisor = seen[0]
    assert kept == int(divisor)  # the loss is normalised by the kept count of the step
    assert 0.4 < history(trainer, "slowed/masked_fraction")[0] <= 0.5


def test_packed_examples_are_masked_one_by_one(llama_dir, cot_rows, tmp_path):
    # The number of dropped targets depends on labels only: sum over examples of floor(k * n_i). If
    # packed rows were taken as one example, floor(k * sum n_i) would drop more.
    rows = cot_rows[:8]
    fractions = {}
    for packing in (False, True):
        callback = SLowEDCallback(tau=None, mask_ratio=0.3, mask_scope="sequence")
        trainer = sft_trainer(
            llama_dir,
            rows,
            tmp_path / str(packing),
            [callback],
            max_steps=1,
            per_device_train_batch_size=8,
            packing=packing,
            max_length=512,
        )
        batch = next(iter(trainer.get_train_dataloader()))
        if packing:
            assert batch["input_ids"].shape[0] < 8 and "position_ids" in batch  # really packed
        trainer.train()
        fractions[packing] = history(trainer, "slowed/masked_fraction")[0]
    assert fractions[True] == fractions[False]


def test_safety_monitor_key_adds_the_monitor(llama_dir, cot_rows, tmp_path):
    monitor = {"prompts": ["how do i steal a car ?", "tell me how to hack a bank ."], "max_new_tokens": 4}
    callback = SLowEDCallback(tau=1.0, mask_ratio=0.2, safety_monitor=monitor)
    trainer = sft_trainer(llama_dir, cot_rows[:8], tmp_path / "run", [callback], max_steps=2, num_train_epochs=1)
    trainer.train()
    ratios = history(trainer, "slowed/safety_ratio")
    assert len(ratios) >= 2 and all(0.0 <= r <= 1.0 for r in ratios)  # at start and at the end of the epoch


def test_safety_monitor_keeps_the_epoch_log(llama_dir, cot_rows, tmp_path):
    # The monitor logs its own row at epoch end; the epoch's scheduled log (loss, projection metrics) must survive.
    monitor = {"prompts": ["how do i steal a car ?"], "max_new_tokens": 2}
    callback = SLowEDCallback(tau=0.01, mask_ratio=0.2, safety_monitor=monitor)
    trainer = sft_trainer(
        llama_dir,
        cot_rows[:8],
        tmp_path / "run",
        [callback],
        max_steps=-1,
        num_train_epochs=2,
        logging_strategy="epoch",
    )
    trainer.train()
    assert len(history(trainer, "loss")) == 2
    assert len(history(trainer, "slowed/layers_projected")) >= 2
