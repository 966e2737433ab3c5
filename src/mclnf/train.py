"""The one training loop: every fit and every learner's inner optimization runs through :func:`train`."""

from __future__ import annotations

import math
from time import perf_counter
from typing import Callable, Iterable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from mclnf.errors import DivergedError
from mclnf.optim import needs_create_graph

Batch = tuple[Tensor, Tensor]


def log_spaced_steps(steps: int) -> list[int]:
    """1, 2, 4, … up to ``steps``, and ``steps`` itself."""
    out = [2**k for k in range(int(math.log2(steps)) + 1)] if steps >= 1 else []
    return out + [steps] if steps not in out and steps >= 1 else out


class EpochSampler:
    """Mini-batches that visit every sample once per epoch (the last partial batch is dropped), in an
    order fixed by ``(seed, epoch)`` alone, so a resumed run draws exactly the batches of an
    uninterrupted one. With ``batch_size`` ≥ the number of samples every step is the full batch."""

    def __init__(self, coords: Tensor, values: Tensor, batch_size: int, seed: int):
        self.coords, self.values, self.batch_size, self.seed = coords, values, batch_size, seed
        self.per_epoch = max(1, len(coords) // batch_size)
        self._epoch, self._perm = -1, None

    def __call__(self, step: int) -> Batch:
        """The batch of training step ``step`` (1-based)."""
        if self.batch_size >= len(self.coords):
            return self.coords, self.values
        epoch, i = divmod(step - 1, self.per_epoch)
        if epoch != self._epoch:
            seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
            self._epoch, self._perm = epoch, torch.randperm(len(self.coords), generator=torch.Generator().manual_seed(seed))
        idx = self._perm[i * self.batch_size : (i + 1) * self.batch_size]
        return self.coords[idx], self.values[idx]


def params_finite(optimizer: torch.optim.Optimizer) -> bool:
    return all(bool(torch.isfinite(p).all()) for g in optimizer.param_groups for p in g["params"])


def train(
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    batches: Callable[[int], Batch],
    steps: int,
    *,
    start_step: int = 0,
    elapsed: float = 0.0,
    eval_steps: Iterable[int] = (),
    on_eval: Callable[[int, float, float], None] | None = None,
    last_good_step: int | None = None,
    progress: bool = True,
    desc: str = "fit",
) -> float:
    """Run optimization steps ``start_step + 1 … steps``; returns the training time in seconds.

    Each step: ``loss = loss_fn(*batches(step))``, gradients into ``p.grad`` (differentiable when
    the optimizer asks for it, see :func:`mclnf.optim.needs_create_graph`), ``optimizer.step()``. At the steps in
    ``eval_steps``, ``on_eval(step, loss, training_seconds)`` is called outside the timed region.
    A non-finite loss or parameter raises :class:`DivergedError` before anything is updated or
    saved from it, naming ``last_good_step`` (the last step ``on_eval`` saw).
    """
    eval_steps = set(eval_steps)
    params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
    bar = tqdm(total=steps, initial=start_step, desc=desc, disable=not progress, mininterval=1.0, dynamic_ncols=True)
    try:
        for step in range(start_step + 1, steps + 1):
            t0 = perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(*batches(step))
            value = loss.item()
            if not math.isfinite(value):
                raise DivergedError(step, value, last_good_step)
            if needs_create_graph(optimizer):  # autograd.grad, not backward: no parameter↔grad cycle
                for p, g in zip(params, torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)):
                    p.grad = g
            else:
                loss.backward()
            optimizer.step()
            elapsed += perf_counter() - t0
            bar.update()
            if step in eval_steps:
                if not params_finite(optimizer):
                    raise DivergedError(step, float("nan"), last_good_step, what="parameters")
                bar.set_postfix(loss=f"{value:.3g}", refresh=False)
                if on_eval is not None:
                    on_eval(step, value, elapsed)
                last_good_step = step
    finally:
        optimizer.zero_grad(set_to_none=True)  # drops a create_graph gradient's graph
        bar.close()
    return elapsed
