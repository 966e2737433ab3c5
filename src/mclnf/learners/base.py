"""The one learner interface, and the options every learner reads.

A :class:`Learner` owns a model and an optimizer and learns a stream of tasks one after another. The
one training loop (:func:`mclnf.train.learn_task`) drives it through its hooks, in the spirit of
avalanche's strategies but with no mutable shared state (a strategy's extra term is its own)::

    before_task(task)                 # grow modules, build or keep the optimizer
    batch = batches(task)(step)       # the task's batches (replay mixes memories in)
    loss(x, y).backward()             # the strategy's loss (EWC's penalty, La-MAML's meta-loss)
    update()                          # optimizer.step(), wrapped by the strategy's own update
    after_task(task)                  # fill memories, consolidate importance
    state_dict() / load_state_dict()  # everything needed to continue bit-exactly

Strategy updates that are not optimizers (Reptile, gradient projection, La-MAML's look-ahead rates,
EMCL's importance-scaled rates) are :meth:`Learner.update` overrides around a real
``torch.optim.Optimizer``.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mclnf.fields import Field, FieldConfig
from mclnf.losses import FIM_FORMS, FISHERS, LOSSES
from mclnf.optim import build_optimizer
from mclnf.options import OptionGroup, check_choice, check_non_negative, check_positive, check_positive_int, check_range, check_seed, option
from mclnf.sampling import Batch, EpochSampler, task_seed
from mclnf.signals import Layout, Signal, predict_in_chunks
from mclnf.signals.tasks import Task


@dataclass(kw_only=True)
class StrategyOptions(OptionGroup):
    """learner (each option names the learners it applies to)"""

    buffer_size: int = option(4096, "er, mer: samples kept from past tasks in a reservoir (gem, agem: divided among the tasks)")
    replay_batch: int | None = option(None, "er, mer: replayed samples added to each batch (default: --batch-size)")
    ewc_lambda: float = option(100.0, "ewc: penalty strength λ (1: each old task's loss by its diagonal quadratic model)")  # best final PSNR of {1, …, 10⁴} on CelebA 000002
    fisher_samples: int = option(2048, "ewc: samples per task the Fisher is averaged over")
    mer_steps: int = option(4, "mer: pieces each batch is learned in, one step each")
    mer_beta: float = option(0.5, "mer: within-batch Reptile step β")
    mer_batches: int = option(1, "mer: batches per across-batch Reptile step")
    mer_gamma: float = option(1.0, "mer: across-batch Reptile step γ (MER's published runs: 1)")
    glances: int = option(1, "steps each batch is used for (La-MAML's glances)")
    modules: int | None = option(None, "modular: number of modules K (default: one per task); K regions of the same split")
    module_width: int | None = option(None, "modular: hidden units of each module (default: --width / √K, so K modules hold about one field's parameters)")
    fim_lambda: float | None = option(None, "modular: train each module with MCL-NF's FIM loss, w = 1 + λ gᵀF⁻¹g / P (default: the plain loss)")
    fisher: str = option("kfac-diag", "FIM loss: F per layer, diag(E[δ²]) ⊗ diag(E[a²]) or the exact diagonal", choices=FISHERS)
    fim_form: str = option("normalized", "FIM loss: normalized (Σwℓ / Σw, F of each batch) or paper (eq. 2 as printed: (1/m) Σwℓ, F accumulated over each task's steps, Alg. 1 l. 8–16)",
                         choices=FIM_FORMS)  # fmt: skip

    def check(self):  # every option checked before a run touches its output folder
        check_positive_int(self, "buffer_size", "replay_batch", "fisher_samples", "mer_steps", "mer_batches", "glances", "modules", "module_width")
        check_non_negative(self, "ewc_lambda")
        for name in ("mer_beta", "mer_gamma"):
            check_range(self, name, 0, 1, low_open=True, high_open=False)
        if self.fim_lambda is not None:
            check_non_negative(self, "fim_lambda")
        check_choice(self, "fisher", FISHERS)
        check_choice(self, "fim_form", FIM_FORMS)


@dataclass(kw_only=True)
class OnlineOptions(OptionGroup):
    """online classification learners (defaults: permuted MNIST)"""

    memory_strength: float = option(0.5, "gem: the QP's margin on the dual variables")
    lamaml_alpha: float = option(0.15, "lamaml: initial per-parameter learning rate α")
    lamaml_lr: float = option(0.3, "lamaml: learning rate of α")
    lamaml_second_order: bool = option(False, "lamaml: differentiate through the inner steps (La-MAML's MNIST script: no; CIFAR, miniImageNet: yes)", action=argparse.BooleanOptionalAction)
    lamaml_clip: float = option(2.0, "lamaml: inner gradient clamp and meta-gradient norm clip")
    emcl_lr: float = option(0.3, "emcl: meta learning rate α₀")
    emcl_inner_lr: float = option(0.15, "emcl: inner learning rate β")
    emcl_lambda: float = option(10.0, "emcl: strength λ of the proximal pull towards θ₀")
    emcl_gamma: float = option(0.3, "emcl: proximal step γ")
    emcl_eta: float = option(0.999, "emcl: moving-average rate η of the importance h (ours: the paper gives none)")
    emcl_r: float = option(1.0, "emcl: r of the meta learning rates α₀ r / ĥ")
    emcl_pgd: bool = option(True, "emcl ablation: a plain gradient step on the regularized inner loss", flag="emcl-no-pgd")
    emcl_reg: bool = option(True, "emcl ablation: no inner pull towards θ₀, the inner rate modulated by importance instead", flag="emcl-no-reg")
    emcl_importance: str = option("taylor", "emcl: importance |g ⊙ θ₀| (taylor) or |g ⊙ Δθ₀| (si, the EMCL-SI ablation)", choices=("taylor", "si"))
    emcl_replay: str = option("inner", "emcl: replay in each inner step (inner), as inner steps (samples), only in Ω and meta-loss (meta), or none", choices=("inner", "samples", "meta", "none"))
    emcl_meta_rate: str = option("inverse", "emcl: α = α₀r/ĥ (inverse), compounded α^j = (r/ĥ^j)α^{j-1} (compound), or α₀ min(1, r/ĥ) (bounded, ours)", choices=("inverse", "compound", "bounded"))
    emcl_scale: str = option("mean", "emcl: importance as ĥ = h / mean(h) (mean) or raw h (raw)", choices=("mean", "raw"))
    emcl_gradient_step: str = option("beta", "emcl: the inner gradient step's rate, β (Alg. 1 line 6) or γ (eq. 16)", choices=("beta", "gamma"))
    emcl_meta_grad: str = option("closed-form", "emcl: meta-gradient λĥ(θ₀ − θ_k) (closed-form, eq. 10) or ∇L(θ_k) on the batch (lookahead, ours)", choices=("closed-form", "lookahead"))

    def check(self):
        check_non_negative(self, "memory_strength", "lamaml_alpha", "lamaml_lr", "emcl_lambda", "emcl_gamma")
        check_positive(self, "lamaml_clip", "emcl_lr", "emcl_inner_lr", "emcl_r")
        check_range(self, "emcl_eta", 0, 1)
        for f in dataclasses.fields(OnlineOptions):
            if choices := f.metadata["argparse"].get("choices"):
                check_choice(self, f.name, choices)


@dataclass(kw_only=True)
class LearnerOptions(StrategyOptions, OnlineOptions):
    """Everything a learner reads: the strategy options plus the run's optimizer, rate, batch size and seed.
    A command's config that has these attributes serves as well (learners only read them)."""

    optimizer: str = "adam"
    lr: float | None = None
    batch_size: int = 512
    seed: int = 0

    def check(self):
        check_positive_int(self, "batch_size")
        check_seed(self, "seed")
        if self.lr is not None:
            check_positive(self, "lr")


