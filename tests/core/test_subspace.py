"""The safety-subspace projection: directions, exactness on LoRA and full fine-tuning, the ball, refusals."""

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from slowed_plugin.core import subspace as subspace_module
from slowed_plugin.core.slow_tuning import SlowTuner
from slowed_plugin.core.subspace import (
    READS_STREAM,
    SubspaceProjector,
    decoder_layers,
    directions_from_states,
    project_delta,
    safety_directions,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _directions(model, k=2, seed=0):
    """Random orthonormal d x k directions, one per residual stream."""
    _, n_layers = decoder_layers(model)
    d = model.config.hidden_size
    gen = torch.Generator().manual_seed(seed)
    return [torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))[0] for _ in range(n_layers + 1)]


def _randomise(model, seed=0, scale=0.3, names=("lora_",)):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and any(n in name for n in names):
                param.add_(torch.randn(param.shape, generator=gen) * scale)


def _sides(projector, name):
    weight = next(w for w in projector.weights if w.name == name)
    return weight.side.u_in, weight.side.u_out


def _assert_off(delta, u_in, u_out, rel=1e-6):
    delta = delta.double()
    size = float(delta.norm())
    assert size > 0
    if delta.ndim == 1:
        delta = delta[:, None]
    if u_out is not None:
        assert float((u_out.T @ delta).norm()) <= rel * size
    if u_in is not None:
        assert float((delta @ u_in).norm()) <= rel * size


def test_one_direction_is_the_normalised_difference_of_means():
    gen = torch.Generator().manual_seed(0)
    harmful, benign = torch.randn(7, 5, generator=gen) + 2.0, torch.randn(9, 5, generator=gen)
    u = safety_directions(harmful, benign, 1)
    expected = harmful.double().mean(0) - benign.double().mean(0)
    torch.testing.assert_close(u[:, 0], expected / expected.norm())


def test_several_directions_are_orthonormal_and_start_with_the_difference_of_means():
    gen = torch.Generator().manual_seed(1)
    harmful, benign = torch.randn(12, 6, generator=gen) + 1.0, torch.randn(10, 6, generator=gen)
    u = safety_directions(harmful, benign, 3)
    torch.testing.assert_close(u.T @ u, torch.eye(3, dtype=torch.float64), atol=1e-12, rtol=0)
    first = harmful.double().mean(0) - benign.double().mean(0)
    assert abs(float(u[:, 0] @ first)) == pytest.approx(float(first.norm()), rel=1e-12)


def test_an_empty_direction_set_is_refused():
    same = torch.randn(4, 5)
    with pytest.raises(ValueError, match="direction set is empty"):
        safety_directions(same, same.clone(), 1)
    # Two harmful prompts give at most one direction besides the difference of means.
    with pytest.raises(ValueError, match="fewer than the 4 asked"):
        safety_directions(torch.randn(2, 6) + 3, torch.randn(3, 6), 4)


def test_a_stream_without_a_difference_gets_no_direction_and_all_empty_is_refused(llama_dir):
    gen = torch.Generator().manual_seed(3)
    same = torch.randn(5, 8, generator=gen)
    harmful = [same, torch.randn(5, 8, generator=gen) + 1, torch.randn(5, 8, generator=gen) + 1]
    benign = [same.clone(), torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen)]
    directions = directions_from_states(harmful, benign, 1)
    assert [u.shape[1] for u in directions] == [0, 1, 1]
    with pytest.raises(ValueError, match="direction set is empty: in every residual stream"):
        directions_from_states([same], [same.clone()], 1)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(llama_dir), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"])
    )
    empty = [torch.zeros(model.config.hidden_size, 0, dtype=torch.float64)] * len(_directions(model))
    with pytest.raises(ValueError, match="direction set is empty"):
        SubspaceProjector(model, empty)


