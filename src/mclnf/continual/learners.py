"""Continual learners of fields, one interface: each learns a stream of tasks through the one loop.

A :class:`Learner` owns a model and an optimizer and is driven task by task by :meth:`Learner.learn`:
``before_task`` → :func:`mclnf.train.train` over ``batches(task)`` with ``loss`` → ``after_task``.
The learners differ only in these hooks:

* ``ol`` — offline: one run on the whole signal (the task only says how far it goes); upper reference.
* ``cl`` — naive fine-tuning of one field on each task in turn.
* ``er`` — experience replay: each batch adds ``replay_batch`` samples drawn from a reservoir buffer
  of ``buffer_size`` samples of the past tasks (Chaudhry et al., 2019).
* ``ewc`` — elastic weight consolidation: after each task its diagonal Fisher and solution; the loss
  adds (λ/2) Σ_t F_t (θ − θ*_t)² (Kirkpatrick et al., 2017; :mod:`mclnf.continual.fisher`).
* ``mer`` — meta-experience replay: each step's replay-mixed batch is split into ``mer_steps``
  pieces learned one after another, then Reptile within and across batches (Riemer et al., 2019;
  :class:`mclnf.optim.reptile.Reptile`). Pieces of samples stand in for MER's single examples.
* ``modular`` — a :class:`~mclnf.fields.modular.ModularField`: coordinates are routed to the module of
  their region; a module is added (from one shared initialization) when a task first needs it, and
  only the modules of the current task receive gradients. No replay.

Single-field learners keep their optimizer's state across tasks (one continuing run); ``modular``
starts a fresh optimizer per task, which leaves every module the task does not touch bit-exact.
"""

from __future__ import annotations

import dataclasses
import math
from time import perf_counter
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from mclnf.continual.fisher import EWCPenalty, diagonal_fisher
from mclnf.continual.replay import ReservoirBuffer
from mclnf.errors import MclnfError
from mclnf.fields import Field, FieldConfig
from mclnf.fields.modular import ModularField
from mclnf.losses import LOSSES
from mclnf.optim import build_optimizer
from mclnf.optim.reptile import Reptile
from mclnf.signals import Layout, Signal, predict_in_chunks
from mclnf.signals.tasks import Task, default_split, route, split_signal
from mclnf.train import Batch, EpochSampler, train


