"""The modular learner: one module per region, every module from one shared initialization.

This is MCL-NF's learner (Woo et al., Algorithm 1) with a random initialization (``modular``) or a
meta-learned θ₀ (``mcl-nf`` at test time) — one class. Points are routed to the module of the region
they lie in (a :class:`~mclnf.fields.modular.ModularField` evaluates all modules in one batched pass;
radiance: every sample along a ray goes to the module of its block and the rendering composites
across modules, or with the ``views`` split a ray is rendered whole by its nearest camera's module).
A module is added, as a copy of the initialization, when a task first reaches its region; regions
no task has reached answer with the initialization (radiance: empty space).

Only the current task's modules learn, each task with a fresh optimizer:

* a task that lies in one region trains that module alone, as a standalone :class:`Field` (the
  cost of one field's step; MCL-NF's FIM loss needs this form), written back after the task;
* a task reaching several regions (scenes split in space: rays cross blocks) trains the whole modular
  field with the other modules' gradients masked to zero, so they stay bit-exact.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from mclnf.errors import MclnfError
from mclnf.fields import Field, FieldConfig
from mclnf.fields.modular import ModularField
from mclnf.learners.base import Learner, LearnerOptions
from mclnf.losses import fim_loss
from mclnf.optim import build_optimizer
from mclnf.signals import Signal
from mclnf.signals.tasks import Task, default_split, route, split_signal


class Modular(Learner):
    """``modular`` (and ``mcl-nf``): K modules of K regions of the task split (K = T: module i is task i's)."""

    name = "modular"

    def __init__(self, signal: Signal, tasks: list[Task], config: FieldConfig, opts: LearnerOptions, init: dict[str, Tensor] | None = None):
        k = opts.modules or len(tasks)
        self.regions = tasks if k == len(tasks) else split_signal(signal, split_of(tasks), k)
        self.config = dataclasses.replace(config, width=opts.module_width or max(1, round(config.width / math.sqrt(k))))
        self.init_state = init
        super().__init__(tasks, opts, self.build_model, signal.layout.loss, layout=signal.layout)
        self.hooks: list = []
        self.alone: tuple[int, Field] | None = None  # (module, its standalone copy) while a one-region task trains
        self.fisher_sums: list[Tensor] | None = None
        self.points_routed = not (signal.kind == "radiance" and self.regions[0].cameras is None)  # else samples along rays cross regions

    @classmethod
    def for_signal(cls, signal: Signal, tasks: list[Task], config: FieldConfig, opts: LearnerOptions, init: dict[str, Tensor] | None = None) -> Learner:
        return cls(signal, tasks, config, opts, init)

    def build_model(self) -> nn.Module:
        self.init = Field(self.config)  # the shared initialization of every module
        if self.init_state is not None:
            self.init.load_state_dict(self.init_state)
        return ModularField(self.config, 1, init=self.init)

    def before_task(self, task: Task) -> None:
        current = route(self.layout.locate(task.coords), self.regions).unique()
        while self.model.num_modules <= int(current.max()):
            self.model.add_module(self.init)
        for h in self.hooks:
            h.remove()
        self.hooks = []
        self.fisher_sums = None  # a new task's Fisher starts afresh
        if len(current) == 1 and self.points_routed:
            k = int(current[0])
            self.alone = (k, self.model.module(k))
            self.optimizer = build_optimizer(self.opts.optimizer, self.alone[1], self.opts.lr, seed=self.opts.seed)
            return
        if self.opts.fim_lambda is not None:
            raise MclnfError(f"--fim-lambda: the FIM loss trains one module at a time, but task {task.index + 1} reaches {len(current)} module regions")
        learns = torch.zeros(self.model.num_modules, dtype=self.init.layers[0].weight.dtype)
        learns[current] = 1
        self.hooks = [p.register_hook(lambda g, m=learns.to(p.device).reshape(-1, *[1] * (p.dim() - 1)): g * m) for p in self.model.parameters()]
        self.optimizer = self.new_optimizer()  # fresh: the modules that do not learn stay bit-exact

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        if self.alone is None:
            return super().loss(x, y)
        field, o = self.alone[1], self.opts
        if o.fim_lambda is not None:
            loss, sums = fim_loss(field, x, y, o.fim_lambda, self.likelihood, o.fisher, observe=self.layout.observe, form=o.fim_form, prior=self.fisher_sums,
                                  with_sums=True)  # fmt: skip
            self.fisher_sums = sums if o.fim_form == "paper" else None  # the paper's form: the task's Fisher, accumulated over its steps
            return loss
        return self.loss_of(self.layout.observe(field, x), y)

    def after_task(self, task: Task) -> None:
        if self.alone is not None:
            self.model.set_module(*self.alone)
            self.alone = None

    def routed(self, x: Tensor, idx: Tensor) -> Tensor:
        return modules_or_init(self.model, self.model.num_modules, self.init, self.layout.blank, x, idx)

    def field_at(self, x: Tensor) -> Tensor:
        return self.routed(x, route(x[:, : len(self.regions[0].region)], self.regions))

    def forward(self, x: Tensor) -> Tensor:
        if self.regions[0].cameras is None:
            return super().forward(x)
        idx = route(self.layout.locate(x), self.regions)  # views split: a ray is rendered whole by its nearest camera's module
        return self.layout.observe(lambda points: self.routed(points, idx.repeat_interleave(len(points) // len(x))), x)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "optimizer": None}  # every task starts a fresh optimizer

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
