"""The KL anchor's one term (issue 29, candidate 2), in pure torch.

On the anchor rows (the starting model's own greedy answers), the student (the model being trained) is held to the
teacher's whole next-token distribution (the same weights with the adapters off), per answer token:

    KL(teacher || student) = sum_v p_t(v) (log p_t(v) - log p_s(v))

averaged over the tokens the training loss would train on (labels != -100, shifted like the causal loss).
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def token_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over the trained tokens of ``KL(teacher || student)`` (float32); 0 when no token is trained."""
    student = student_logits[:, :-1].float().log_softmax(-1)
    teacher = teacher_logits[:, :-1].float().log_softmax(-1)
    trained = labels[:, 1:] != IGNORE_INDEX
    per_token = (teacher.exp() * (teacher - student)).sum(-1)
    if not bool(trained.any()):
        return per_token.sum() * 0.0  # keeps the graph (and a zero gradient)
    return per_token[trained].mean()


def kl_weight(ratio: float) -> float:
    """The term's weight beside the distillation loss: replay's anchor rows are ``ratio`` of the mixed set, so
    their share of the mean loss is ``ratio`` against ``1 - ratio`` for the distillation rows."""
    return ratio / (1 - ratio)
