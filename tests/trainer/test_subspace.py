"""The safety subspace on a real TRL SFTTrainer with a tiny local model: directions, projection, refusals."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from trl_helpers import history, sft_trainer

from slowed_plugin import SLowEDCallback, SLowEDConfig, SLowEDConfigError, check_training_args
from slowed_plugin.core.subspace import safety_directions
from slowed_plugin.data import cot_tiny_rows

pytestmark = pytest.mark.usefixtures("one_thread")

_PROMPTS = [row["prompt"] for row in cot_tiny_rows()[60:68]]
HARMFUL, BENIGN = _PROMPTS[:4], _PROMPTS[4:]


def subspace(**overrides):
    return {"prompts": HARMFUL, "benign_prompts": BENIGN, "directions": 2, **overrides}


def _states(model, tokenizer, texts):
    """By hand: each text alone through the model, every stream's state at its last token."""
    per_stream = None
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")
            out = model(**ids, output_hidden_states=True)
            rows = [h[0, -1].double() for h in out.hidden_states]
            per_stream = (
                [[r] for r in rows] if per_stream is None else [p + [r] for p, r in zip(per_stream, rows, strict=True)]
            )
    return [torch.stack(p) for p in per_stream]


@pytest.mark.parametrize("tau", [None, 0.05])
def test_training_keeps_every_adapter_change_off_the_directions_of_the_starting_model(
    llama_dir, cot_rows, tmp_path, tau, caplog
):
    from peft.tuners.lora import LoraLayer

    callback = SLowEDCallback(tau=tau, mask_ratio=0, safety_subspace=subspace())
    with caplog.at_level(logging.INFO, logger="slowed_plugin"):
        trainer = sft_trainer(llama_dir, cot_rows[:24], tmp_path, [callback], max_steps=4)
        # The directions are those of the starting model (its own forward, one prompt at a time).
        model = trainer.model
        with model.disable_adapter():
            harmful = _states(model, trainer.processing_class, HARMFUL)
            benign = _states(model, trainer.processing_class, BENIGN)
        for i, (h, b) in enumerate(zip(harmful, benign, strict=True)):
            got = callback.subspace.directions[i]
            if got.shape[1] == 0:  # only where the two means coincide (the embeddings of a shared last token)
                torch.testing.assert_close(h.mean(0), b.mean(0))
                continue
            expected = safety_directions(h, b, 2)
            # The same 2-dimensional subspace (its projector), up to float32 hidden states.
            torch.testing.assert_close(got @ got.T, expected @ expected.T, atol=1e-4, rtol=0)
        trainer.train()
    assert re.search(
        r"safety subspace: 2 direction\(s\) in [23] of 3 residual streams from 4 harmful and 4 ", caplog.text
    )
    assert "no adapted weight change has a component along the safety directions" in caplog.text
    removed = history(trainer, "slowed/subspace_removed_max")
    assert removed and 0 < removed[-1] < 1
    for weight in callback.subspace.lora:
        module_name = weight.name.split("[")[0]
        module = dict(trainer.model.named_modules())[module_name]
        assert isinstance(module, LoraLayer)
        delta = module.get_delta_weight("default").detach().double()
        size = float(delta.norm())
        assert size > 0
        if weight.side.u_out is not None:
            assert float((weight.side.u_out.T @ delta).norm()) <= 1e-6 * size
        if weight.side.u_in is not None:
            assert float((delta @ weight.side.u_in).norm()) <= 1e-6 * size
        if tau is not None:
            assert size <= tau * (1 + 1e-5)


