"""Slow Tuning: Gram-identity norms against materialised ΔW, projection, refusals, save/reload, QLoRA."""

import pytest
import torch
from installed import require
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from slowed_plugin.core.slow_tuning import SlowTuner, lora_delta_norm


def _peft(model_dir, **lora):
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", **lora)
    return get_peft_model(base, config)


def _randomise_lora(model, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)


def _materialised(model):
    from peft.tuners.lora import LoraLayer

    return {
        name: float(module.get_delta_weight("default").float().norm())
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer)
    }


def test_gram_identity_matches_materialised():
    a, b = torch.randn(8, 40, dtype=torch.float64), torch.randn(30, 8, dtype=torch.float64)
    expected = (0.5 * b @ a).norm()
    torch.testing.assert_close(lora_delta_norm(a, b, 0.5).double(), expected, rtol=1e-5, atol=0)
    assert lora_delta_norm(torch.zeros(2, 3), torch.zeros(4, 2), 2.0) == 0


@pytest.mark.parametrize("family", ["llama", "qwen2", "bloom"])
@pytest.mark.parametrize("rslora", [False, True])
def test_norms_equal_materialised_delta(model_dirs, family, rslora):
    model = _peft(model_dirs[family], use_rslora=rslora)
    tuner = SlowTuner(model, tau=1.0)
    _randomise_lora(model, 0.3)
    norms = dict(zip([w.name.split("[")[0] for w in tuner.weights], tuner.norms().tolist(), strict=True))
    expected = _materialised(model)
    assert set(norms) == set(expected) and len(norms) > 0
    for name, value in expected.items():
        assert norms[name] == pytest.approx(value, rel=1e-5)


def test_embedding_lora_norm(llama_dir):
    base = AutoModelForCausalLM.from_pretrained(llama_dir)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"]))
    tuner = SlowTuner(model, tau=1.0)
    _randomise_lora(model, 0.3)
    names = [w.name for w in tuner.weights]
    assert any("embed_tokens" in n for n in names)
    expected = _materialised(model)
    for weight in tuner.lora:
        assert float(weight.norm()) == pytest.approx(expected[weight.name.split("[")[0]], rel=1e-5)


def test_projection_bounds_and_leaves_small_layers_untouched(llama_dir):
    model = _peft(llama_dir)
    tuner = SlowTuner(model, tau=1.0)
    _randomise_lora(model, 0.2)
    with torch.no_grad():
        for weight in tuner.lora[::2]:
            weight.lora_b.mul_(0.01)  # every other layer well inside the ball
    before = tuner.norms()
    assert (before > 1.0).any() and (before < 1.0).any(), "the test needs layers on both sides of tau"
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    report = tuner.project()
    after = tuner.norms()
    assert torch.all(after <= 1.0 * (1 + 1e-5))
    assert report.num_projected == int((before > 1.0).sum())
    assert report.max_norm == pytest.approx(float(before.max()))
    assert report.min_scale == pytest.approx(float(1.0 / before.max()), rel=1e-6)
    for weight, norm in zip(tuner.lora, before.tolist(), strict=True):
        name_a = [n for n, p in model.named_parameters() if p is weight.lora_a][0]
        name_b = [n for n, p in model.named_parameters() if p is weight.lora_b][0]
        assert torch.equal(snapshot[name_a], weight.lora_a)  # A is never scaled
        if norm <= 1.0:
            assert torch.equal(snapshot[name_b], weight.lora_b)  # inside the ball: bit for bit
    # A second pass finds nothing to do.
    assert tuner.project().num_projected == 0


def test_global_scope_scales_all_by_one_factor(llama_dir):
    model = _peft(llama_dir)
    tuner = SlowTuner(model, tau=1.0, scope="global")
    _randomise_lora(model, 0.2)
    before = tuner.norms()
    report = tuner.project()
    after = tuner.norms()
    assert float(torch.linalg.vector_norm(after)) == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(after / before, torch.full_like(before, report.min_scale), rtol=1e-5, atol=0)
    assert report.num_projected == len(before)