@dataclass
class LearnerOptions:
    """Options of every learner; each learner reads the ones it needs (defaults are the CLI's)."""

    optimizer: str = "adam"
    lr: float | None = None
    batch_size: int = 512
    seed: int = 0
    buffer_size: int = 4096  # er, mer: samples kept from past tasks
    replay_batch: int | None = None  # er, mer: replayed samples per step (default: batch_size)
    ewc_lambda: float = 100.0  # ewc: λ (best final PSNR of {1, 10, 100, 10³, 10⁴} on CelebA 000002, 200 steps per task)
    fisher_samples: int = 2048  # ewc: samples of a task its Fisher is averaged over
    mer_steps: int = 4  # mer: pieces per batch (k inner steps)
    mer_beta: float = 0.5  # mer: within-batch Reptile step β
    mer_batches: int = 1  # mer: batches per across-batch Reptile step
    mer_gamma: float = 1.0  # mer: across-batch Reptile step γ (MER's published runs: 1)
    glances: int = 1  # steps each batch is used for (online classification: La-MAML's glances)
    modules: int | None = None  # modular: K (default: one per task)
    module_width: int | None = None  # modular: width of each module (default: width / √K)

    def __post_init__(self):  # every option checked before a run touches its output folder
        for name in ("buffer_size", "replay_batch", "fisher_samples", "mer_steps", "mer_batches", "glances", "modules", "module_width"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise MclnfError(f"--{name.replace('_', '-')} {value}: must be a positive integer")
        if not 0 <= self.ewc_lambda < math.inf:
            raise MclnfError(f"--ewc-lambda {self.ewc_lambda}: must be a non-negative finite number")
        for name in ("mer_beta", "mer_gamma"):
            if not 0 < getattr(self, name) <= 1:
                raise MclnfError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be in (0, 1]")


def task_seed(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def permutation(n: int, seed: int, *keys: int) -> Tensor:
    """A random order of ``n`` items fixed by ``(seed, *keys)``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(task_seed(seed, *keys)))


class Learner:
    """Learns tasks one after another (module docstring). Subclasses override the hooks."""

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
    def for_signal(cls, signal: Signal, tasks: list[Task], config: FieldConfig, opts: LearnerOptions) -> Learner:
        """The learner of a field with ``config`` fitted to ``signal``'s task stream."""
        return cls(tasks, opts, lambda: Field(config), signal.layout.loss, layout=signal.layout)

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

    def after_task(self, task: Task) -> None:
        pass

    # ---- driving -------------------------------------------------------------------------------
    def learn(self, task: Task, steps: int, progress: bool = True) -> dict[str, float]:
        """Learn ``task`` for ``steps`` training steps; returns the seconds spent training and after it."""
        self.before_task(task)
        desc = f"{self.name} task {task.index + 1}/{len(self.tasks)}"
        total = steps * self.updates_per_step
        seconds = train(self.optimizer, self.loss, self.batches(task), total, eval_steps=(total,), progress=progress, desc=desc)  # checks the parameters at the end
        t0 = perf_counter()
        self.after_task(task)
        return {"train_s": seconds, "after_task_s": perf_counter() - t0}

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


class Offline(Learner):
    """``ol``: the whole signal at once, for as many steps in all as the stream has."""

    name = "ol"

    @classmethod
    def for_signal(cls, signal: Signal, tasks: list[Task], config: FieldConfig, opts: LearnerOptions) -> Learner:
        learner = super().for_signal(signal, tasks, config, opts)
        learner.signal = signal
        return learner

    def learn(self, task: Task, steps: int, progress: bool = True) -> dict[str, float]:
        self.before_task(task)
        sampler = EpochSampler(self.signal.coords, self.signal.values, self.opts.batch_size, task_seed(self.opts.seed))
        start = task.index * steps  # one continuing run: steps start … start + steps of it
        seconds = train(self.optimizer, self.loss, sampler, start + steps, start_step=start, eval_steps=(start + steps,), progress=progress, desc=f"ol {task.index + 1}/{len(self.tasks)}")
        return {"train_s": seconds, "after_task_s": 0.0}


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
        self.updates_per_step = self.opts.mer_steps

    def new_optimizer(self) -> torch.optim.Optimizer:
        o = self.opts
        return Reptile(super().new_optimizer(), o.mer_steps, o.mer_beta, o.mer_batches, o.mer_gamma)

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


class Modular(Learner):
    """``modular``: one module per region (K regions of the task split; K = T: module i is task i's).

    Points are routed by where they lie (radiance: every sample along a ray goes to the module of its
    block, and the rendering composites across modules). Only the modules of the current task's
    regions learn: the others' gradients are masked to zero, so with a fresh optimizer they stay
    bit-exact even when the task's samples reach them (radiance rays cross other blocks). Regions no
    task has reached yet answer with the shared initialization (radiance: empty space)."""

    name = "modular"

    def __init__(self, signal: Signal, tasks: list[Task], config: FieldConfig, opts: LearnerOptions):
        k = opts.modules or len(tasks)
        self.regions = tasks if k == len(tasks) else split_signal(signal, split_of(tasks), k)
        self.config = dataclasses.replace(config, width=opts.module_width or max(1, round(config.width / math.sqrt(k))))
        super().__init__(tasks, opts, self.build_model, signal.layout.loss, layout=signal.layout)
        self.hooks: list = []

    @classmethod
    def for_signal(cls, signal: Signal, tasks: list[Task], config: FieldConfig, opts: LearnerOptions) -> Learner:
        return cls(signal, tasks, config, opts)

    def build_model(self) -> nn.Module:
        self.init = Field(self.config)  # the shared initialization of every module
        return ModularField(self.config, 1, init=self.init)

    def before_task(self, task: Task) -> None:
        current = route(self.layout.locate(task.coords), self.regions).unique()
        while self.model.num_modules <= int(current.max()):
            self.model.add_module(self.init)
        learns = torch.zeros(self.model.num_modules, dtype=self.init.layers[0].weight.dtype)
        learns[current] = 1
        for h in self.hooks:
            h.remove()
        self.hooks = [p.register_hook(lambda g, m=learns.to(p.device).reshape(-1, *[1] * (p.dim() - 1)): g * m) for p in self.model.parameters()]
        self.optimizer = self.new_optimizer()  # fresh: the modules that do not learn stay bit-exact

    def routed(self, x: Tensor, idx: Tensor) -> Tensor:
        return modules_or_init(self.model, self.model.num_modules, self.init, self.layout.blank, x, idx)

    def field_at(self, x: Tensor) -> Tensor:
        return self.routed(x, route(x[:, : len(self.regions[0].region)], self.regions))

    def forward(self, x: Tensor) -> Tensor:
        if self.regions[0].cameras is None:
            return super().forward(x)
        idx = route(self.layout.locate(x), self.regions)  # views split: a ray is rendered whole by its nearest camera's module
        return self.layout.observe(lambda points: self.routed(points, idx.repeat_interleave(len(points) // len(x))), x)

    def load_state_dict(self, state: dict) -> None:
        while self.model.num_modules < state["model"]["layers.0.weight"].shape[0]:
            self.model.add_module(self.init)
        super().load_state_dict(state)


def modules_or_init(model: ModularField, count: int, init: nn.Module, blank: tuple[float, ...] | None, x: Tensor, idx: Tensor) -> Tensor:
    """Module ``idx[n]`` of ``model`` on ``x[n]`` where ``idx[n] < count``; elsewhere (no module there yet)
    the shared initialization ``init``, or the constant output ``blank`` (radiance: empty space)."""
    if int(idx.max()) < count:
        return model(x, idx)
    out = init(x) if blank is None else x.new_tensor(blank).repeat(len(x), 1)
    have = (idx < count).nonzero()[:, 0]
    return out.index_put((have,), model(x[have], idx[have])) if len(have) else out


def split_of(tasks: list[Task]) -> str:
    """The split that made ``tasks`` (for cutting the same domain into K module regions)."""
    if tasks[0].lattice is not None:
        return "resolution"
    if tasks[0].cameras is not None:
        return "views"
    return "space" if tasks[0].kind == "radiance" else default_split(tasks[0].kind)


LEARNERS: dict[str, type[Learner]] = {c.name: c for c in (Offline, FineTune, Replay, EWC, MER, Modular)}


def build_learner(name: str, signal: Signal, tasks: list[Task], config: FieldConfig, opts: LearnerOptions) -> Learner:
    if name not in LEARNERS:
        raise MclnfError(f"--learner {name}: unknown; choose one of {', '.join(LEARNERS)} or all")
    return LEARNERS[name].for_signal(signal, tasks, config, opts)
