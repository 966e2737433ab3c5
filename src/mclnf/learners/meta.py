"""Meta-learning of a field initialization θ₀: each method is an inner loop composed with a meta-gradient rule.

Every method meta-learns θ₀ by the same outer step (:func:`mclnf.train.meta_step`): for a meta-batch of
signals, run an inner loop from θ₀ on each signal's tasks, and follow the meta-gradient of the loss
after adaptation. The methods differ in what an inner loop sees, which parameters it adapts, and which
learner uses θ₀ at test time (:meth:`MetaMethod.test_learner`):

* ``mol`` (:class:`MOL`) — MAML over whole signals (Learned Init, Tancik et al. 2021): one inner loop
  per signal on all its samples; at test time one field from θ₀ on the whole signal. The upper
  reference: it never sees a task stream.
* ``maml-cl`` (:class:`MAMLCL`) — the same meta-training; at test time one field adapts to the tasks
  one after another.
* ``oml`` (:class:`OML`) — online-aware meta-learning (Javed & White, 2019): the inner loop adapts only
  the last ``oml_fast_layers`` layers (the prediction network, PLN), k steps on each task in turn; the
  outer loss is the whole signal's after the last task. The outer optimizer holds θ₀ of both the
  representation layers and the PLN's initialization (their Algorithm 1 updates both).
* ``mcl-nf`` (:class:`MCLNF`) — MCL-NF (Woo et al., Algorithm 1): a module per task, every module
  starting from θ₀; the inner loop adapts each (signal, task) pair's module on that task's samples,
  independently, and the outer loss is the mean over pairs of the task loss after adaptation. Modules
  are ``width/√T`` wide. At test time: the modular learner from θ₀.
* ``mcl-nf-fim`` (:class:`MCLNFFIM`) — the same with the Fisher-information-maximization loss
  (:func:`mclnf.losses.fim_loss`) in the inner and outer loops and at test time.

Meta-gradient rules (``meta_grad``), for every method:

* ``second-order`` (:class:`SecondOrder`) — MAML: back-propagation through the k inner SGD steps
  θ_{j+1} = θ_j − α∇L(θ_j).
* ``first-order`` (:class:`FirstOrder`) — FOMAML: dθ_k/dθ₀ taken as I, so the meta-gradient is ∇L(θ_k).
* ``emcl`` (:class:`EMCLClosedForm`) — EMCL's closed form (:mod:`mclnf.learners.emcl`, written once): the
  inner loop takes proximal steps towards θ₀ with importance h (β = γ = α) and the meta-gradient is
  λh(θ₀ − θ_k), with no second-order graph. h is EMCL's moving average (rate ``emcl_eta``) of the
  first-order Taylor importance |g ⊙ θ₀| of the first inner step, mean over the meta-batch normalized
  to 1 before it enters the average (so that λ is a pull strength relative to the loss; a deviation:
  EMCL does not say how h is scaled). For OML's representation layers, which the inner loop does not
  adapt, every rule takes the plain gradient ∇L(θ_rep, W_k) at the adapted PLN.

Inner loops are ``torch.func`` functions of one task, ``vmap``-ped over the meta-batch: each task's
inner gradient is that of its own loss (never a batch mean scaled by 1/B); the outer objective is the
sum over tasks divided by the global number of tasks.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import Tensor
from torch.func import functional_call, grad, vmap

from mclnf.errors import MclnfError
from mclnf.fields import Field, FieldConfig
from mclnf.learners.base import Learner, LearnerOptions
from mclnf.learners.continual import FineTune, Offline
from mclnf.learners.emcl import inner_step as emcl_inner_step
from mclnf.learners.emcl import meta_gradient
from mclnf.learners.modular import Modular
from mclnf.losses import FIM_FORMS, FISHERS, PER_SAMPLE, fim_loss, fim_weight_stats
from mclnf.options import OptionGroup, check_choice, check_non_negative, check_positive, check_positive_int, check_range, option
from mclnf.sampling import permutation
from mclnf.signals import Layout, Signal
from mclnf.signals.tasks import Task, split_signal

Params = dict[str, Tensor]


# ---- meta-gradient rules -------------------------------------------------------------------------
class SecondOrder:
    """MAML: the inner loop keeps its graph; the outer loss at θ_k is differentiated through it."""

    name: ClassVar[str] = "second-order"

    def start(self, theta0: Params) -> Params:
        """Where the inner loop starts: θ₀ itself (its graph kept) or a detached copy."""
        return theta0

    def inner_step(self, opts, theta0: Tensor, h: Tensor | None) -> Callable[[Tensor, Tensor], Tensor]:
        """(θ, ∇L(θ)) ↦ the next inner iterate, for one parameter."""
        return lambda p, g: p - opts.inner_lr * g

    def outer_params(self, theta0: Params, adapted: Params) -> Params:
        """The parameters the outer loss is evaluated at (and differentiated through)."""
        return adapted

    def extra(self, opts, theta0: Params, adapted: Params, h: Params | None) -> Tensor | float:
        """A term added to the outer objective for its gradient (EMCL's closed form)."""
        return 0.0


class FirstOrder(SecondOrder):
    """FOMAML: θ_k = θ₀ + (θ_k − θ₀) with the difference constant, so dθ_k/dθ₀ = I."""

    name = "first-order"

    def start(self, theta0: Params) -> Params:
        return {k: v.detach() for k, v in theta0.items()}

    def inner_step(self, opts, theta0, h):
        return lambda p, g: g.detach().mul_(-opts.inner_lr).add_(p)  # in g's buffer: no graph to keep, one tensor less per step

    def outer_params(self, theta0, adapted):
        return {k: theta0[k] + (v - theta0[k].detach()) for k, v in adapted.items()}


class EMCLClosedForm(FirstOrder):
    """EMCL: proximal inner steps towards θ₀ (β = γ = α), meta-gradient λh(θ₀ − θ_k) as a surrogate term."""

    name = "emcl"

    def inner_step(self, opts, theta0, h):
        return emcl_inner_step(theta0, h, opts.inner_lr, opts.emcl_lambda, opts.inner_lr, in_place=True)  # the inner loop drops g after its step

    def outer_params(self, theta0, adapted):
        return adapted  # detached: the outer loss's gradient reaches only OML's representation

    def extra(self, opts, theta0, adapted, h):
        # d/dθ₀ of Σ_k ⟨m_k, θ₀⟩ with m_k = Σ_tasks λh(θ₀ − θ_k), held constant
        return sum((meta_gradient(theta0[k].detach(), adapted[k], h[k], opts.emcl_lambda).sum(0) * theta0[k]).sum() for k in adapted)


META_GRADIENTS: dict[str, type[SecondOrder]] = {c.name: c for c in (SecondOrder, FirstOrder, EMCLClosedForm)}


def batched(fn: Callable, in_dims: tuple, use_vmap: bool) -> Callable:
    """``vmap(fn, in_dims)`` (random draws independent per item: radiance's jitter), or the same as a Python loop over the batch (outputs stacked)."""
    if use_vmap:
        return vmap(fn, in_dims=in_dims, randomness="different")

    def loop(*args):
        tree = torch.utils._pytree
        n = next(leaves[0].shape[0] for a, d in zip(args, in_dims) if d == 0 and (leaves := tree.tree_leaves(a)))
        pick = lambda a, d, i: a if d is None else tree.tree_map(lambda v: v[i], a)  # noqa: E731
        outs = [fn(*(pick(a, d, i) for a, d in zip(args, in_dims))) for i in range(n)]
        return tree.tree_map(lambda *xs: torch.stack(xs), *outs)

    return loop


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


# ---- methods -------------------------------------------------------------------------------------
class MetaMethod:
    """A method on signals of one layout: its field, θ₀'s initial draw, the task stream's sample indices,
    the meta-objective (an inner loop with the rule ``opts.meta_grad``) and its test-time learner.
    The base class is MOL's whole-signal inner loop; subclasses override :meth:`episodes`, :meth:`loss`
    and :meth:`test_learner`."""

    name: ClassVar[str]
    modular: ClassVar[bool] = False  # one module per task, width / √T
    trains_as: ClassVar[str | None] = None  # another method whose meta-training this one's is, step for step (its θ₀ serves both)

    @classmethod
    def meta_training(cls) -> str:
        """The method whose meta-training this one's is: ``trains_as``, else itself. Methods with one meta-training share θ₀."""
        return cls.trains_as or cls.name

    def __init__(self, layout: Layout, field: FieldConfig, opts: MetaOptions):
        self.layout, self.opts = layout, opts
        self.rule = META_GRADIENTS[opts.meta_grad]()
        self.loss_name = layout.loss
        width = max(1, round(field.width / math.sqrt(opts.tasks))) if self.modular else field.width
        self.field_config = dataclasses.replace(field, width=width)
        with torch.random.fork_rng(devices=[]):
            self.template = Field(self.field_config)  # structure only; parameters come from θ₀
        self.idx, self.mask, self.stream = task_index(layout, opts.split, opts.tasks)
        self.coords = layout.probe().coords  # every signal's, except a scene block's (its own rays: objective's ``coords``)
        self.fast = self.fast_names([n for n, _ in self.template.named_parameters()])

    def fast_names(self, names: list[str]) -> list[str]:
        """The parameters the inner loop adapts (all; OML: the top layers)."""
        return names

    # ---- parameters and losses -----------------------------------------------------------------
    def init_params(self, seed: int) -> Params:
        torch.manual_seed(seed)
        return {k: v.detach().clone() for k, v in Field(self.field_config).named_parameters()}

    def forward(self, params: Params, x: Tensor) -> Tensor:
        return self.layout.observe(lambda points: functional_call(self.template, params, (points,)), x)

    def loss(self, params: Params, x: Tensor, y: Tensor, m: Tensor) -> Tensor:
        """The (masked) loss of one task: mean over its real samples."""
        per = PER_SAMPLE[self.loss_name](self.forward(params, x), y)
        return (per * m).sum() / m.sum()

    def weight_stats(self, theta0: Params, values: Tensor) -> dict[str, float]:
        """Statistics of the loss's sample weights at θ₀ for meta-train's log (here none: the loss is unweighted)."""
        return {}

    def inner_loss(self, params: Params, x: Tensor, y: Tensor, m: Tensor, state) -> tuple[Tensor, object]:
        """An inner step's loss and what the task's next step needs: tensors, () at a task's first step (here always ())."""
        return self.loss(params, x, y, m), state

    def outer_loss(self, params: Params, x: Tensor, y: Tensor, m: Tensor, state) -> Tensor:
        """The loss after adaptation (Alg. 1 l. 23), given what the task's inner steps carried (:meth:`inner_loss`; here unused)."""
        return self.loss(params, x, y, m)

    def adapt(self, theta0: Params, fast: Params, data: list[tuple[Tensor, Tensor, Tensor]], h: Params | None) -> tuple[Params, Params, object]:
        """k inner steps of the rule on each (x, y, mask) of ``data`` in turn, adapting the ``fast``
        parameters (a subset of θ₀'s names, started from ``fast``); returns them, the Taylor
        importance |g ⊙ θ₀| of the first step and what the last task's steps carried (:meth:`inner_loss`)."""
        slow = {k: v for k, v in theta0.items() if k not in fast}
        steps = {k: self.rule.inner_step(self.opts, theta0[k], None if h is None else h[k]) for k in fast}
        importance = None
        for x, y, m in data:
            state = ()  # what a task's steps carry from one to the next (:meth:`inner_loss`)
            for _ in range(self.opts.inner_steps):
                g, state = grad(lambda p: self.inner_loss({**slow, **p}, x, y, m, state), has_aux=True)(fast)
                if importance is None:
                    importance = {k: (g[k] * theta0[k]).abs().detach() for k in g}
                fast = {k: steps[k](p, g[k]) for k, p in fast.items()}
        return fast, importance, state

    # ---- the meta-objective --------------------------------------------------------------------
    def task_subset(self, seed: int, step: int) -> Tensor | None:
        """Which ``task_batch`` of each task's samples outer step ``step`` uses: (T, R) positions in the
        task's row of ``idx``, fixed by (seed, step); None when every sample is used."""
        R = self.opts.task_batch
        counts = self.mask.sum(1).long().tolist()
        if R is None or R >= max(counts):
            return None
        return torch.stack([permutation(n, seed, step, t, 13).repeat(-(-R // n))[:R] for t, n in enumerate(counts)])

    def episodes(self, start: Params, fast0: Params, h: Params | None, coords: Tensor, values: Tensor, idx: Tensor, mask: Tensor, whole: bool):
        """Adapt every inner problem of the meta-batch; returns the adapted fast parameters (batched),
        the importance and the outer loss's data (x, y, mask, what the inner steps carried), batched alike.
        Here: one problem per signal, its inner data :meth:`inner_data`, its outer data the whole signal
        (or the union of the tasks' subsets; nothing carried: the inner loop's tasks are not the outer data)."""
        B = values.shape[0]
        if whole:
            x_all, y_all, m_all = coords, values, torch.ones_like(values[..., 0])
        else:
            x_all, y_all, m_all = coords[:, idx.reshape(-1)], values[:, idx.reshape(-1)], mask.reshape(-1).expand(B, -1)

        def one(x, y, xa, ya, ma):
            return self.adapt(start, fast0, self.inner_data(x, y, xa, ya, ma, idx, mask), h)

        adapted, imp, _ = batched(one, (0, 0, 0, 0, 0), self.opts.vmap)(coords, values, x_all, y_all, m_all)
        return adapted, imp, (x_all, y_all, m_all, ())

    def inner_data(self, x, y, xa, ya, ma, idx, mask) -> list[tuple[Tensor, Tensor, Tensor]]:
        """What one signal's inner loop learns, in turn: its whole signal (MOL, MAML+CL)."""
        return [(xa, ya, ma)]

    def objective(self, theta0: Params, values: Tensor, count: int, h: Params | None = None, coords: Tensor | None = None,
                  subset: Tensor | None = None) -> tuple[Tensor, Tensor, Params]:  # fmt: skip
        """The outer objective of a meta-batch ``values`` (B, N, C) at ``coords`` (B, N, d; default: every
        signal at the layout's samples), on the ``subset`` of each task's samples (:meth:`task_subset`):
        its gradient with respect to θ₀ is the meta-gradient summed over the batch's tasks and divided
        by ``count`` (the global number of tasks, so that processes of one meta-batch add up). Returns
        it, the summed loss after adaptation (for reporting) and the summed importance |g ⊙ θ₀| (for emcl's h)."""
        start = self.rule.start(theta0)
        fast0 = {k: start[k] for k in self.fast}
        hh = None if h is None else {k: h[k] for k in self.fast}
        B = values.shape[0]
        coords = self.coords.to(values).expand(B, -1, -1) if coords is None else coords
        idx, mask = self.idx.to(values.device), self.mask.to(values)
        if subset is not None:
            subset = subset.to(values.device)
            idx, mask = idx.gather(1, subset), mask.gather(1, subset)
        adapted, imp, outer_data = self.episodes(start, fast0, hh, coords, values, idx, mask, whole=subset is None)
        rest = {k: theta0[k] for k in theta0 if k not in self.fast}  # oml's representation: live θ₀
        losses = batched(lambda fast, x, y, m, carried: self.outer_loss({**rest, **fast}, x, y, m, carried), (0,) * 5, self.opts.vmap)(self.rule.outer_params(theta0, adapted), *outer_data)
        obj = (losses.sum() + self.rule.extra(self.opts, theta0, adapted, h)) / count
        return obj, losses.detach().sum(), {k: v.sum(0) for k, v in imp.items()}

    # ---- test time -----------------------------------------------------------------------------
    def test_learner(self, signal: Signal, tasks: list[Task], opts: LearnerOptions, theta0: Params) -> Learner:
        """The learner that meets a meta-test signal's task stream from θ₀."""
        return Offline.for_signal(signal, tasks, self.field_config, opts, init=theta0)


class MOL(MetaMethod):
    name = "mol"


class MAMLCL(MetaMethod):
    name = "maml-cl"
    trains_as = "mol"

    def test_learner(self, signal, tasks, opts, theta0):
        return FineTune.for_signal(signal, tasks, self.field_config, opts, init=theta0)


class OML(MetaMethod):
    name = "oml"

    def fast_names(self, names):
        depth = self.field_config.depth
        if self.opts.oml_fast_layers >= depth:
            raise MclnfError(f"--oml-fast-layers {self.opts.oml_fast_layers}: must be fewer than --depth {depth} (the representation keeps at least one layer)")
        return [n for n in names if n.startswith("layers.") and int(n.split(".")[1]) >= depth - self.opts.oml_fast_layers]  # a hash grid's table: representation

    def inner_data(self, x, y, xa, ya, ma, idx, mask):
        return [(x[i], y[i], m) for i, m in zip(idx, mask)]  # the tasks in turn

    def test_learner(self, signal, tasks, opts, theta0):
        learner = FineTune.for_signal(signal, tasks, self.field_config, opts, init=theta0)
        for name, p in learner.model.named_parameters():
            p.requires_grad_(name in self.fast)  # only the PLN adapts
        return learner


class MCLNF(MetaMethod):
    name = "mcl-nf"
    modular = True

    def episodes(self, start, fast0, h, coords, values, idx, mask, whole):
        """Every (signal, task) pair adapts its own module on its task's samples, independently; the outer loss scores it on
        the same samples (Alg. 1's query set is the task's context set), with what its inner steps carried."""
        B, (T, M) = values.shape[0], idx.shape
        xs = coords[:, idx].reshape(B * T, M, -1)
        ys = values[:, idx].reshape(B * T, M, -1)
        ms = mask.expand(B, T, M).reshape(B * T, M)
        adapted, imp, carried = batched(lambda x, y, m: self.adapt(start, fast0, [(x, y, m)], h), (0, 0, 0), self.opts.vmap)(xs, ys, ms)
        return adapted, imp, (xs, ys, ms, carried)

    def test_learner(self, signal, tasks, opts, theta0):
        opts = dataclasses.replace(opts, module_width=self.field_config.width, modules=None)
        return Modular.for_signal(signal, tasks, self.field_config, opts, init=theta0)


class MCLNFFIM(MCLNF):
    name = "mcl-nf-fim"

    def loss(self, params, x, y, m, prior=None, with_sums=False):
        o = self.opts
        return fim_loss(self.template, x, y, o.fim_lambda, self.loss_name, o.fisher, mask=m, observe=self.layout.observe, params=params, form=o.fim_form,
                        prior=prior, with_sums=with_sums)  # fmt: skip

    def weight_stats(self, theta0: Params, values: Tensor) -> dict[str, float]:
        """The FIM weights at θ₀ of the first signal's first task (:func:`~mclnf.losses.fim_weight_stats`); none for scene
        blocks (their rays are the objective's own coordinates)."""
        if self.layout.kind == "radiance":
            return {}
        real = self.idx[0][self.mask[0] > 0]
        return fim_weight_stats(self.template, self.coords.to(values)[real], values[0][real], self.opts.fim_lambda, self.loss_name, self.opts.fisher, theta0)

    def inner_loss(self, params, x, y, m, state):
        """``--fim-form paper``: the task's Fisher accumulates over its inner steps (Alg. 1 l. 8, 16)."""
        if self.opts.fim_form != "paper":
            return self.loss(params, x, y, m), state
        return self.loss(params, x, y, m, prior=state or None, with_sums=True)

    def outer_loss(self, params, x, y, m, state):
        """``--fim-form paper``: the outer loss weighs with the Fisher the task's inner steps accumulated, its own batch at
        the adapted parameters added (Alg. 1 l. 23, "as in steps 10–12", read as an inner step is); else its batch's own."""
        if self.opts.fim_form != "paper":
            return self.loss(params, x, y, m)
        return self.loss(params, x, y, m, prior=state)

    def test_learner(self, signal, tasks, opts, theta0):
        o = self.opts
        return super().test_learner(signal, tasks, dataclasses.replace(opts, fim_lambda=o.fim_lambda, fisher=o.fisher, fim_form=o.fim_form), theta0)


META_METHODS: dict[str, type[MetaMethod]] = {c.name: c for c in (MOL, MAMLCL, OML, MCLNF, MCLNFFIM)}


@dataclass(kw_only=True)
class MetaOptions(OptionGroup):
    """method"""

    method: str = option("mcl-nf", "mol (MAML on whole signals), maml-cl, oml, mcl-nf (modules from one meta-learned init), mcl-nf-fim (with the FIM loss)", choices=tuple(META_METHODS))
    meta_grad: str = option("second-order", "second-order (MAML), first-order (FOMAML) or emcl (closed form λh(θ₀ − θ_k), no second-order graph)", choices=tuple(META_GRADIENTS))
    tasks: int = option(4, "tasks T each signal is split into (image: T strips; audio/video: T segments)")
    split: str | None = option(None, "the task split (default: the kind's; scene blocks: views)", choices=("patches", "resolution", "time", "views"))
    inner_steps: int = option(3, "inner SGD steps k per task")
    inner_lr: float = option(1e-2, "inner SGD learning rate α (Learned Init's)")
    fim_lambda: float = option(1.0, "mcl-nf-fim: λ in w = 1 + λ gᵀF⁻¹g / P (mean weight 1 + λ)")
    fisher: str = option("kfac-diag", "mcl-nf-fim: F per layer, diag(E[δ²]) ⊗ diag(E[a²]) or the exact diagonal", choices=FISHERS)
    fim_form: str = option("normalized", "mcl-nf-fim: normalized (Σwℓ / Σw, F of each batch) or paper (eq. 2 as printed: (1/m) Σwℓ, F accumulated over each task's steps, Alg. 1 l. 8–16)",
                         choices=FIM_FORMS)  # fmt: skip
    emcl_lambda: float = option(1.0, "emcl: strength λ of the proximal pull towards θ₀")
    emcl_eta: float = option(0.9, "emcl: moving-average rate η of the importance h")
    oml_fast_layers: int = option(2, "oml: top layers adapted in the inner loop")
    task_batch: int | None = option(None, "samples of each task per outer step, drawn afresh each step (default: all; scenes: 256 rays)")
    vmap: bool = True  # vmap the inner loops over the meta-batch (False: a Python loop; for benchmarks)

    def check(self):
        check_choice(self, "method", tuple(META_METHODS))
        check_choice(self, "meta_grad", tuple(META_GRADIENTS))
        check_choice(self, "fisher", FISHERS)
        check_choice(self, "fim_form", FIM_FORMS)
        check_positive_int(self, "inner_steps", "tasks", "oml_fast_layers", "task_batch")
        check_positive(self, "inner_lr", "emcl_lambda")
        check_non_negative(self, "fim_lambda")
        check_range(self, "emcl_eta", 0, 1)


def meta_method(layout: Layout, field: FieldConfig, opts: MetaOptions) -> MetaMethod:
    """The method ``opts.method`` on signals of ``layout``."""
    return META_METHODS[opts.method](layout, field, opts)