def test_projection_survives_save_and_reload(llama_dir, tmp_path):
    model = _peft(llama_dir)
    tuner = SlowTuner(model, tau=0.5)
    _randomise_lora(model, 0.2)
    tuner.project()
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_dir), tmp_path / "adapter")
    norms = SlowTuner(reloaded, tau=0.5, check_start=False).norms()
    assert torch.all(norms <= 0.5 * (1 + 1e-5)) and norms.max() > 0.49


def test_full_fine_tuning_projects_towards_initial_weights(llama_dir):
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    tuner = SlowTuner(model, tau=0.1)
    assert all(w.reference.device.type == "cpu" for w in tuner.dense)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    before = tuner.norms()
    tuner.project()
    for weight, norm in zip(tuner.dense, before.tolist(), strict=True):
        delta = weight.param.detach() - initial[weight.name]
        assert float(delta.norm()) <= 0.1 * (1 + 1e-5)
        if norm > 0.1:  # direction kept: W - W0 is a positive multiple of what it was
            assert float(delta.norm()) == pytest.approx(0.1, rel=1e-4)


def test_state_dict_round_trip(llama_dir):
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    tuner = SlowTuner(model, tau=0.1)
    other = SlowTuner(AutoModelForCausalLM.from_pretrained(llama_dir), tau=0.1)
    other.load_state_dict(tuner.state_dict())
    with pytest.raises(ValueError, match="does not match"):
        other.load_state_dict({"x": torch.zeros(1)})


@pytest.mark.parametrize(
    "lora, match",
    [
        ({"use_dora": True}, "DoRA"),
        ({"init_lora_weights": "pissa"}, "start at ΔW = 0"),
        ({"init_lora_weights": "olora"}, "start at ΔW = 0"),
        ({"init_lora_weights": False}, "init_lora_weights=False"),
        ({"lora_bias": True}, "lora_bias"),
    ],
)
def test_adapters_not_starting_at_zero_are_refused(llama_dir, lora, match):
    model = _peft(llama_dir, **lora)
    with pytest.raises(ValueError, match=match):
        SlowTuner(model, tau=1.0)


def test_non_lora_peft_is_refused(llama_dir):
    from peft import IA3Config

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(llama_dir), IA3Config(target_modules=["q_proj"], feedforward_modules=[])
    )
    with pytest.raises(ValueError, match="IA3"):
        SlowTuner(model, tau=1.0)


def test_qlora_4bit_base(llama_dir):
    require("bitsandbytes", "bnb")
    from transformers import BitsAndBytesConfig

    base = AutoModelForCausalLM.from_pretrained(
        llama_dir,
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
        device_map="cpu",
    )
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    tuner = SlowTuner(model, tau=0.5)
    assert len(tuner.lora) > 0 and not tuner.dense  # the 4-bit base is frozen: no dense copies
    assert any("Linear4bit" in type(m).__name__ for m in model.modules())
    _randomise_lora(model, 0.2)
    expected = _materialised(model)
    for weight in tuner.lora:
        assert float(weight.norm()) == pytest.approx(expected[weight.name.split("[")[0]], rel=1e-5)
    tuner.project()
    assert torch.all(tuner.norms() <= 0.5 * (1 + 1e-5))


def test_bf16_adapters_still_land_inside_the_ball(llama_dir):
    model = _peft(llama_dir)
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.data = param.data.bfloat16()
    tuner = SlowTuner(model, tau=0.05)
    _randomise_lora(model, 0.2)
    tuner.project()
    norms = tuner.norms()
    assert torch.all(norms <= 0.05 * (1 + 1e-5)) and torch.all(norms > 0.05 * 0.98)


