"""Curvature as pure functions: Hessian-vector products and Hutchinson estimates of Hessian diagonals.

This module is the one place in mclnf where Hessian-vector products are taken. Every function works on
lists of tensors (one per parameter), so optimizers and analyses can pass ``p.grad`` lists directly.

Example::

    loss = f(params)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    d = jacobi_diagonal(grads, params, samples=100)   # ≈ diag(H), one tensor per parameter
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def rademacher_like(tensor: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A tensor shaped like ``tensor`` with independent entries ±1, each with probability ½.

    Drawn from ``generator`` when given (it must live on ``tensor``'s device), else from torch's
    global generator."""
    bits = torch.randint(0, 2, tensor.shape, generator=generator, device=tensor.device, dtype=torch.uint8)
    return bits.to(tensor.dtype).mul_(2).sub_(1)


def hvp(grads: Sequence[Tensor], params: Sequence[Tensor], vectors: Sequence[Tensor]) -> list[Tensor]:
    """The Hessian-vector product ``H v`` with ``H = ∂²L/∂θ²``, given ``grads = ∂L/∂θ`` taken with
    ``create_graph=True``. The graph is kept (``retain_graph=True``) so several products can be taken
    from one gradient. A gradient that does not depend on the parameters (no ``grad_fn``) contributes a
    zero row and column of ``H``; a parameter the gradients do not depend on gets a zero product."""
    grads, params, vectors = list(grads), list(params), list(vectors)
    if not (len(grads) == len(params) == len(vectors)):
        raise ValueError(f"hvp: {len(grads)} grads, {len(params)} params and {len(vectors)} vectors; need one of each per parameter")
    live = [i for i, g in enumerate(grads) if g.requires_grad]
    if not live:
        raise RuntimeError(
            "hvp: no gradient has a grad_fn; compute the gradients with create_graph=True "
            "(torch.autograd.grad(loss, params, create_graph=True)) before taking Hessian-vector products"
        )
    out = torch.autograd.grad(
        [grads[i] for i in live], params, [vectors[i] for i in live], retain_graph=True, allow_unused=True
    )
    return [torch.zeros_like(p) if h is None else h for p, h in zip(params, out)]


def jacobi_diagonal(
    grads: Sequence[Tensor], params: Sequence[Tensor], samples: int = 1, generator: torch.Generator | None = None
) -> list[Tensor]:
    """Hutchinson's estimate of ``diag(H)``: the mean over ``samples`` Rademacher draws of ``v ⊙ Hv``.

    Unbiased, ``E[v ⊙ Hv] = diag(H)``; per entry the variance of one draw is ``Σ_{j≠i} H_ij²``."""
    return _average(grads, params, samples, generator, lambda v, hv: v * hv)


def equilibrated_diagonal(
    grads: Sequence[Tensor], params: Sequence[Tensor], samples: int = 1, generator: torch.Generator | None = None
) -> list[Tensor]:
    """The estimate of ``diag(H²)`` (squared row norms of ``H``) used by equilibration: the mean over
    ``samples`` Rademacher draws of ``(Hv)²``.

    Unbiased, ``E[(Hv)_i²] = Σ_j H_ij² = (H²)_ii``; per entry the variance of one draw is
    ``2 Σ_{j≠k} H_ij² H_ik²``."""
    return _average(grads, params, samples, generator, lambda v, hv: hv * hv)


def _average(grads, params, samples, generator, term) -> list[Tensor]:
    if samples < 1:
        raise ValueError(f"samples {samples}: must be at least 1")
    params = list(params)
    total = [torch.zeros_like(p) for p in params]
    for _ in range(samples):
        vs = [rademacher_like(p, generator) for p in params]
        for acc, v, hv in zip(total, vs, hvp(grads, params, vs)):
            acc.add_(term(v, hv.detach()))
    return [t / samples for t in total]


__all__ = ["equilibrated_diagonal", "hvp", "jacobi_diagonal", "rademacher_like"]
