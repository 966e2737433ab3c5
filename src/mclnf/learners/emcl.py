"""EMCL (Zou & Lin, "Efficient Meta-Learning for Continual Learning with Taylor Expansion Approximation",
IJCNN 2022), written once: the importance, the proximal inner step and the closed-form meta-gradient,
used by the online classifier :class:`EMCL` here and by every field meta-method's ``emcl`` rule
(:class:`mclnf.learners.meta.EMCLClosedForm`).

* importance (eq. 13, 7): h ← η h + (1 − η) Ω, Ω = |∂L/∂θ₀ ⊙ θ₀| (first-order Taylor term), used as
  ĥ = h / mean(h) — our scaling: the paper does not give one;
* inner step (eq. 21), a proximal step on L(θ) + (λ/2) Σ ĥ (θ − θ₀)²:
  θ̂ = θ − β∇ℓ(θ),  θ ← (θ̂ + γλĥθ₀) / (1 + γλĥ);
* meta-gradient (eq. 10): λĥ(θ₀ − θ_k), no second-order graph. The proximal iteration's fixed point
  minimizes L + (λγ/2β) Σ ĥ(θ − θ₀)², so this is the exact meta-gradient when γ = β and β/γ times it
  otherwise (tested);
* meta step (eq. 8): θ₀ ← θ₀ − (α₀ r / ĥ) ⊙ meta-gradient.

Table IV's ablations (online learner): ``emcl_pgd=False`` — a plain gradient step on the regularized
loss, θ ← θ − β(∇ℓ + λĥ(θ − θ₀)); ``emcl_reg=False`` — no pull towards θ₀, the inner rate modulated
instead, θ ← θ − β∇ℓ / (1 + γλĥ); ``emcl_importance="si"`` — Ω = |∂L/∂θ₀ ⊙ Δθ₀|, Δθ₀ the last meta
step (SI's path term).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from mclnf.learners.base import Functional
from mclnf.learners.continual import Replay


class Importance:
    """EMCL's importance: h ← η h + (1 − η) Ω per parameter (a list of tensors); :meth:`normalized` is ĥ = h / mean(h)."""

    def __init__(self, eta: float, initial: list[Tensor] | None = None):
        self.eta, self.h = eta, initial

    def update(self, omega: list[Tensor]) -> None:
        self.h = omega if self.h is None else [self.eta * h + (1 - self.eta) * w for h, w in zip(self.h, omega)]

    def normalized(self) -> list[Tensor]:
        mean = sum(h.sum() for h in self.h) / sum(h.numel() for h in self.h)
        return [h / mean if mean > 0 else torch.ones_like(h) for h in self.h]

    def state_dict(self) -> dict:
        return {"eta": self.eta, "h": self.h}

    def load_state_dict(self, state: dict) -> None:
        self.eta, self.h = state["eta"], state["h"]


def inner_step(theta0: Tensor, h: Tensor, beta: float, lam: float, gamma: float, pgd: bool = True, reg: bool = True) -> Callable[[Tensor, Tensor], Tensor]:
    """EMCL's inner step (θ, ∇ℓ(θ)) ↦ θ' for one parameter with anchor θ₀ and importance ĥ — proximal
    (eq. 21), or an ablation's plain or rate-modulated step; its constants are computed once."""
    c = gamma * lam * h
    if not reg:
        rate = beta / (1 + c)
        return lambda theta, grad: theta - rate * grad
    if not pgd:
        pull = lam * h
        return lambda theta, grad: theta - beta * (grad + pull * (theta - theta0))
    inv = 1 / (1 + c)
    anchor = c * theta0 * inv
    return lambda theta, grad: torch.addcmul(anchor, theta - beta * grad, inv)  # (θ − β∇ℓ + cθ₀)/(1 + c)


def meta_gradient(theta0: Tensor, theta_k: Tensor, h: Tensor, lam: float) -> Tensor:
    """EMCL's closed-form meta-gradient λĥ(θ₀ − θ_k) (eq. 10)."""
    return lam * h * (theta0 - theta_k)


class EMCL(Functional, Replay):
    """``emcl``: proximal inner loop towards θ₀, closed-form meta-gradient, importance-scaled meta rates."""

    name = "emcl"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.importance = Importance(self.opts.emcl_eta)
        self.h_hat: list[Tensor] | None = None  # ĥ of the coming meta step
        self.last_step: list[Tensor] | None = None

    def new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=1.0)  # on the gradient already scaled by α₀ r / ĥ

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """L(θ₀) of the batch, with the gradient λĥ(θ₀ − θ_k) (a surrogate: value and gradient are EMCL's)."""
        o = self.opts
        names, theta0 = zip(*self.model.named_parameters())
        base = self.loss_at(dict(zip(names, theta0)), x, y)
        grads = torch.autograd.grad(base, theta0)
        with torch.no_grad():
            ref = theta0 if o.emcl_importance == "taylor" or self.last_step is None else self.last_step
            self.importance.update([(g * r).abs() for g, r in zip(grads, ref)])
            self.h_hat = h = self.importance.normalized()
            steps = [inner_step(t0.detach(), hi, o.emcl_inner_lr, o.emcl_lambda, o.emcl_gamma, o.emcl_pgd, o.emcl_reg) for t0, hi in zip(theta0, h)]
        fast, n = [t.detach() for t in theta0], min(o.batch_size, len(x))
        replayed = torch.arange(n, len(x))
        for i in self.shuffled(n).tolist():  # incoming sample i with the replayed rows
            fast = [t.requires_grad_() for t in fast]
            rows = torch.cat([torch.tensor([i]), replayed])
            g = torch.autograd.grad(self.loss_at(dict(zip(names, fast)), x[rows], y[rows]), fast)
            with torch.no_grad():
                fast = [step(t, gi) for step, t, gi in zip(steps, fast, g)]
        with torch.no_grad():
            meta = [meta_gradient(t0, t, hi, o.emcl_lambda) for hi, t0, t in zip(h, theta0, fast)]
            self.last_step = [o.emcl_lr * o.emcl_r * m / hi.clamp_min(1e-12) for m, hi in zip(meta, h)]  # the step about to be taken
        return base.detach() + sum((m * (t0 - t0.detach())).sum() for m, t0 in zip(meta, theta0))

    @torch.no_grad()
    def update(self) -> None:
        """θ₀ ← θ₀ − (α₀ r / ĥ) ⊙ g (eq. 8): SGD at rate 1 on the gradient scaled by α₀ r / ĥ."""
        scale = self.opts.emcl_lr * self.opts.emcl_r
        for p, h in zip(self.model.parameters(), self.h_hat):
            if p.grad is not None:
                p.grad.mul_(scale).div_(h.clamp_min(1e-12))
        self.optimizer.step()

    def extra_state(self) -> dict:
        return {**super().extra_state(), "importance": self.importance}
