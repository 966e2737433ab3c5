"""Meta-learning of a field initialization θ₀: the methods, their inner loops and their meta-gradients.

Every method meta-learns θ₀ by the same outer step (:mod:`mclnf.meta.train`): for a meta-batch of
signals, run an inner loop from θ₀ on each signal's tasks, and follow the gradient of the loss after
adaptation. They differ in what an inner loop sees and which parameters it adapts:

* ``mol`` — MAML over whole signals (Learned Init, Tancik et al. 2021): one inner loop per signal
  on all its samples. The upper reference: it never sees a task stream.
* ``maml-cl`` — the same meta-training; at test time one field adapts to the tasks one after another.
* ``oml`` — online-aware meta-learning (Javed & White, 2019): the inner loop adapts only the last
  ``oml_fast_layers`` layers (the prediction network, PLN), k steps on each task in turn; the outer
  loss is the whole signal's after the last task. The outer optimizer holds θ₀ of both the
  representation layers and the PLN's initialization (their Algorithm 1 updates both), nothing else.
* ``mcl-nf`` — MCL-NF (Woo et al.): a module per task, every module starting from θ₀; the inner loop
  adapts each (signal, task) pair's module on that task's samples, independently, and the outer loss
  is the mean over pairs of the task loss after adaptation (Algorithm 1). Modules are ``width/√T`` wide.
* ``mcl-nf-fim`` — the same with the Fisher-information-maximization loss (:func:`mclnf.losses.fim_loss`)
  in the inner and outer loops.

Meta-gradients (``meta_grad``), for every method:

* ``second-order`` — MAML: back-propagation through the k inner SGD steps θ_{j+1} = θ_j − α∇L(θ_j).
* ``first-order`` — FOMAML: dθ_k/dθ₀ taken as I, so the meta-gradient is ∇L(θ_k); no inner graph.
* ``emcl`` — EMCL's closed form (Zou & Lin): the inner loop minimizes L(θ) + (λ/2)‖H(θ − θ₀)‖² by
  proximal steps θ ← (θ̂ + αλhθ₀)/(αλh + 1), θ̂ = θ − α∇L(θ), h = diag(H²); the meta-gradient is
  λh(θ₀ − θ_k) — at the inner optimum it equals ∇L(θ_k) — with no second-order graph. h is a moving
  average (rate ``emcl_beta``) of the first-order Taylor importance |g ⊙ θ₀| (mean over the meta-batch,
  normalized to mean 1 so that λ is a pull strength relative to the loss; a deviation: EMCL does not
  say how h is scaled). For OML's representation layers, which the inner loop does not adapt, every
  option takes the plain gradient ∇L(θ_rep, W_k) at the adapted PLN.

Inner loops are ``torch.func`` functions of one task, ``vmap``-ped over the meta-batch: each task's
inner gradient is that of its own loss (never a batch mean scaled by 1/B); the outer objective is the
sum over tasks divided by the global number of tasks.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from torch.func import functional_call, grad, vmap

from mclnf.continual.learners import permutation
from mclnf.errors import MclnfError
from mclnf.fields import Field, FieldConfig
from mclnf.losses import FISHERS, PER_SAMPLE, fim_loss
from mclnf.signals import Layout
from mclnf.signals.tasks import split_signal

METHODS = ("mol", "maml-cl", "oml", "mcl-nf", "mcl-nf-fim")
META_GRADS = ("second-order", "first-order", "emcl")
Params = dict[str, Tensor]


@dataclass
class MetaOptions:
    """Options of meta-training (defaults are the CLI's)."""

    method: str = "mcl-nf"
    meta_grad: str = "second-order"
    inner_steps: int = 3  # k
    inner_lr: float = 1e-2  # α, SGD (Learned Init's 1e-2)
    tasks: int = 4  # T
    split: str | None = None  # the kind's default split
    fim_lambda: float = 1.0  # mcl-nf-fim: λ of w = 1 + λ gᵀF⁻¹g / P
    fisher: str = "kfac-diag"  # mcl-nf-fim: F's approximation
    emcl_lambda: float = 1.0  # emcl: λ of the proximal pull
    emcl_beta: float = 0.9  # emcl: moving-average rate of the importance h
    oml_fast_layers: int = 2  # oml: adapted (PLN) layers at the top
    task_batch: int | None = None  # samples of each task per outer step, drawn afresh each step (None: all; scenes: rays)
    vmap: bool = True  # vmap the inner loops over the meta-batch (False: a Python loop; for benchmarks)

    def __post_init__(self):
        if self.method not in METHODS:
            raise MclnfError(f"--method {self.method}: unknown; choose one of {', '.join(METHODS)}")
        if self.meta_grad not in META_GRADS:
            raise MclnfError(f"--meta-grad {self.meta_grad}: unknown; choose one of {', '.join(META_GRADS)}")
        if self.fisher not in FISHERS:
            raise MclnfError(f"--fisher {self.fisher}: unknown; choose one of {', '.join(FISHERS)}")
        for name in ("inner_steps", "tasks", "oml_fast_layers") + (("task_batch",) if self.task_batch is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MclnfError(f"--{name.replace('_', '-')} {value}: must be a positive integer")
        for name in ("inner_lr", "emcl_lambda"):
            if not 0 < getattr(self, name) < math.inf:
                raise MclnfError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be a positive finite number")
        if not 0 <= self.fim_lambda < math.inf:
            raise MclnfError(f"--fim-lambda {self.fim_lambda}: must be a non-negative finite number")
        if not 0 <= self.emcl_beta < 1:
            raise MclnfError(f"--emcl-beta {self.emcl_beta}: must be in [0, 1)")


def task_index(layout: Layout, split: str | None, tasks: int) -> tuple[Tensor, Tensor, list]:
    """Sample indices of every task of a signal with ``layout``, padded: (T, M) indices and mask, and the tasks."""
    stream = split_signal(layout.probe(), split, tasks)
    M = max(len(t.sample_index) for t in stream)
    idx = torch.zeros(len(stream), M, dtype=torch.long)
    mask = torch.zeros(len(stream), M)
    for t, task in enumerate(stream):
        idx[t, : len(task.sample_index)] = task.sample_index
        mask[t, : len(task.sample_index)] = 1
    return idx, mask, stream


def batched(fn: Callable, in_dims: tuple, use_vmap: bool) -> Callable:
    """``vmap(fn, in_dims)`` (random draws independent per item: radiance's jitter), or the same as a Python loop over the batch (outputs stacked)."""
    if use_vmap:
        return vmap(fn, in_dims=in_dims, randomness="different")

    def loop(*args):
        n = next(a.shape[0] if isinstance(a, Tensor) else len(next(iter(a.values()))) for a, d in zip(args, in_dims) if d == 0)
        pick = lambda a, d, i: a if d is None else ({k: v[i] for k, v in a.items()} if isinstance(a, dict) else a[i])  # noqa: E731
        outs = [fn(*(pick(a, d, i) for a, d in zip(args, in_dims))) for i in range(n)]
        return torch.utils._pytree.tree_map(lambda *xs: torch.stack(xs), *outs)

    return loop


class MetaMethod:
    """One method of the module docstring on signals of one layout: its field, θ₀'s initial draw, the task
    stream's sample indices and the meta-objective (the test-time learners are in :mod:`mclnf.meta.test`)."""

    def __init__(self, layout: Layout, field: FieldConfig, opts: MetaOptions):
        self.layout, self.opts = layout, opts
        self.loss_name = layout.loss
        modular = opts.method.startswith("mcl-nf")
        width = max(1, round(field.width / math.sqrt(opts.tasks))) if modular else field.width
        self.field_config = dataclasses.replace(field, width=width)
        with torch.random.fork_rng(devices=[]):
            self.template = Field(self.field_config)  # structure only; parameters come from θ₀
        self.idx, self.mask, self.stream = task_index(layout, opts.split, opts.tasks)
        self.coords = layout.probe().coords  # every signal's, except a scene block's (its own rays: objective's ``coords``)
        names = [n for n, _ in self.template.named_parameters()]
        if opts.method == "oml":
            depth = self.field_config.depth
            if opts.oml_fast_layers >= depth:
                raise MclnfError(f"--oml-fast-layers {opts.oml_fast_layers}: must be fewer than --depth {depth} (the representation keeps at least one layer)")
            first_fast = depth - opts.oml_fast_layers
            self.fast = [n for n in names if int(n.split(".")[1]) >= first_fast]
        else:
            self.fast = names

    # ---- parameters ----------------------------------------------------------------------------
    def init_params(self, seed: int) -> Params:
        torch.manual_seed(seed)
        return {k: v.detach().clone() for k, v in Field(self.field_config).named_parameters()}

    def forward(self, params: Params, x: Tensor) -> Tensor:
        return self.layout.observe(lambda points: functional_call(self.template, params, (points,)), x)

    # ---- losses --------------------------------------------------------------------------------
    def loss(self, params: Params, x: Tensor, y: Tensor, m: Tensor) -> Tensor:
        """The (masked) loss of one task: mean over its real samples, FIM-weighted for mcl-nf-fim."""
        if self.opts.method == "mcl-nf-fim":
            fwd = lambda p, taps: functional_call(self.template, params, (p,), {"taps": taps})  # noqa: E731
            return fim_loss(fwd, self.template.out_dims, x, y, self.opts.fim_lambda, self.loss_name, self.opts.fisher, mask=m, observe=self.layout.observe)
        per = PER_SAMPLE[self.loss_name](self.forward(params, x), y)
        return (per * m).sum() / m.sum()

    def adapt(self, theta0: Params, fast: Params, data: list[tuple[Tensor, Tensor, Tensor]], h: Params | None) -> tuple[Params, Params]:
        """k inner steps on each (x, y, mask) of ``data`` in turn, adapting the ``fast`` parameters
        (a subset of θ₀'s names, started from ``fast``); returns them and the Taylor importance
        |g ⊙ θ₀| of the first step. second-order keeps the graph; the others run detached."""
        o = self.opts
        slow = {k: v for k, v in theta0.items() if k not in fast}
        lr, lam = o.inner_lr, o.emcl_lambda
        importance = None
        for x, y, m in data:
            for _ in range(o.inner_steps):
                g = grad(lambda p: self.loss({**slow, **p}, x, y, m))(fast)
                if importance is None:
                    importance = {k: (g[k] * theta0[k]).abs().detach() for k in g}
                if o.meta_grad == "emcl":
                    fast = {k: (p - lr * g[k] + lr * lam * h[k] * theta0[k]) / (1 + lr * lam * h[k]) for k, p in fast.items()}
                else:
                    fast = {k: p - lr * (g[k] if o.meta_grad == "second-order" else g[k].detach()) for k, p in fast.items()}
        return fast, importance

    # ---- the meta-objective --------------------------------------------------------------------
    def task_subset(self, seed: int, step: int) -> Tensor | None:
        """Which ``task_batch`` of each task's samples outer step ``step`` uses: (T, R) positions in the
        task's row of ``idx``, fixed by (seed, step); None when every sample is used."""
        R = self.opts.task_batch
        counts = self.mask.sum(1).long().tolist()
        if R is None or R >= max(counts):
            return None
        return torch.stack([permutation(n, seed, step, t, 13).repeat(-(-R // n))[:R] for t, n in enumerate(counts)])

    def objective(self, theta0: Params, values: Tensor, count: int, h: Params | None = None, coords: Tensor | None = None,
                  subset: Tensor | None = None) -> tuple[Tensor, Tensor, Params]:  # fmt: skip
        """The outer objective of a meta-batch ``values`` (B, N, C) at ``coords`` (B, N, d; default: every
        signal at the layout's samples), on the ``subset`` of each task's samples (:meth:`task_subset`):
        its gradient with respect to θ₀ is the meta-gradient summed over the batch's tasks and divided
        by ``count`` (the global number of tasks, so that processes of one meta-batch add up). Returns
        it, the summed loss after adaptation (for reporting) and the summed importance |g ⊙ θ₀| (for emcl's h)."""
        o = self.opts
        start = theta0 if o.meta_grad == "second-order" else {k: v.detach() for k, v in theta0.items()}
        fast0 = {k: start[k] for k in self.fast}
        hh = None if h is None else {k: h[k] for k in self.fast}
        B = values.shape[0]
        coords = self.coords.to(values).expand(B, -1, -1) if coords is None else coords
        idx, mask = self.idx.to(values.device), self.mask.to(values)
        if subset is not None:
            subset = subset.to(values.device)
            idx, mask = idx.gather(1, subset), mask.gather(1, subset)
        if o.method.startswith("mcl-nf"):  # every (signal, task) pair on its own
            T, M = idx.shape
            xs = coords[:, idx].reshape(B * T, M, -1)
            ys = values[:, idx].reshape(B * T, M, -1)
            ms = mask.expand(B, T, M).reshape(B * T, M)

            def one(x, y, m):
                adapted, imp = self.adapt(start, fast0, [(x, y, m)], hh)
                return adapted, imp

            adapted, imp = batched(one, (0, 0, 0), o.vmap)(xs, ys, ms)
            outer_data = (xs, ys, ms)
        else:
            if subset is None:  # the whole signal
                x_all, y_all, m_all = coords, values, torch.ones_like(values[..., 0])
            else:  # the union of the tasks' subsets
                x_all, y_all, m_all = coords[:, idx.reshape(-1)], values[:, idx.reshape(-1)], mask.reshape(-1).expand(B, -1)

            def one(x, y, xa, ya, ma):
                data = [(x[i], y[i], m) for i, m in zip(idx, mask)] if o.method == "oml" else [(xa, ya, ma)]
                return self.adapt(start, fast0, data, hh)

            adapted, imp = batched(one, (0, 0, 0, 0, 0), o.vmap)(coords, values, x_all, y_all, m_all)
            outer_data = (x_all, y_all, m_all)
        rest = {k: theta0[k] for k in theta0 if k not in self.fast}  # oml's representation: live θ₀

        def outer(fast, x, y, m):
            return self.loss({**rest, **fast}, x, y, m)

        if o.meta_grad == "second-order":
            losses = batched(outer, (0, 0, 0, 0), o.vmap)(adapted, *outer_data)
            obj = losses.sum() / count
        elif o.meta_grad == "first-order":  # θ_k = θ₀ + (θ_k − θ₀) with the difference constant: dθ_k/dθ₀ = I
            live = {k: theta0[k] + (v - theta0[k].detach()) for k, v in adapted.items()}
            losses = batched(outer, (0, 0, 0, 0), o.vmap)(live, *outer_data)
            obj = losses.sum() / count
        else:
            losses = batched(outer, (0, 0, 0, 0), o.vmap)(adapted, *outer_data)  # adapted is detached: gradient only to the representation
            pull = sum((o.emcl_lambda * h[k] * (theta0[k].detach() - adapted[k]).sum(0)).mul(theta0[k]).sum() for k in self.fast)
            obj = (losses.sum() + pull) / count  # d/dθ₀ of pull = Σ_tasks λh(θ₀ − θ_k)
        return obj, losses.detach().sum(), {k: v.sum(0) for k, v in imp.items()}