class Learner:
    """Learns tasks one after another through the hooks of the module docstring. Subclasses override hooks."""

    name: ClassVar[str]
    updates_per_step: int = 1  # optimizer steps per training step (mer: one per piece)

    def __init__(self, tasks: list, opts: LearnerOptions, model: Callable[[], nn.Module], likelihood: str, loss: Callable[[Tensor, Tensor], Tensor] | None = None,
                 layout: Layout | None = None):  # fmt: skip
        """``model()`` builds the network (after seeding torch with ``opts.seed``); ``likelihood``
        names the loss's likelihood (``mse``, ``bce``, ``ce``: EWC's Fisher); ``loss`` defaults to it;
        ``layout`` (a field's signal) says how samples observe the model (radiance: rays rendered through it)."""
        self.tasks, self.opts, self.likelihood, self.layout = tasks, opts, likelihood, layout
        self.loss_of = loss or LOSSES[likelihood]
        torch.manual_seed(opts.seed)
        self.model = model()
        self.optimizer: torch.optim.Optimizer | None = None

    @classmethod
    def for_signal(cls, signal: Signal, tasks: list[Task], config: FieldConfig, opts: LearnerOptions, init: dict[str, Tensor] | None = None) -> Learner:
        """The learner of a field with ``config`` fitted to ``signal``'s task stream, from a random
        initialization or from ``init`` (a meta-learned θ₀, a state dict of ``Field(config)``)."""
        learner = cls(tasks, opts, lambda: Field(config), signal.layout.loss, layout=signal.layout)
        if init is not None:
            learner.model.load_state_dict(init)
        return learner

    # ---- hooks ---------------------------------------------------------------------------------
    def new_optimizer(self) -> torch.optim.Optimizer:
        return build_optimizer(self.opts.optimizer, self.model, self.opts.lr, seed=self.opts.seed)

    def before_task(self, task: Task) -> None:
        if self.optimizer is None:
            self.optimizer = self.new_optimizer()

    def batches(self, task: Task) -> Callable[[int], Batch]:
        """Epochs of the task's samples in a seeded order; each batch for ``glances`` consecutive steps."""
        sampler, g = EpochSampler(task.coords, task.values, self.opts.batch_size, task_seed(self.opts.seed, task.index)), self.opts.glances
        return sampler if g == 1 else lambda step: sampler((step - 1) // g + 1)

    def field_at(self, x: Tensor) -> Tensor:
        """The model on its own inputs (a field's points; Modular routes them to their modules)."""
        return self.model(x)

    def forward(self, x: Tensor) -> Tensor:
        """The model's prediction of samples ``x`` (radiance: the colours of rays, rendered through :meth:`field_at`)."""
        return self.field_at(x) if self.layout is None else self.layout.observe(self.field_at, x)

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        return self.loss_of(self.forward(x), y)

    def update(self) -> None:
        """One step from the gradients in ``p.grad``; strategies wrap it."""
        self.optimizer.step()

    def after_task(self, task: Task) -> None:
        pass

    # ---- use and state -------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, coords: Tensor) -> Tensor:
        return predict_in_chunks(self.forward, coords, 65536 if self.layout is None else self.layout.chunk)

    def extra_state(self) -> dict:
        """The learner's own stateful parts (``name → object with state_dict/load_state_dict``)."""
        return {}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
                **{k: v.state_dict() for k, v in self.extra_state().items()}}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if state["optimizer"] is not None:
            self.optimizer = self.new_optimizer()
            self.optimizer.load_state_dict(state["optimizer"])
        for k, v in self.extra_state().items():
            v.load_state_dict(state[k])


class Functional:
    """Mixin of the meta-learners (La-MAML, EMCL): the loss as a function of the parameters, and seeded sample orders."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generator = torch.Generator().manual_seed(self.opts.seed)

    def loss_at(self, params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return self.loss_of(functional_call(self.model, (params, dict(self.model.named_buffers())), (x,)), y)

    def shuffled(self, n: int) -> Tensor:
        """A random order of ``n`` samples (the inner pass's)."""
        return torch.randperm(n, generator=self.generator)

    def extra_state(self) -> dict:
        return {**super().extra_state(), "generator": GeneratorState(self.generator)}


class GeneratorState:
    """A torch.Generator as a ``state_dict`` holder."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def state_dict(self) -> dict:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["state"])
