"""Reptile within and across batches: the update of MER (Riemer et al., 2019), after any optimizer's step."""

from __future__ import annotations

import torch
from torch import Tensor


class Reptile:
    """Interpolates parameters back towards where each batch (and each group of batches) started.

    With θ_w the weights at the start of the current batch (``k`` inner steps) and θ_a those at the
    start of the current group of ``batches`` batches (MER, Algorithm 6 "within and across batches"),
    :meth:`after_step` (called after every optimizer step) does::

        every k inner steps:            θ ← θ_w + β (θ − θ_w),  θ_w ← θ       (within-batch Reptile)
        every k · batches inner steps:  θ ← θ_a + γ (θ − θ_a),  θ_a ← θ_w ← θ  (across-batch Reptile)

    β = γ = 1 leaves the optimizer's steps alone. The optimizer's own state (e.g. Adam's moments)
    carries on across interpolations, as Lookahead's ``pullback_momentum='none'``.

    Example::

        reptile = Reptile(list(model.parameters()), k=4, beta=0.5)
        for x, y in pieces:
            opt.zero_grad(); loss(model(x), y).backward(); opt.step(); reptile.after_step()
    """

    def __init__(self, params: list[Tensor], k: int, beta: float, batches: int = 1, gamma: float = 1.0):
        self.params, self.k, self.beta, self.batches, self.gamma = params, k, beta, batches, gamma
        self.inner_steps = 0
        self.within = [p.detach().clone() for p in params]
        self.across = [w.clone() for w in self.within]

    @torch.no_grad()
    def after_step(self) -> None:
        self.inner_steps += 1
        if self.inner_steps % self.k == 0:
            torch._foreach_lerp_(self.params, self.within, 1 - self.beta)  # θ ← θ + (1−β)(θ_w − θ) = θ_w + β(θ − θ_w)
            if self.inner_steps % (self.k * self.batches) == 0:
                torch._foreach_lerp_(self.params, self.across, 1 - self.gamma)
                torch._foreach_copy_(self.across, self.params)
            torch._foreach_copy_(self.within, self.params)

    def state_dict(self) -> dict:
        return {"inner_steps": self.inner_steps, "within": self.within, "across": self.across}

    def load_state_dict(self, state: dict) -> None:
        self.inner_steps = state["inner_steps"]
        self.within = [t.clone() for t in state["within"]]
        self.across = [t.clone() for t in state["across"]]
