"""EMCL (Zou & Lin, "Efficient Meta-Learning for Continual Learning with Taylor Expansion Approximation",
IJCNN 2022), written once: the importance, the proximal inner step and the closed-form meta-gradient,
used by the online classifier :class:`EMCL` here and by every field meta-method's ``emcl`` rule
(:class:`mclnf.learners.meta.EMCLClosedForm`).

* importance (eq. 13, 7): h ← η h + (1 − η) Ω, Ω = |∂L/∂θ₀ ⊙ θ₀| (first-order Taylor term), used as
  ĥ = h / mean(h) — our scaling: the paper gives none (nor η);
* inner step (eq. 16, 17, 21), a proximal step on L(θ) + (λ/2) Σ ĥ (θ − θ₀)²:
  θ̂ = θ − β∇ℓ(θ),  θ ← (θ̂ + γλĥθ₀) / (1 + γλĥ);
* meta-gradient (eq. 10): λĥ(θ₀ − θ_k), no second-order graph. The proximal iteration's fixed point
  minimizes L + (λγ/2β) Σ ĥ(θ − θ₀)², so this is the exact meta-gradient when γ = β and β/γ times it
  otherwise (tested);
* meta step (eq. 8, Alg. 1 line 9): θ₀ ← θ₀ − α ⊙ meta-gradient, α = α₀ r / ĥ.

Every passage the text leaves open is an option (``emcl_*`` of :class:`~mclnf.learners.base.OnlineOptions`),
its default the reading docs/cl-bench.md argues for, with the accuracy of each alternative there.
Table IV's ablations: ``emcl_pgd=False`` — a plain gradient step on the regularized loss,
θ ← θ − β(∇ℓ + λĥ(θ − θ₀)); ``emcl_reg=False`` — no pull towards θ₀, the inner rate modulated
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


def inner_step(theta0: Tensor, h: Tensor, beta: float, lam: float, gamma: float, pgd: bool = True, reg: bool = True,
               in_place: bool = False) -> Callable[[Tensor, Tensor], Tensor]:  # fmt: skip
    """EMCL's inner step (θ, ∇ℓ(θ)) ↦ θ' for one parameter with anchor θ₀ and importance ĥ — proximal
    (eq. 21), or an ablation's plain or rate-modulated step; its constants are computed once. ``in_place``:
    the step writes its result into ``grad``'s buffer (for loops that drop the gradient after its step: they then
    hold one parameter-sized tensor per step beside θ, whatever the loop's length)."""
    c = gamma * lam * h
    if not reg:
        rate = beta / (1 + c)
        if in_place:
            return lambda theta, grad: grad.mul_(-rate).add_(theta)
        return lambda theta, grad: theta - rate * grad
    if not pgd:
        pull = lam * h
        if in_place:
            return lambda theta, grad: grad.addcmul_(pull, theta - theta0).mul_(-beta).add_(theta)
        return lambda theta, grad: theta - beta * (grad + pull * (theta - theta0))
    inv = 1 / (1 + c)
    anchor = c * theta0 * inv
    if in_place:
        return lambda theta, grad: grad.mul_(-beta).add_(theta).mul_(inv).add_(anchor)  # (θ − β∇ℓ + cθ₀)/(1 + c)
    return lambda theta, grad: torch.addcmul(anchor, theta - beta * grad, inv)


def meta_gradient(theta0: Tensor, theta_k: Tensor, h: Tensor, lam: float) -> Tensor:
    """EMCL's closed-form meta-gradient λĥ(θ₀ − θ_k) (eq. 10)."""
    return lam * h * (theta0 - theta_k)


