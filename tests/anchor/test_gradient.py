"""The gradient mode's rule against a hand computation, and on a tiny model: the update it leaves never raises the
anchor loss to first order."""

from __future__ import annotations

import pytest
import torch

from slowed_plugin.anchor.gradient import dot, project_conflicting


def test_conflicting_gradient_loses_its_component_along_the_reference():
    g = [torch.tensor([1.0, -2.0]), torch.tensor([[3.0]])]
    r = [torch.tensor([0.0, 1.0]), torch.tensor([[-1.0]])]
    # By hand: g·r = -2 - 3 = -5, r·r = 2, so g - (-5/2) r = [1, -2 + 2.5], [[3 - 2.5]].
    assert project_conflicting(g, r)
    assert torch.allclose(g[0], torch.tensor([1.0, 0.5]))
    assert torch.allclose(g[1], torch.tensor([[0.5]]))
    assert abs(float(dot(g, r))) < 1e-12


@pytest.mark.parametrize("sign", [1.0, 0.0])
def test_agreeing_or_orthogonal_gradient_is_left_alone(sign):
    g = [torch.tensor([1.0, 2.0])]
    r = [torch.tensor([sign * 1.0, 0.0])]
    assert not project_conflicting(g, r)
    assert torch.equal(g[0], torch.tensor([1.0, 2.0]))


def test_random_gradients_never_point_against_the_reference():
    generator = torch.Generator().manual_seed(0)
    projected = 0
    for _ in range(200):
        g = [torch.randn(5, 3, generator=generator), torch.randn(7, generator=generator)]
        r = [torch.randn(5, 3, generator=generator), torch.randn(7, generator=generator)]
        before = [t.clone() for t in g]
        projected += project_conflicting(g, r)
        scale = float(dot(before, before) * dot(r, r)) ** 0.5
        assert float(dot(g, r)) >= -1e-6 * scale  # zero up to float32 rounding of the subtraction
        # Never more than the conflicting component is removed: what is left is the closest such vector.
        assert float(dot(g, g)) <= float(dot(before, before)) + 1e-9
    assert 50 < projected < 150  # about half of random pairs conflict: both branches ran


def test_an_sgd_step_with_the_projected_gradient_does_not_raise_the_anchor_loss():
    """On a tiny model: the distillation step alone raises the anchor loss; the projected one does not (to first
    order: the change is O(lr^2), here far below the unprojected rise)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x_task, y_task = torch.randn(16, 4), torch.randint(0, 3, (16,))
    x_anchor = x_task[:8]
    y_anchor = (y_task[:8] + 1) % 3  # an anchor whose labels disagree with the task's: the gradients conflict
    loss = torch.nn.functional.cross_entropy
    params = list(model.parameters())

    def grads(x, y):
        model.zero_grad()
        loss(model(x), y).backward()
        return [p.grad.clone() for p in params]

    def anchor_loss_after(step):
        with torch.no_grad():
            saved = [p.clone() for p in params]
            for p, s in zip(params, step, strict=True):
                p -= s
            value = float(loss(model(x_anchor), y_anchor))
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
        return value

    g, r = grads(x_task, y_task), grads(x_anchor, y_anchor)
    assert float(dot(g, r)) < 0  # the case the rule is for
    lr = 1e-2
    with torch.no_grad():
        start = float(loss(model(x_anchor), y_anchor))
    plain_rise = anchor_loss_after([lr * t for t in g]) - start
    projected = [t.clone() for t in g]
    assert project_conflicting(projected, r)
    projected_rise = anchor_loss_after([lr * t for t in projected]) - start
    assert plain_rise > 0
    assert projected_rise < 0.05 * plain_rise
