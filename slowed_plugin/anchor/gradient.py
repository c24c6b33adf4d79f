"""The gradient mode's one rule (A-GEM, Chaudhry et al. 2019), in pure torch.

``g`` is the step's gradient (the distillation loss's, accumulated over the optimizer step), ``r`` the gradient
of the loss on a batch of anchor rows, both over all trainable tensors taken as one vector. If ``g·r < 0`` the
update ``-lr·g`` would raise the anchor loss to first order, so ``g`` loses its component along ``r``:

    g <- g - (g·r / r·r) r        (then g·r = 0: the anchor loss is unchanged to first order)

Otherwise ``g`` is left as it is (it already lowers the anchor loss, or leaves it unchanged).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """``a·b`` over all tensors, accumulated in float64 (a long sum of small products)."""
    total = torch.zeros((), dtype=torch.float64)
    for x, y in zip(a, b, strict=True):
        total += torch.sum(x.double() * y.double()).cpu()
    return total


def project_conflicting(grads: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> bool:
    """Apply the rule to ``grads`` in place; True when they were projected (``g·r < 0``)."""
    g_dot_r = dot(grads, reference)
    if g_dot_r >= 0:
        return False
    r_dot_r = dot(reference, reference)
    if r_dot_r == 0:  # g·r < 0 implies r != 0; kept for a reference that underflowed
        return False
    factor = (g_dot_r / r_dot_r).item()
    for g, r in zip(grads, reference, strict=True):
        g.sub_(r.to(g.dtype), alpha=factor)
    return True
