"""Confidence interval of a proportion (the safety ratio is one: safe answers / prompts judged)."""

from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of ``successes / n`` (95 % with the default ``z``).

    Unlike the normal-approximation interval it stays inside [0, 1] and does not collapse to a
    point at 0/n or n/n, which matters for the small prompt sets safety is measured on
    (80 prompts in the paper). ``n = 0`` gives the uninformative ``(0.0, 1.0)``.
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"`successes` must satisfy 0 <= successes <= n; got successes={successes}, n={n}.")
    if z <= 0:
        raise ValueError(f"`z` must be positive, got {z}.")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    # Clamp rounding noise: the exact interval of 0/n starts at 0 and of n/n ends at 1.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high