def test_settings_are_refused_in_one_line_before_a_model_loads(tmp_path):
    from trl import SFTConfig

    for value, match in (
        ({"prompts": HARMFUL}, r"`safety_subspace.benign_prompts` is required"),
        (subspace(directions=0), r"`safety_subspace.directions` must be a positive integer; got 0"),
        (subspace(layers=[1]), r"`safety_subspace.layers` is not a safety subspace key"),
        ([1], r"`safety_subspace` must be a mapping"),
    ):
        with pytest.raises(SLowEDConfigError, match=match) as error:
            SLowEDCallback(tau=None, mask_ratio=0, safety_subspace=value)
        assert "\n" not in str(error.value)
    with pytest.raises(SLowEDConfigError, match=r"`slowed.safety_subspace.directions` must be a positive"):
        SLowEDConfig.from_value({"tau": None, "mask_ratio": 0, "safety_subspace": subspace(directions=-1)}, "slowed")
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    args.deepspeed = {"zero_optimization": {"stage": 2}}
    with pytest.raises(SLowEDConfigError, match=r"safety subspace \(`safety_subspace`\) is not supported with Deep"):
        check_training_args(dict(tau=None, mask_ratio=0, safety_subspace=subspace()), args)


def test_dora_is_refused_when_the_subspace_attaches(llama_dir, cot_rows, tmp_path):
    from peft import LoraConfig

    callback = SLowEDCallback(tau=None, mask_ratio=0, safety_subspace=subspace())
    dora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True)
    with pytest.raises(ValueError, match="cannot project DoRA layer"):
        sft_trainer(llama_dir, cot_rows[:8], tmp_path, [callback], peft=dora)


def test_kl_mode_adds_the_weighted_kl_gradient_of_its_anchor_batch(llama_dir, cot_rows, tmp_path):
    """The first step's gradient is the distillation gradient plus ratio/(1-ratio) times the gradient of the
    per-token KL(adapters off || adapters on) on the anchor batch of step 0, computed here by hand."""
    from trl_helpers import GradientCatcher

    from slowed_plugin.anchor.kl import token_kl

    rows = cot_rows[:16]
    kl_anchor = {"prompts": HARMFUL, "benign_prompts": BENIGN, "mode": "kl", "ratio": 0.2, "max_new_tokens": 6}
    plain_catcher, kl_catcher = GradientCatcher(), GradientCatcher()

    def moved(trainer):  # LoRA B away from 0, the same in every run: the student differs from the teacher
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, param in sorted(trainer.model.named_parameters()):
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
        return trainer

    plain = moved(sft_trainer(llama_dir, rows, tmp_path / "plain", [plain_catcher], max_steps=1))
    plain.train()
    callback = SLowEDCallback(tau=None, mask_ratio=0, safety_anchor=kl_anchor)
    trainer = moved(sft_trainer(llama_dir, rows, tmp_path / "kl", [callback, kl_catcher], max_steps=1))
    # By hand, on a fresh copy of the model with the same adapters.
    reference = sft_trainer(llama_dir, rows, tmp_path / "ref", [], max_steps=1)
    reference.model.load_state_dict(trainer.model.state_dict())
    batch = callback.anchor._batch(trainer, 0)
    labels = batch.pop("labels")
    batch.pop("num_items_in_batch", None)
    model = reference.model
    with torch.no_grad(), model.disable_adapter():
        teacher = model(**batch).logits
    (0.25 * token_kl(model(**batch).logits, teacher, labels)).backward()
    expected_kl = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    trainer.train()
    with torch.no_grad():
        kl = float(token_kl(model(**batch).logits, teacher, labels))
    assert len(callback.anchor.kl_values) == 1 and callback.anchor.kl_values[0] == pytest.approx(kl, rel=1e-4)
    assert kl > 1e-3
    assert set(kl_catcher.grads) == set(plain_catcher.grads)
    for name, grad in kl_catcher.grads.items():
        extra = expected_kl.get(name, torch.zeros_like(grad))
        torch.testing.assert_close(grad, plain_catcher.grads[name] + extra, rtol=1e-4, atol=1e-7)
    # The term matters: its gradient is a visible part of the step's.
    total = sum(float(g.norm()) ** 2 for g in expected_kl.values()) ** 0.5
    assert total > 1e-3 * sum(float(g.norm()) ** 2 for g in plain_catcher.grads.values()) ** 0.5
