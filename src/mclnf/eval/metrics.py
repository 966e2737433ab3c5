"""Continual-learning metrics over an accuracy or quality matrix R (R[i][j]: task j after learning task i)."""

from __future__ import annotations

import math


def backward_transfer(R: list[list[float]]) -> float | None:
    """BWT = mean_{j < T−1} R[T−1][j] − R[j][j] (0-based; Lopez-Paz & Ranzato, 2017; EMCL eq. 23 — divided
    by T − 1, as the paper; La-MAML's and GEM's code divide by T); None for a single task."""
    T = len(R)
    return None if T < 2 else sum(R[-1][j] - R[j][j] for j in range(T - 1)) / (T - 1)


def finite_mean(values: list) -> float | None:
    """The mean of the finite values, None if there are none."""
    ok = [v for v in values if v is not None and math.isfinite(v)]
    return sum(ok) / len(ok) if ok else None
