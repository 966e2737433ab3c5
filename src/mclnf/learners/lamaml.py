"""La-MAML (Gupta, Yadav & Paull, "Look-ahead Meta Learning for Continual Learning", NeurIPS 2020, Alg. 1).

Per incoming sample, one inner SGD step with learnable per-parameter rates α (inner gradients clamped
to ±``lamaml_clip``); the meta-loss is the loss of the incoming batch plus replay after every inner
step, averaged. The update learns α first, then steps the weights with the new, clipped rates::

    α ← α − η · clip(∇_α L_meta)
    θ ← θ − max(α, 0) ⊙ clip(∇_θ L_meta)

``clip`` rescales the gradients of all θ (and, separately, of all α) to a norm of at most
``lamaml_clip``. The weights' step is ``torch.optim.SGD`` at rate 1 on the rate-scaled gradient.
First-order unless ``lamaml_second_order``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import clip_grad_norm_

from mclnf.learners.base import Functional
from mclnf.learners.continual import Replay


class LaMAML(Functional, Replay):
    """``lamaml``: look-ahead MAML with learnable per-parameter learning rates and replay."""

    name = "lamaml"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lrs = nn.ParameterList([nn.Parameter(torch.full_like(p, self.opts.lamaml_alpha)) for p in self.model.parameters()])

    def new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=1.0)

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """The meta-loss: mean over the inner steps of the loss of the whole batch (incoming + replay)
        at the fast weights; the incoming samples (the first ``batch_size`` rows) are the inner steps."""
        o, fast = self.opts, dict(self.model.named_parameters())
        rates = [a.clamp_min(0) for a in self.lrs]
        order = self.shuffled(min(o.batch_size, len(x)))
        meta = x.new_zeros(())
        for i in order.tolist():
            grads = torch.autograd.grad(self.loss_at(fast, x[i : i + 1], y[i : i + 1]), list(fast.values()), create_graph=o.lamaml_second_order)
            fast = {k: w - g.clamp(-o.lamaml_clip, o.lamaml_clip) * a for (k, w), g, a in zip(fast.items(), grads, rates)}
            meta = meta + self.loss_at(fast, x, y)
        return meta / len(order)

    @torch.no_grad()
    def update(self) -> None:
        weights, lrs = list(self.model.parameters()), list(self.lrs)
        for group in (weights, lrs):
            clip_grad_norm_([p for p in group if p.grad is not None], self.opts.lamaml_clip)
        for a in lrs:  # α first ...
            if a.grad is not None:
                a.add_(a.grad, alpha=-self.opts.lamaml_lr)
                a.grad = None
        for w, a in zip(weights, lrs):  # ... then θ with the new, clipped rates
            if w.grad is not None:
                w.grad.mul_(a.clamp_min(0))
        self.optimizer.step()

    def extra_state(self) -> dict:
        return {**super().extra_state(), "lrs": self.lrs}
