"""Reptile within and across batches around any optimizer: the update of MER (Riemer et al., 2019)."""

from __future__ import annotations

import torch
from torch.optim import Optimizer

from mclnf.errors import MclnfError
from mclnf.optim.wrapped import Wrapped


class Reptile(Wrapped):
    """Wraps ``optimizer``; after its ``step()``s, interpolates towards where each batch started.

    With θ_w the weights at the start of the current batch (``k`` inner steps) and θ_a those at the
    start of the current group of ``batches`` batches (MER, Algorithm 6 "within and across batches"):

        every k inner steps:            θ ← θ_w + β (θ − θ_w),  θ_w ← θ       (within-batch Reptile)
        every k · batches inner steps:  θ ← θ_a + γ (θ − θ_a),  θ_a ← θ_w ← θ  (across-batch Reptile)

    β = γ = 1 is the wrapped optimizer itself. The inner optimizer's state (e.g. Adam's moments)
    carries on across interpolations, as Lookahead's ``pullback_momentum='none'``.
    """

    def __init__(self, optimizer: Optimizer, k: int, beta: float, batches: int = 1, gamma: float = 1.0):
        for name, value in (("--mer-steps", k), ("--mer-batches", batches)):
            if not isinstance(value, int) or value < 1:
                raise MclnfError(f"{name} {value}: must be a positive integer")
        for name, value in (("--mer-beta", beta), ("--mer-gamma", gamma)):
            if not 0 < value <= 1:
                raise MclnfError(f"{name} {value}: must be in (0, 1]")
        super().__init__(optimizer)
        self.k, self.beta, self.batches, self.gamma = k, beta, batches, gamma
        self.inner_steps = 0
        self.within = [p.detach().clone() for p in self.params()]
        self.across = [w.clone() for w in self.within]

    def step(self, closure=None):
        loss = self.optimizer.step(closure)
        self.inner_steps += 1
        if self.inner_steps % self.k == 0:
            with torch.no_grad():
                params = self.params()
                torch._foreach_lerp_(params, self.within, 1 - self.beta)  # θ ← θ + (1−β)(θ_w − θ) = θ_w + β(θ − θ_w)
                if self.inner_steps % (self.k * self.batches) == 0:
                    torch._foreach_lerp_(params, self.across, 1 - self.gamma)
                    torch._foreach_copy_(self.across, params)
                torch._foreach_copy_(self.within, params)
        return loss

    def state_dict(self) -> dict:
        return {**super().state_dict(), "inner_steps": self.inner_steps, "within": self.within, "across": self.across}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.inner_steps = state["inner_steps"]
        self.within = [t.clone() for t in state["within"]]
        self.across = [t.clone() for t in state["across"]]
