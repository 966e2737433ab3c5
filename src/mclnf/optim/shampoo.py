"""Shampoo from pytorch-optimizer behind mclnf's conventions (``ValueError`` naming a bad argument,
``state_dict`` round trips)."""

from __future__ import annotations

import math
from typing import Any, Iterable

import pytorch_optimizer
from torch import Tensor


class Shampoo(pytorch_optimizer.Shampoo):
    r"""Shampoo (Gupta, Koren & Singer, ICML 2018, arXiv:1802.09568), the ``pytorch_optimizer``
    implementation. For a matrix parameter with gradient :math:`G_t`::

        L_t = L_{t-1} + G_t G_tᵀ,   R_t = R_{t-1} + G_tᵀ G_t
        θ_t = θ_{t-1} - lr · L_t^{-1/4} G_t R_t^{-1/4}

    (a tensor of order k gets one factor per mode with root 1/(2k)); the inverse roots are recomputed
    every ``preconditioning_compute_steps`` steps. The paper ran Google's scalable Shampoo at lr 0.1.

    Only the arguments are checked here, with ``ValueError`` naming them (pytorch-optimizer's own checks
    raise exception classes that are not ``ValueError``); the algorithm is the library's.

    Example::

        opt = Shampoo(model.parameters(), lr=0.1)
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        preconditioning_compute_steps: int = 1,
        matrix_eps: float = 1e-6,
        **kwargs: Any,
    ):
        if not (isinstance(lr, (int, float)) and 0.0 <= lr < math.inf):
            raise ValueError(f"Invalid learning rate lr: {lr!r}; must be finite and ≥ 0")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Invalid momentum: {momentum!r}; must be in [0, 1)")
        if not (0.0 <= weight_decay < math.inf):
            raise ValueError(f"Invalid weight_decay: {weight_decay!r}; must be finite and ≥ 0")
        if isinstance(preconditioning_compute_steps, bool) or not isinstance(preconditioning_compute_steps, int) or preconditioning_compute_steps < 1:
            raise ValueError(f"Invalid preconditioning_compute_steps: {preconditioning_compute_steps!r}; must be an integer ≥ 1")
        if not (0.0 < matrix_eps < math.inf):
            raise ValueError(f"Invalid matrix_eps: {matrix_eps!r}; must be finite and > 0")
        super().__init__(
            params, lr=lr, momentum=momentum, weight_decay=weight_decay,
            preconditioning_compute_steps=preconditioning_compute_steps, matrix_eps=matrix_eps, **kwargs,
        )  # fmt: skip


__all__ = ["Shampoo"]
