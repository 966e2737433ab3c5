"""The continual learners of one model: each differs from plain fine-tuning only in its hooks.

* ``ol`` (:class:`Offline`) — the whole signal at once, as many steps in all as the stream has; the
  upper reference (the task only says how far the one run goes).
* ``cl`` / ``sgd`` (:class:`FineTune`) — naive sequential fine-tuning.
* ``er`` (:class:`Replay`) — experience replay: each batch adds ``replay_batch`` samples drawn from a
  reservoir of ``buffer_size`` samples of the past tasks (Chaudhry et al., 2019).
* ``ewc`` (:class:`EWC`) — elastic weight consolidation: after each task its diagonal Fisher and
  solution; the loss adds (λ/2) Σ_t F_t (θ − θ*_t)² (Kirkpatrick et al., 2017; :mod:`mclnf.learners.fisher`).
* ``mer`` (:class:`MER`) — meta-experience replay: each step's replay-mixed batch is split into
  ``mer_steps`` pieces learned one after another, then Reptile within and across batches (Riemer et
  al., 2019; :class:`~mclnf.learners.reptile.Reptile`). Pieces of samples stand in for MER's single
  examples on fields; on classification streams a piece is one example (``mclnf cl-bench``).

They keep one optimizer across tasks (one continuing run).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from mclnf.learners.base import Learner
from mclnf.learners.fisher import EWCPenalty, diagonal_fisher
from mclnf.learners.replay import ReservoirBuffer
from mclnf.learners.reptile import Reptile
from mclnf.sampling import Batch, EpochSampler, permutation, task_seed
from mclnf.signals import Signal
from mclnf.signals.tasks import Task


class Offline(Learner):
    """``ol``: the whole signal at once, for as many steps in all as the stream has (one continuing run)."""

    name = "ol"

    @classmethod
    def for_signal(cls, signal: Signal, tasks: list[Task], *args, **kwargs) -> Learner:
        learner = super().for_signal(signal, tasks, *args, **kwargs)
        learner.sampler = EpochSampler(signal.coords, signal.values, learner.opts.batch_size, task_seed(learner.opts.seed))
        learner.steps_done = 0
        return learner

    def batches(self, task: Task) -> Callable[[int], Batch]:
        return lambda step: self.sampler(self.steps_done + 1)  # steps continue across tasks

    def update(self) -> None:
        super().update()
        self.steps_done += 1

    def state_dict(self) -> dict:
        return {**super().state_dict(), "steps_done": self.steps_done}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.steps_done = state["steps_done"]


class FineTune(Learner):
    """``cl``: naive sequential fine-tuning."""

    name = "cl"


class Replay(Learner):
    """``er``: every batch of the current task plus ``replay_batch`` samples of the past ones."""

    name = "er"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.buffer = ReservoirBuffer(self.opts.buffer_size, seed=task_seed(self.opts.seed, 1 << 20))
        self.replay_batch = self.opts.replay_batch or self.opts.batch_size

    def batches(self, task: Task) -> Callable[[int], Batch]:
        current = super().batches(task)
        if len(self.buffer) == 0:
            return current

        def mixed(step: int) -> Batch:
            (x, y), (xr, yr) = current(step), self.buffer.sample(self.replay_batch)
            return torch.cat([x, xr]), torch.cat([y, yr])

        return mixed

    def after_task(self, task: Task) -> None:
        order = permutation(len(task), self.opts.seed, task.index, 1)
        self.buffer.add(task.coords[order], task.values[order])

    def extra_state(self) -> dict:
        return {"buffer": self.buffer}


class EWC(Learner):
    """``ewc``: the task loss plus the consolidated EWC penalty of the past tasks."""

    name = "ewc"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.penalty = EWCPenalty(self.opts.ewc_lambda)
        self.params = dict(self.model.named_parameters())

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        base = super().loss(x, y)
        return base + self.penalty(self.params) if self.penalty.importance else base

    def after_task(self, task: Task) -> None:
        if task.index == len(self.tasks) - 1:
            return  # no task comes after the last one to protect it from
        n = min(self.opts.fisher_samples, len(task))
        pick = permutation(len(task), self.opts.seed, task.index, 2)[:n]
        observe = None if self.layout is None else self.layout.observe
        fisher = diagonal_fisher(self.model, task.coords[pick], self.likelihood, outputs=getattr(task, "classes", None), observe=observe)
        self.penalty.consolidate(fisher, self.params)

    def extra_state(self) -> dict:
        return {"ewc": self.penalty}


class MER(Replay):
    """``mer``: ER's mixed batch in ``mer_steps`` pieces, one optimizer step each, then Reptile."""

    name = "mer"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        o = self.opts
        self.updates_per_step = o.mer_steps
        self.reptile = Reptile(list(self.model.parameters()), o.mer_steps, o.mer_beta, o.mer_batches, o.mer_gamma)

    def batches(self, task: Task) -> Callable[[int], Batch]:
        whole, k, cache = super().batches(task), self.opts.mer_steps, {}

        def piece(inner_step: int) -> Batch:
            step, i = divmod(inner_step - 1, k)
            if step not in cache:  # the batch of training step `step + 1`, shuffled, in k pieces
                cache.clear()
                x, y = whole(step + 1)
                order = permutation(len(x), self.opts.seed, task.index, step, 3)
                if len(x) < k:  # fewer samples than pieces (online, empty memory): cycle through them
                    order = order.repeat(k)[:k]
                cache[step] = (x[order].tensor_split(k), y[order].tensor_split(k))
            xs, ys = cache[step]
            return xs[i], ys[i]

        return piece

    def update(self) -> None:
        super().update()
        self.reptile.after_step()

    def extra_state(self) -> dict:
        return {**super().extra_state(), "reptile": self.reptile}
