"""The KL anchor's term against a hand-written per-token reference, and its weight."""

import math

import pytest
import torch

from slowed_plugin.anchor.kl import kl_weight, token_kl


def test_token_kl_equals_the_hand_written_mean_over_trained_tokens():
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 7, generator=gen), torch.randn(2, 5, 7, generator=gen)
    labels = torch.tensor([[-100, -100, 3, 4, 1], [-100, 2, 2, -100, -100]])
    total, count = 0.0, 0
    for b in range(2):
        for t in range(4):  # position t predicts token t + 1
            if labels[b, t + 1] == -100:
                continue
            p = [math.exp(x) for x in teacher[b, t].tolist()]
            q = [math.exp(x) for x in student[b, t].tolist()]
            p = [x / sum(p) for x in p]
            q = [x / sum(q) for x in q]
            total += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))
            count += 1
    assert count == 5
    assert float(token_kl(student, teacher, labels)) == pytest.approx(total / count, rel=1e-5)
    assert float(token_kl(teacher, teacher, labels)) == pytest.approx(0.0, abs=1e-6)
    assert float(token_kl(student, teacher, torch.full_like(labels, -100))) == 0.0


def test_the_weight_is_replays_share_of_the_mean_loss():
    assert kl_weight(0.05) == 0.05 / 0.95 and kl_weight(0.5) == 1.0
