"""The meta-updates of the online meta-continual learners, behind the torch.optim API.

* :class:`LookAheadSGD` — La-MAML (Gupta, Yadav & Paull, NeurIPS 2020, Alg. 1): per-parameter
  learning rates α learned by SGD on the meta-loss, then the weights stepped with the new, clipped α.
* :class:`ImportanceSGD` — EMCL (Zou & Lin, IJCNN 2022, eq. 8): SGD with per-parameter learning rates
  that shrink with the parameters' importance.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import Tensor
from torch.nn.utils import clip_grad_norm_
from torch.optim import Optimizer


def evaluate(closure) -> Tensor | None:
    """The loss of a torch.optim ``closure`` (with gradients on), or None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class LookAheadSGD(Optimizer):
    r"""La-MAML's update of weights θ and their learning rates α (one α per weight entry)::

        α ← α − η · clip(∇_α L_meta)           (if ``learn_lr``)
        θ ← θ − max(α, 0) ⊙ clip(∇_θ L_meta)

    α first, then θ with the updated α; ``clip`` rescales the gradients of all θ (and, separately,
    of all α) to a norm of at most ``max_norm``. ``weights`` and ``lrs`` pair up in order.

    Example::

        lrs = [torch.full_like(p, 0.15, requires_grad=True) for p in model.parameters()]
        opt = LookAheadSGD(model.parameters(), lrs, lr=0.3)
    """

    def __init__(self, weights: Iterable[Tensor], lrs: Iterable[Tensor], lr: float = 0.3, max_norm: float = 2.0, learn_lr: bool = True):
        weights, lrs = list(weights), list(lrs)
        if len(weights) != len(lrs) or any(w.shape != a.shape for w, a in zip(weights, lrs)):
            raise ValueError("LookAheadSGD: one learning-rate tensor of the same shape per weight is needed")
        if not 0 <= lr < math.inf:
            raise ValueError(f"Invalid learning rate of the learning rates lr: {lr!r}; must be finite and ≥ 0")
        if not 0 < max_norm <= math.inf:
            raise ValueError(f"Invalid max_norm: {max_norm!r}; must be > 0")
        super().__init__([{"params": weights, "role": "weights"}, {"params": lrs, "role": "lrs"}], {"lr": lr, "max_norm": max_norm, "learn_lr": learn_lr})

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate(closure)
        weights, lrs = (g for g in self.param_groups)
        for group in (weights, lrs):
            clip_grad_norm_([p for p in group["params"] if p.grad is not None], group["max_norm"])
        if lrs["learn_lr"]:
            for a in lrs["params"]:
                if a.grad is not None:
                    a.add_(a.grad, alpha=-lrs["lr"])
        for w, a in zip(weights["params"], lrs["params"]):
            if w.grad is not None:
                w.sub_(w.grad * a.clamp_min(0))
        return loss


class ImportanceSGD(Optimizer):
    r"""SGD with per-parameter learning rates that shrink with importance (EMCL's eq. 8)::

        θ ← θ − (lr · r / ĥ) ⊙ ∇θ

    ĥ is the parameter's importance, set by the learner in ``state[p]["importance"]`` before each
    step (1 where unset; floored at 1e-12).

    Example::

        opt = ImportanceSGD(model.parameters(), lr=0.3)
        opt.state[p]["importance"] = h_p  # for each parameter p, then opt.step()
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 0.3, r: float = 1.0):
        if not 0 <= lr < math.inf:
            raise ValueError(f"Invalid learning rate lr: {lr!r}; must be finite and ≥ 0")
        if not 0 < r < math.inf:
            raise ValueError(f"Invalid r: {r!r}; must be finite and > 0")
        super().__init__(params, {"lr": lr, "r": r})

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                h = self.state[p].get("importance")
                scale = group["lr"] * group["r"]
                p.sub_(p.grad * scale if h is None else p.grad * scale / h.clamp_min(1e-12))
        return loss