class EMCL(Functional, Replay):
    """``emcl``: proximal inner loop towards θ₀, closed-form meta-gradient, importance-scaled meta rates.

    Per glance of a batch (incoming rows first, then the replayed ones):

    1. Ω = |∂L/∂θ₀ ⊙ θ₀| on the batch at θ₀ (eq. 13); h ← η h + (1 − η) Ω (eq. 7); ĥ = h / mean(h);
    2. inner pass from θ₀ (Alg. 1 lines 4–7), one proximal step (eq. 16, 17, 21) per element of the
       inner sequence that ``emcl_replay`` chooses;
    3. meta step θ₀ ← θ₀ − α ⊙ g (Alg. 1 line 9) with g = λĥ(θ₀ − θ_k) (eq. 10) — or, ``emcl_meta_grad
       = "lookahead"`` (ours), g = ∇L(θ_k) on the batch, the value eq. 9 gives λĥ(θ₀ − θ_k) at the inner
       minimizer — and α = α₀ r / ĥ (eq. 8 read without compounding), α^j = (r / ĥ^j) α^{j−1}
       (``emcl_meta_rate = "compound"``, eq. 8 as printed) or α = α₀ min(1, r / ĥ) (``"bounded"``, ours).
    """

    name = "emcl"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.importance = Importance(self.opts.emcl_eta)
        self.rates: list[Tensor] | None = None  # α of the coming meta step
        self.last_step: list[Tensor] | None = None  # α ⊙ g of that step (EMCL-SI's Δθ₀)
        self.compounded = RateState()  # α^{j−1} of the compounding reading

    def new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=1.0)  # on the gradient already scaled by α

    def inner_rows(self, n: int, total: int) -> list[Tensor]:
        """The inner pass's sequence of row sets (rows ≥ ``n`` are the replayed ones): ``inner`` — each
        incoming sample with every replayed row; ``samples`` — every row alone, incoming and replayed
        shuffled together (Alg. 1's b[κ] over a batch that holds the replay, as La-MAML's batch does);
        ``meta`` and ``none`` — each incoming sample alone (Alg. 1 line 6 with b the incoming batch)."""
        mode = self.opts.emcl_replay
        if mode == "samples":
            return list(self.shuffled(total).split(1))
        replayed = torch.arange(n, total) if mode == "inner" else torch.arange(0)
        return [torch.cat([torch.tensor([i]), replayed]) for i in self.shuffled(n).tolist()]

    def meta_rates(self, h: list[Tensor]) -> list[Tensor]:
        """α (eq. 8): α₀ r / ĥ, or compounded α^j = (r / ĥ^j) α^{j−1} from α⁰ = α₀."""
        o = self.opts
        if o.emcl_meta_rate == "inverse":
            return [o.emcl_lr * o.emcl_r / hi.clamp_min(1e-12) for hi in h]
        if o.emcl_meta_rate == "bounded":
            return [o.emcl_lr * (o.emcl_r / hi.clamp_min(1e-12)).clamp_max(1) for hi in h]
        previous = self.compounded.rates or [torch.full_like(hi, o.emcl_lr) for hi in h]
        self.compounded.rates = [o.emcl_r / hi.clamp_min(1e-12) * a for a, hi in zip(previous, h)]
        return previous  # Alg. 1 line 9 steps with α^j, line 8 having computed α^{j+1}

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """L(θ₀) of the batch, with the gradient g of the meta step (a surrogate: value and gradient are EMCL's)."""
        o = self.opts
        n = min(o.batch_size, len(x))
        if o.emcl_replay == "none":
            x, y = x[:n], y[:n]
        names, theta0 = zip(*self.model.named_parameters())
        base = self.loss_at(dict(zip(names, theta0)), x, y)
        grads = torch.autograd.grad(base, theta0)
        with torch.no_grad():
            ref = theta0 if o.emcl_importance == "taylor" or self.rates is None else self.last_step
            self.importance.update([(g * r).abs() for g, r in zip(grads, ref)])
            h = self.importance.normalized() if o.emcl_scale == "mean" else self.importance.h
            step = o.emcl_inner_lr if o.emcl_gradient_step == "beta" else o.emcl_gamma
            steps = [inner_step(t0.detach(), hi, step, o.emcl_lambda, o.emcl_gamma, o.emcl_pgd, o.emcl_reg) for t0, hi in zip(theta0, h)]
        fast = [t.detach() for t in theta0]
        for rows in self.inner_rows(n, len(x)):
            fast = [t.requires_grad_() for t in fast]
            g = torch.autograd.grad(self.loss_at(dict(zip(names, fast)), x[rows], y[rows]), fast)
            with torch.no_grad():
                fast = [step(t, gi) for step, t, gi in zip(steps, fast, g)]
        if o.emcl_meta_grad == "lookahead":
            fast = [t.requires_grad_() for t in fast]
            meta = list(torch.autograd.grad(self.loss_at(dict(zip(names, fast)), x, y), fast))
        else:
            meta = [meta_gradient(t0.detach(), t, hi, o.emcl_lambda) for hi, t0, t in zip(h, theta0, fast)]
        with torch.no_grad():
            self.rates = self.meta_rates(h)
            self.last_step = [a * m for a, m in zip(self.rates, meta)]  # the step about to be taken (EMCL-SI's Δθ₀)
        return base.detach() + sum((m * (t0 - t0.detach())).sum() for m, t0 in zip(meta, theta0))

    @torch.no_grad()
    def update(self) -> None:
        """θ₀ ← θ₀ − α ⊙ g (Alg. 1 line 9): SGD at rate 1 on the gradient scaled by α."""
        for p, a in zip(self.model.parameters(), self.rates):
            if p.grad is not None:
                p.grad.mul_(a)
        self.optimizer.step()

    def extra_state(self) -> dict:
        return {**super().extra_state(), "importance": self.importance, "compounded": self.compounded}


class RateState:
    """The compounding reading's α^{j−1} per parameter, as a ``state_dict`` holder."""

    def __init__(self):
        self.rates: list[Tensor] | None = None

    def state_dict(self) -> dict:
        return {"rates": self.rates}

    def load_state_dict(self, state: dict) -> None:
        self.rates = state["rates"]
