"""AdaHessian with a Jacobi or an equilibrated Hutchinson diagonal, refreshed on a schedule.

This class is also the engine of :class:`mclnf.optim.esgd.ESGD`, which is AdaHessian-E with power 1,
a 50-step warm-up and a refresh every 100 steps.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from mclnf.optim.curvature import hvp, rademacher_like

ESTIMATORS = ("jacobi", "equilibrated")
BIAS_CORRECTIONS = ("reference", "per-update")


class AdaHessian(torch.optim.Optimizer):
    r"""AdaHessian (Yao et al., AAAI 2021, arXiv:2006.00719) as used by Chng, Saratchandran & Lucey,
    "Preconditioners for the Stochastic Training of Implicit Neural Representations" (arXiv:2402.08784).

    With Rademacher :math:`v`, the diagonal estimate :math:`s_t` is
    :math:`v \odot Hv` (``estimator="jacobi"``, :math:`E[s] = \operatorname{diag} H`) or
    :math:`(Hv)^2` (``estimator="equilibrated"``, :math:`E[s] = \operatorname{diag} H^2`)::

        m_t = β1 m_{t-1} + (1-β1) g_t                          (every step)
        D_n = β2 D_{n-1} + (1-β2) s_t                          (refresh steps only; n counts refreshes)
        D̂   = D_n / (1 - β2^τ)     τ = n ("per-update") or τ = t ("reference")
        θ_t = θ_{t-1} - lr_t · (m_t / (1 - β1^t)) / (P(D̂)^k + eps) - lr_t · wd · θ_{t-1}
        lr_t = lr · min(1, t / lr_warmup)                      (lr_warmup = 0: lr_t = lr)

    where :math:`P(D̂) = \sqrt{D̂}` (equilibrated) or :math:`|D̂|` (Jacobi), so both are on the scale of
    :math:`|H|`, and :math:`k` is ``hessian_power``. The diagonal is refreshed on every step
    :math:`t \le \max(\text{warmup}, 1)` and then every ``update_every`` steps, stale in between;
    :meth:`needs_create_graph` is true exactly on refresh steps, and the gradients in ``p.grad`` must then
    carry a graph (``torch.autograd.grad(loss, params, create_graph=True)``).

    The original AdaHessian code accumulates :math:`|Hv|^2 = (v \odot Hv)^2` — the *equilibrated*
    estimate, not the Jacobi one its paper describes; ``estimator="equilibrated"`` is that behaviour.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (≥ 0), default 0.15 (the paper's).
        betas: (β1, β2), each in [0, 1).
        eps: added after the root/power, > 0.
        weight_decay: ≥ 0, decoupled (``θ ← θ(1 - lr·wd)``).
        hessian_power: k in [0, 1].
        estimator: "jacobi" or "equilibrated".
        update_every: refresh period N ≥ 1 after the warm-up.
        warmup: number of initial steps that all refresh (≥ 0).
        bias_correction: "per-update" (textbook: τ counts refreshes) or "reference" (τ counts all steps,
            as the paper's code does; an implicit warm-up when ``update_every > 1``).
        lr_warmup: ramp the learning rate up linearly over the first ``lr_warmup`` steps (0: no ramp).
        seed: seeds this optimizer's own generator for the Rademacher draws (saved in ``state_dict``,
            so a resumed run draws the same vectors); ``None`` draws from torch's global generator.

    Example::

        opt = AdaHessian(model.parameters(), lr=0.15, estimator="jacobi", seed=0)
        for x, y in batches:
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            grads = torch.autograd.grad(loss, params, create_graph=opt.needs_create_graph())
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.15,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-4,
        weight_decay: float = 0.0,
        hessian_power: float = 1.0,
        estimator: str = "equilibrated",
        update_every: int = 1,
        warmup: int = 0,
        bias_correction: str = "per-update",
        seed: int | None = None,
        lr_warmup: int = 0,
    ):
        _check_group(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, hessian_power=hessian_power)
        if estimator not in ESTIMATORS:
            raise ValueError(f"Invalid estimator: {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"Invalid update_every: {update_every!r}; must be an integer ≥ 1")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"Invalid warmup: {warmup!r}; must be an integer ≥ 0")
        if bias_correction not in BIAS_CORRECTIONS:
            raise ValueError(f"Invalid bias_correction: {bias_correction!r}; choose one of {', '.join(BIAS_CORRECTIONS)}")
        if isinstance(lr_warmup, bool) or not isinstance(lr_warmup, int) or lr_warmup < 0:
            raise ValueError(f"Invalid lr_warmup: {lr_warmup!r}; must be an integer ≥ 0")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"Invalid seed: {seed!r}; must be an integer or None")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, hessian_power=hessian_power)
        super().__init__(params, defaults)
        for group in self.param_groups:  # per-group overrides are checked as strictly as the defaults
            _check_group(**{k: group[k] for k in defaults})
        self.estimator, self.update_every, self.warmup = estimator, update_every, warmup
        self.bias_correction, self.seed = bias_correction, seed
        self.lr_warmup = lr_warmup
        self._steps = 0  # step() calls so far: drives the refresh schedule
        self._generator: torch.Generator | None = None
        self._rng_state: Tensor | None = None  # a loaded generator state, applied when the generator is made

    # -- the protocol the training loop uses --------------------------------------------------------
    def needs_create_graph(self) -> bool:
        """True when the next :meth:`step` refreshes the curvature diagonal (an HVP needs the graph)."""
        return self.refreshes_at(self._steps + 1)

    def refreshes_at(self, step: int) -> bool:
        """Whether step number ``step`` (1-based) refreshes the diagonal."""
        first = max(self.warmup, 1)
        return step <= first or (step - first) % self.update_every == 0

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        gen = self._generator
        rng = gen.get_state() if gen is not None else self._rng_state
        sd["schedule"] = {"steps": self._steps, "rng_state": None if rng is None else rng.clone()}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        schedule = state_dict.pop("schedule", None)
        if schedule is None:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state dict has no 'schedule' entry (not saved by {type(self).__name__})")
        super().load_state_dict(state_dict)
        self._steps = int(schedule["steps"])
        rng = schedule["rng_state"]
        self._generator, self._rng_state = None, None if rng is None else rng.clone()

    def _rng(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        if self._generator is None:
            self._generator = torch.Generator(device=device)
            if self._rng_state is not None:
                self._generator.set_state(self._rng_state)
            else:
                self._generator.manual_seed(self.seed)
            self._rng_state = None
        return self._generator

    # -- the update ------------------------------------------------------------------------------------
    def _diagonal_sample(self, params: list[Tensor]) -> list[Tensor]:
        grads = [p.grad for p in params]
        if not any(g.requires_grad for g in grads):
            raise RuntimeError(
                f"{type(self).__name__}: this step refreshes the Hessian diagonal but no gradient has a grad_fn; "
                "fill p.grad with torch.autograd.grad(loss, params, create_graph=True) when "
                "optimizer.needs_create_graph() is true"
            )
        gen = self._rng(params[0].device)
        with torch.enable_grad():
            vs = [rademacher_like(p, gen) for p in params]
            hvs = [h.detach() for h in hvp(grads, params, vs)]
        if self.estimator == "jacobi":
            return [v.mul_(h) for v, h in zip(vs, hvs)]
        return [h.mul_(h) for h in hvs]

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        refresh = self.needs_create_graph()
        ramp = min(1.0, (self._steps + 1) / self.lr_warmup) if self.lr_warmup else 1.0
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        for p in params:
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        samples = dict(zip(params, self._diagonal_sample(params))) if refresh and params else {}
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd, k = group["lr"] * ramp, group["eps"], group["weight_decay"], group["hessian_power"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["hessian_updates"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_hessian"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m, d = state["exp_avg"], state["exp_hessian"]
                state["step"] += 1
                m.mul_(beta1).add_(p.grad.detach(), alpha=1 - beta1)
                if p in samples:
                    d.mul_(beta2).add_(samples[p], alpha=1 - beta2)
                    state["hessian_updates"] += 1
                if state["hessian_updates"] == 0:
                    raise RuntimeError(f"{type(self).__name__}: a parameter joined after the first refresh has no curvature estimate yet")
                tau = state["step"] if self.bias_correction == "reference" else state["hessian_updates"]
                d_hat = d / (1 - beta2**tau)
                scale = d_hat.sqrt_() if self.estimator == "equilibrated" else d_hat.abs_()
                denom = (scale if k == 1 else scale.pow_(k)).add_(eps)
                if wd != 0:
                    p.mul_(1 - lr * wd)
                p.addcdiv_(m, denom, value=-lr / (1 - beta1 ** state["step"]))
        self._steps += 1
        return loss


def _check_group(*, lr, betas, eps, weight_decay, hessian_power) -> None:
    if not (isinstance(lr, (int, float)) and 0.0 <= lr < math.inf):
        raise ValueError(f"Invalid learning rate lr: {lr!r}; must be finite and ≥ 0")
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"Invalid betas: {betas!r}; must be a pair (beta1, beta2)")
    for i, b in enumerate(betas):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i} (betas[{i}]): {b!r}; must be in [0, 1)")
    if not (0.0 < eps < math.inf):
        raise ValueError(f"Invalid eps: {eps!r}; must be finite and > 0")
    if not (0.0 <= weight_decay < math.inf):
        raise ValueError(f"Invalid weight_decay: {weight_decay!r}; must be finite and ≥ 0")
    if not 0.0 <= hessian_power <= 1.0:
        raise ValueError(f"Invalid hessian_power: {hessian_power!r}; must be in [0, 1]")


__all__ = ["AdaHessian"]
