"""Gradient projection against the gradients of past tasks: GEM and A-GEM's update around any optimizer.

* GEM (Lopez-Paz & Ranzato, 2017): with G (t × P) the gradients of the t past tasks' episodic
  memories and g the current gradient, if some ⟨G_k, g⟩ < 0 the gradient becomes the closest g̃ with
  G g̃ ≥ 0, through the dual QP  min_v ½ vᵀ(GGᵀ + εI)v + (Gg)ᵀv  s.t. v ≥ margin,  g̃ = Gᵀv + g
  (solved by quadprog, as GEM's code; ``margin`` is GEM's ``memory_strength``).
* A-GEM (Chaudhry et al., 2019): one reference gradient r (of the memories of all past tasks
  together); if ⟨g, r⟩ < 0, g̃ = g − (⟨g, r⟩ / ⟨r, r⟩) r.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import quadprog
import torch
from torch import Tensor
from torch.optim import Optimizer

from mclnf.optim.wrapped import Wrapped


def gem_project(g: Tensor, G: Tensor, margin: float = 0.5, eps: float = 1e-3) -> Tensor:
    """GEM's projection of the gradient ``g`` (P,) against the past-task gradients ``G`` (t, P)."""
    if bool((G @ g >= 0).all()):
        return g
    Gd, gd = G.double().cpu().numpy(), g.double().cpu().numpy()
    P = Gd @ Gd.T
    P = 0.5 * (P + P.T) + eps * np.eye(len(P))
    v = quadprog.solve_qp(P, -(Gd @ gd), np.eye(len(P)), np.full(len(P), margin))[0]
    return torch.from_numpy(Gd.T @ v + gd).to(g)


def agem_project(g: Tensor, r: Tensor) -> Tensor:
    """A-GEM's projection of ``g`` (P,) against the reference gradient ``r`` (P,)."""
    dot = torch.dot(g, r)
    return g if dot >= 0 else g - (dot / torch.dot(r, r)) * r


class GradientProjection(Wrapped):
    """Replaces the gradient by its projection before ``optimizer.step()``.

    ``references()`` returns the past tasks' gradients as rows (t, P), flattened in the order of the
    optimizer's parameters, or None before there is a past task. ``rule`` is ``gem`` (each row a
    constraint) or ``agem`` (one row, the reference gradient).
    """

    def __init__(self, optimizer: Optimizer, references: Callable[[], Tensor | None], rule: str = "gem", margin: float = 0.5):
        if rule not in ("gem", "agem"):
            raise ValueError(f"GradientProjection: rule {rule!r} is neither 'gem' nor 'agem'")
        super().__init__(optimizer)
        self.references, self.rule, self.margin = references, rule, margin

    def step(self, closure=None):
        G = self.references()
        if G is not None:
            params = [p for p in self.params() if p.grad is not None]
            g = torch.cat([p.grad.reshape(-1) for p in params])
            new = gem_project(g, G, self.margin) if self.rule == "gem" else agem_project(g, G[0])
            offset = 0
            for p in params:
                p.grad.copy_(new[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        return self.optimizer.step(closure)
