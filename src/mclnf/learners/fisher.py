"""Diagonal Fisher information and the elastic weight consolidation penalty (Kirkpatrick et al., 2017).

The Fisher is that of the likelihood whose negative log is the training loss, taken in expectation
over the model's own predictive distribution (the "true" Fisher, not the empirical one built from
the targets: at a well-fitted field the residuals, and with them the empirical Fisher, vanish):

* ``mse`` (mean over C channels): Gaussian with variance C/2, F = (2/C) E_x[Σ_c (∂f_c/∂θ)²];
* ``bce`` (logit z): Bernoulli, F = E_x[p(1−p) (∂z/∂θ)²], p = σ(z);
* ``ce`` (logits z): categorical, F = E_x[Σ_c p_c (∂ log p_c/∂θ)²].

Each is the diagonal of the loss's Gauss–Newton matrix, so with λ = 1 the EWC penalty is the
diagonal quadratic model of an old task's loss around its solution.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from mclnf.errors import MclnfError

LIKELIHOODS = ("mse", "bce", "ce")


def diagonal_fisher(model: nn.Module, x: Tensor, loss: str, outputs: Tensor | None = None, max_floats: int = 2**24,
                    observe: Callable[[Callable, Tensor], Tensor] | None = None) -> dict[str, Tensor]:  # fmt: skip
    """Diagonal Fisher of ``model``'s trainable parameters, averaged over the inputs ``x`` (N, …);
    ``outputs`` (indices) keeps only those outputs (a multi-head classifier's head for ``ce``);
    ``observe(model, x)`` maps the model to predictions of ``x`` (a layout's: radiance renders rays).

    Per-sample Jacobians come from ``vmap(jacrev(·))`` in chunks of at most ``max_floats`` Jacobian
    entries; returns ``{name: tensor shaped like the parameter}``.
    """
    if loss not in LIKELIHOODS:
        raise MclnfError(f"diagonal_fisher: unknown loss {loss!r}; expected one of {', '.join(LIKELIHOODS)}")
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())

    def logits(p: dict[str, Tensor], xs: Tensor) -> Tensor:
        call = lambda inputs: functional_call(model, (p, buffers), (inputs,))  # noqa: E731
        z = call(xs) if observe is None else observe(call, xs)
        return z if outputs is None else z[:, outputs]

    def out(p: dict[str, Tensor], xi: Tensor) -> Tensor:  # one sample → (C,) outputs
        z = logits(p, xi[None])[0]
        return torch.log_softmax(z, -1) if loss == "ce" else z

    per_sample = vmap(jacrev(out), in_dims=(None, 0), randomness="different")  # radiance: each ray its own jitter
    was = model.training
    model.eval()  # batch norm: its running statistics, never updated here (nor in place inside the transforms)
    with torch.no_grad():
        n_out = out(params, x[0]).numel()
    chunk = max(1, max_floats // (n_out * sum(p.numel() for p in params.values())))
    fisher = {k: torch.zeros_like(p) for k, p in params.items()}
    try:
        for xc in x.split(chunk):
            jac = per_sample(params, xc)  # name → (n, C, *shape)
            with torch.no_grad():
                z = logits(params, xc)
                w = {"mse": torch.full_like(z, 2.0 / n_out), "bce": torch.sigmoid(z) * torch.sigmoid(-z), "ce": torch.softmax(z, -1)}[loss]
                for k, j in jac.items():
                    fisher[k] += torch.einsum("nc,nc...->...", w, j.square())
    finally:
        model.train(was)
    return {k: f / len(x) for k, f in fisher.items()}


class EWCPenalty:
    """(λ/2) Σ_t Σ_i F_t,i (θ_i − θ*_t,i)² over the past tasks t, kept in consolidated form.

    Σ_t F_t (θ − θ*_t)² = A (θ − m)² + const with A = Σ_t F_t and m = Σ_t F_t θ*_t / A, so the penalty
    and its gradient λ A (θ − m) cost O(P) per step however many tasks have passed — exactly equal
    to one term per task (up to the constant, which has no gradient and is not added).
    """

    def __init__(self, strength: float):
        if not strength >= 0:
            raise MclnfError(f"--ewc-lambda {strength}: must be non-negative")
        self.strength = strength
        self.importance: dict[str, Tensor] = {}  # A
        self.anchor: dict[str, Tensor] = {}  # m

    def consolidate(self, fisher: dict[str, Tensor], params: dict[str, Tensor]) -> None:
        """Add a finished task with Fisher ``fisher`` and solution ``params``."""
        for k, f in fisher.items():
            theta = params[k].detach()
            a, m = self.importance.get(k, torch.zeros_like(f)), self.anchor.get(k, torch.zeros_like(f))
            total = a + f
            self.anchor[k] = torch.where(total > 0, (a * m + f * theta) / total.clamp_min(torch.finfo(total.dtype).tiny), theta)
            self.importance[k] = total

    def __call__(self, params: dict[str, Tensor]) -> Tensor:
        terms = [(self.importance[k] * (p - self.anchor[k]).square()).sum() for k, p in params.items() if k in self.importance]
        return 0.5 * self.strength * torch.stack(terms).sum() if terms else torch.zeros(())

    def state_dict(self) -> dict:
        return {"strength": self.strength, "importance": self.importance, "anchor": self.anchor}

    def load_state_dict(self, state: dict) -> None:
        self.strength, self.importance, self.anchor = state["strength"], state["importance"], state["anchor"]