def test_project_delta_is_the_two_sided_projection():
    gen = torch.Generator().manual_seed(2)
    delta = torch.randn(8, 6, generator=gen, dtype=torch.float64)
    u_out = torch.linalg.qr(torch.randn(8, 2, generator=gen, dtype=torch.float64))[0]
    u_in = torch.linalg.qr(torch.randn(6, 1, generator=gen, dtype=torch.float64))[0]
    expected = (torch.eye(8) - u_out @ u_out.T) @ delta @ (torch.eye(6) - u_in @ u_in.T)
    torch.testing.assert_close(project_delta(delta, u_in, u_out), expected.double())


@pytest.mark.parametrize("family", ["llama", "qwen2", "bloom"])
def test_lora_changes_have_no_component_along_the_directions(model_dirs, family, tmp_path):
    base = AutoModelForCausalLM.from_pretrained(model_dirs[family])
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    projector = SubspaceProjector(model, _directions(model))
    _randomise(model)
    from peft.tuners.lora import LoraLayer

    layers = {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    before = {n: m.get_delta_weight("default").detach().double() for n, m in layers.items()}
    report = projector.project()
    assert report.num_weights == len(layers) and 0 < report.max_removed < 1
    projected_sides = 0
    for name, module in layers.items():
        u_in, u_out = _sides(projector, f"{name}[default]")
        delta = module.get_delta_weight("default").detach()
        _assert_off(delta, u_in, u_out)
        # Exactly the two-sided projection of the change before (B's columns and A's rows projected).
        torch.testing.assert_close(delta.double(), project_delta(before[name], u_in, u_out), rtol=1e-5, atol=1e-6)
        projected_sides += (u_in is not None) + (u_out is not None)
    assert projected_sides == len(layers)  # every adapted weight reads or writes the stream, on one side
    # save_pretrained writes the projected adapter (A and B changed in place).
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dirs[family]), tmp_path / "adapter")
    for name, module in reloaded.named_modules():
        if isinstance(module, LoraLayer):
            u_in, u_out = _sides(projector, f"{name}[default]")
            _assert_off(module.get_delta_weight("default").detach(), u_in, u_out)


def test_full_fine_tuning_changes_have_no_component_along_the_directions(llama_dir):
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    projector = SubspaceProjector(model, _directions(model, k=1))
    _randomise(model, names=("",), scale=0.05)
    projector.project()
    names = {w.name for w in projector.dense}
    assert any("embed_tokens" in n for n in names) and any("down_proj" in n for n in names)
    for weight in projector.dense:
        delta = dict(model.named_parameters())[weight.name].detach() - start[weight.name]
        u_in, u_out = weight.side.u_in, weight.side.u_out
        _assert_off(delta, u_in, u_out)
    # The 1-D gains act elementwise: left as they are, and named.
    assert projector.skipped and all("norm" in n for n in projector.skipped)


def test_with_the_ball_the_result_satisfies_both(llama_dir):
    base = AutoModelForCausalLM.from_pretrained(llama_dir)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    tuner = SlowTuner(model, tau=0.05)
    projector = SubspaceProjector(model, _directions(model))
    _randomise(model)
    projector.project()  # first, as the callback does
    report = tuner.project()
    assert report.num_projected > 0
    assert float(tuner.norms().max()) <= 0.05 * (1 + 1e-6)
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            _assert_off(module.get_delta_weight("default").detach(), *_sides(projector, f"{name}[default]"))


def test_dora_an_unreachable_weight_and_a_wrong_stream_count_are_refused(llama_dir, monkeypatch):
    base = AutoModelForCausalLM.from_pretrained(llama_dir)
    dora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True))
    with pytest.raises(ValueError, match="cannot project DoRA layer .*q_proj"):
        SubspaceProjector(dora, _directions(dora))
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(llama_dir), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"])
    )
    with pytest.raises(ValueError, match="residual streams"):
        SubspaceProjector(model, _directions(model)[:-1])
    monkeypatch.setattr(subspace_module, "READS_STREAM", READS_STREAM - {"q_proj"})
    with pytest.raises(ValueError, match=r"cannot reach .*layers\.0\.self_attn\.q_proj \(decoder layer 0\)"):
        SubspaceProjector(model, _directions(model))