def test_delta_norms_equal_materialised_delta_lora_and_full(llama_dir):
    from slowed_plugin.core.slow_tuning import delta_norms, start_weights

    # LoRA with a trainable head beside it (modules_to_save): the factors by the Gram identity, the head
    # against its start value; both compared with ΔW written out.
    model = _peft(llama_dir, modules_to_save=["lm_head"])
    start = start_weights(model)
    tuner = SlowTuner(model, tau=1.0)
    assert start and all("lora_" not in name for name in start)
    _randomise_lora(model, 0.3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in start:
                param.add_(0.01)
    norms = delta_norms(model, start)
    expected = {f"{name}[default]": value for name, value in _materialised(model).items()}
    params = dict(model.named_parameters())
    expected |= {name: float((params[name].detach() - start[name]).norm()) for name in start}
    assert list(norms) == list(expected)  # LoRA adapters first, then the other tensors in parameter order
    for name, value in expected.items():
        assert float(norms[name]) == pytest.approx(value, rel=1e-5)
        assert norms[name].dtype == torch.float32 and norms[name].device.type == "cpu"
    # The same numbers and order as the tuner's.
    assert torch.equal(torch.stack(list(norms.values())), tuner.norms())

    # Full fine-tuning: every tensor against its start; without the start, a clear error.
    full = AutoModelForCausalLM.from_pretrained(llama_dir)
    start = start_weights(full)
    with torch.no_grad():
        for param in full.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    norms = delta_norms(full, start)
    assert set(norms) == {n for n, p in full.named_parameters() if p.requires_grad}
    for name, param in full.named_parameters():
        assert float(norms[name]) == pytest.approx(float((param.detach() - start[name]).norm()), rel=1e-5)
    with pytest.raises(ValueError, match="start value of every trainable tensor"):
        delta_norms(full)


def _count_norm_passes(monkeypatch):
    """Record the lora_B of every LoRA norm computed (one entry per weight per pass)."""
    from slowed_plugin.core import slow_tuning

    measured = []
    original = slow_tuning.lora_delta_norm

    def counting(lora_a, lora_b, scaling):
        measured.append(lora_b.data_ptr())  # the access layer may hand a detached view of the same storage
        return original(lora_a, lora_b, scaling)

    monkeypatch.setattr(slow_tuning, "lora_delta_norm", counting)
    return measured


def _half_outside(model, tuner, dtype=torch.float32):
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.data = param.data.to(dtype)
    _randomise_lora(model, 0.2)
    with torch.no_grad():
        for weight in tuner.lora[::2]:
            weight.lora_b.mul_(0.01)  # every other layer well inside the ball
    before = tuner.norms()
    assert (before > tuner.tau).any() and (before < tuner.tau).any(), "the test needs layers on both sides of tau"
    return before


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_fp32_projection_is_one_norm_pass(llama_dir, monkeypatch, scope):
    model = _peft(llama_dir)
    tuner = SlowTuner(model, tau=1.0, scope=scope)
    before = _half_outside(model, tuner)
    measured = _count_norm_passes(monkeypatch)
    report = tuner.project()
    assert sorted(measured) == sorted(w.lora_b.data_ptr() for w in tuner.lora)  # each norm once, nothing re-checked
    assert report.num_projected > 0
    after = tuner.norms()
    if scope == "layer":
        # The norms the projection inferred (c·||ΔW||) are the norms the weights have.
        torch.testing.assert_close(after, before.clamp_max(1.0), rtol=1e-6, atol=0)
        assert torch.all(after <= 1.0 * (1 + 1e-6))
    else:
        assert float(torch.linalg.vector_norm(after)) <= 1.0 * (1 + 1e-6)


def test_bf16_projection_rechecks_only_scaled_layers(llama_dir, monkeypatch):
    model = _peft(llama_dir)
    tuner = SlowTuner(model, tau=1.0)
    before = _half_outside(model, tuner, torch.bfloat16)
    scaled = {w.lora_b.data_ptr() for w, n in zip(tuner.lora, before.tolist(), strict=True) if n > 1.0}
    measured = _count_norm_passes(monkeypatch)
    tuner.project()
    first, rechecked = measured[: len(tuner.lora)], measured[len(tuner.lora) :]
    assert sorted(first) == sorted(w.lora_b.data_ptr() for w in tuner.lora)
    assert rechecked and set(rechecked) <= scaled  # the layers inside the ball are not measured again
    assert torch.all(tuner.norms() <= 1.0 * (1 + 1e-5))
