"""Online continual classifiers: the continual learners of fields plus GEM, A-GEM, La-MAML and EMCL.

Every learner is a :class:`mclnf.continual.learners.Learner` driven through the one training loop:
a task's samples arrive once, in batches of ``batch_size``, each batch used for ``glances``
consecutive steps. Targets are (label, task) pairs, so a replayed sample keeps its task's head
(multi-head streams mask the logits of other tasks' classes; :func:`head_loss`).

* ``sgd`` — online SGD (the fields' ``cl``); ``er``, ``ewc``, ``mer`` — the fields' learners. The
  replay memory is a reservoir of ``buffer_size`` samples of the *past* tasks (filled at the end of
  each task, in stream order: the same content an online reservoir has, with replay drawn from the
  memory as of the task's start — La-MAML's ``use_old_task_memory``, without its alias bug).
* ``gem`` / ``agem`` — episodic memory of ``buffer_size // T`` samples per task; each step's gradient
  is projected against the past tasks' memory gradients (:mod:`mclnf.optim.projection`). A-GEM's
  reference is the gradient of all past memories together (task 0's included).
* ``lamaml`` — La-MAML: per incoming sample one inner SGD step with learnable per-parameter rates α
  (inner gradients clamped to ±``clip``), the meta-loss on the incoming batch plus replay after every
  inner step, averaged; then :class:`~mclnf.optim.meta.LookAheadSGD`. First-order unless
  ``lamaml_second_order``.
* ``emcl`` — EMCL (Zou & Lin, Algorithm 1): importance h ← η h + (1 − η) Ω, Ω = |∂L/∂θ₀ ⊙ θ₀| (eq. 13,
  7), L the loss of the incoming batch plus replay at θ₀, ĥ = h / mean(h) (our scaling: the paper's is
  not given); an inner pass over the incoming samples, each step on one sample with the replayed ones,
  θ̂ = θ − β∇ℓ then θ ← (θ̂ + γλĥθ₀)/(γλĥ + 1) (eq. 21); the meta-gradient in closed form λĥ(θ₀ − θ_k)
  (eq. 10) and the meta step θ₀ ← θ₀ − (α₀ r / ĥ) ⊙ that gradient (eq. 8,
  :class:`~mclnf.optim.meta.ImportanceSGD`). The proximal steps' fixed point minimizes
  L + (λγ/2β) Σ ĥ(θ − θ₀)², so the closed form is the exact meta-gradient when γ = β (tested) and β/γ
  times it otherwise (Table II's settings). Ablations (Table IV): ``emcl_pgd=False`` — a plain
  gradient step on the regularized loss, θ ← θ − β(∇ℓ + λĥ(θ − θ₀)); ``emcl_reg=False`` — no pull
  towards θ₀, the inner rate modulated instead, θ ← θ − β∇ℓ / (1 + γλĥ); ``emcl_importance="si"`` —
  Ω = |∂L/∂θ₀ ⊙ Δθ₀|, Δθ₀ the last meta step (SI's path term).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from mclnf.continual.learners import EWC, MER, FineTune, Learner, LearnerOptions, Replay, permutation
from mclnf.errors import MclnfError
from mclnf.optim.meta import ImportanceSGD, LookAheadSGD
from mclnf.optim.projection import GradientProjection


@dataclass
class OnlineOptions(LearnerOptions):
    """:class:`LearnerOptions` plus the options of the online classifiers (defaults: MNIST permutations)."""

    memory_strength: float = 0.5  # gem: the QP's margin on the dual variables
    lamaml_alpha: float = 0.15  # lamaml: initial per-parameter learning rate α
    lamaml_lr: float = 0.3  # lamaml: learning rate of α
    lamaml_second_order: bool = False  # lamaml: through the inner steps (the released MNIST script: first-order)
    clip: float = 2.0  # lamaml: inner gradient clamp and meta-gradient norm clip
    emcl_lr: float = 0.3  # emcl: α₀, the meta learning rate
    emcl_inner_lr: float = 0.15  # emcl: β
    emcl_lambda: float = 10.0  # emcl: λ
    emcl_gamma: float = 0.3  # emcl: γ, the proximal step
    emcl_eta: float = 0.9  # emcl: η, the importance's moving-average rate
    emcl_r: float = 1.0  # emcl: r of the meta learning rates α₀ r / ĥ
    emcl_pgd: bool = True  # emcl: proximal inner step (False: plain gradient on the regularized loss)
    emcl_reg: bool = True  # emcl: pull towards θ₀ in the inner loop (False: rate modulation instead)
    emcl_importance: str = "taylor"  # emcl: Ω = |g ⊙ θ₀| (taylor) or |g ⊙ Δθ₀| (si)

    def __post_init__(self):
        super().__post_init__()
        for name in ("memory_strength", "lamaml_alpha", "lamaml_lr", "emcl_lambda", "emcl_gamma"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise MclnfError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be a non-negative finite number")
        for name in ("clip", "emcl_lr", "emcl_inner_lr", "emcl_r"):
            if not 0 < getattr(self, name) < float("inf"):
                raise MclnfError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be a positive finite number")
        if not 0 <= self.emcl_eta < 1:
            raise MclnfError(f"--emcl-eta {self.emcl_eta}: must be in [0, 1)")
        if self.emcl_importance not in ("taylor", "si"):
            raise MclnfError(f"--emcl-importance {self.emcl_importance}: choose taylor or si")


def head_loss(heads: Tensor | None) -> Callable[[Tensor, Tensor], Tensor]:
    """Cross-entropy of logits (N, C) against targets (N, 2) = (label, task); with ``heads`` (T, C)
    each sample's logits outside its task's classes are masked out."""

    def loss(logits: Tensor, y: Tensor) -> Tensor:
        if heads is not None:
            logits = logits.masked_fill(~heads.to(logits.device)[y[:, 1]], float("-inf"))
        return F.cross_entropy(logits, y[:, 0])

    return loss


class Memory:
    """Per-task episodic memories (GEM's): ``(x, y)`` of each finished task."""

    def __init__(self):
        self.tasks: list[tuple[Tensor, Tensor]] = []

    def state_dict(self) -> dict:
        return {"tasks": self.tasks}

    def load_state_dict(self, state: dict) -> None:
        self.tasks = state["tasks"]


class GEM(Learner):
    """``gem``: each step's gradient projected so that no past task's memory loss increases."""

    name = "gem"
    rule = "gem"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.memory = Memory()
        self.per_task = max(1, self.opts.buffer_size // len(self.tasks))

    def new_optimizer(self) -> torch.optim.Optimizer:
        return GradientProjection(super().new_optimizer(), self.references, self.rule, self.opts.memory_strength)

    def memory_gradient(self, x: Tensor, y: Tensor) -> Tensor:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(self.loss(x, y), params)])

    def references(self) -> Tensor | None:
        if not self.memory.tasks:
            return None
        if self.rule == "agem":
            return self.memory_gradient(torch.cat([x for x, _ in self.memory.tasks]), torch.cat([y for _, y in self.memory.tasks]))[None]
        sizes = {len(x) for x, _ in self.memory.tasks}
        if len(sizes) > 1 or any(True for _ in self.model.buffers()):  # ragged memories, batch norm: one task at a time
            return torch.stack([self.memory_gradient(x, y) for x, y in self.memory.tasks])
        params = {k: p.detach() for k, p in self.model.named_parameters()}
        per_task = vmap(grad(lambda p, x, y: self.loss_of(functional_call(self.model, p, (x,)), y)), in_dims=(None, 0, 0))
        grads = per_task(params, torch.stack([x for x, _ in self.memory.tasks]), torch.stack([y for _, y in self.memory.tasks]))
        return torch.cat([g.reshape(len(self.memory.tasks), -1) for g in grads.values()], 1)

    def after_task(self, task) -> None:
        pick = permutation(len(task), self.opts.seed, task.index, 4)[: self.per_task]
        self.memory.tasks.append((task.coords[pick], task.values[pick]))

    def extra_state(self) -> dict:
        return {"memory": self.memory}


class AGEM(GEM):
    """``agem``: GEM with one constraint, the average gradient of all past memories."""

    name = "agem"
    rule = "agem"


class Functional:
    """Mixin of the meta-learners: the loss as a function of the parameters, and seeded sample orders."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generator = torch.Generator().manual_seed(self.opts.seed)

    def loss_at(self, params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return self.loss_of(functional_call(self.model, (params, dict(self.model.named_buffers())), (x,)), y)

    def shuffled(self, n: int) -> Tensor:
        """A random order of ``n`` samples (the inner pass's)."""
        return torch.randperm(n, generator=self.generator)


class LaMAML(Functional, Replay):
    """``lamaml``: look-ahead MAML with learnable per-parameter learning rates and replay."""

    name = "lamaml"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lrs = nn.ParameterList([nn.Parameter(torch.full_like(p, self.opts.lamaml_alpha)) for p in self.model.parameters()])

    def new_optimizer(self) -> torch.optim.Optimizer:
        return LookAheadSGD(self.model.parameters(), self.lrs.parameters(), lr=self.opts.lamaml_lr, max_norm=self.opts.clip)

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """The meta-loss: mean over the inner steps of the loss of the whole batch (incoming + replay)
        at the fast weights; the incoming samples (the first ``batch_size`` rows) are the inner steps."""
        o, fast = self.opts, dict(self.model.named_parameters())
        rates = [a.clamp_min(0) for a in self.lrs]
        order = self.shuffled(min(o.batch_size, len(x)))
        meta = x.new_zeros(())
        for i in order.tolist():
            grads = torch.autograd.grad(self.loss_at(fast, x[i : i + 1], y[i : i + 1]), list(fast.values()), create_graph=o.lamaml_second_order)
            fast = {k: w - g.clamp(-o.clip, o.clip) * a for (k, w), g, a in zip(fast.items(), grads, rates)}
            meta = meta + self.loss_at(fast, x, y)
        return meta / len(order)

    def extra_state(self) -> dict:
        return {**super().extra_state(), "lrs": self.lrs}


class Importance:
    """EMCL's importance: h ← η h + (1 − η) Ω, per parameter; :meth:`normalized` is ĥ = h / mean(h)."""

    def __init__(self, eta: float):
        self.eta, self.h = eta, None

    def update(self, omega: list[Tensor]) -> None:
        self.h = omega if self.h is None else [self.eta * h + (1 - self.eta) * w for h, w in zip(self.h, omega)]

    def normalized(self) -> list[Tensor]:
        mean = sum(h.sum() for h in self.h) / sum(h.numel() for h in self.h)
        return [h / mean if mean > 0 else torch.ones_like(h) for h in self.h]

    def state_dict(self) -> dict:
        return {"eta": self.eta, "h": self.h}

    def load_state_dict(self, state: dict) -> None:
        self.eta, self.h = state["eta"], state["h"]


def emcl_inner_step(theta0: Tensor, h: Tensor, beta: float, lam: float, gamma: float, pgd: bool = True, reg: bool = True) -> Callable[[Tensor, Tensor], Tensor]:
    """EMCL's inner step (θ, ∇ℓ(θ)) ↦ θ' for one parameter with anchor θ₀ and importance ĥ — proximal,
    plain or rate-modulated (module docstring); its constants are computed once per inner pass."""
    c = gamma * lam * h
    if not reg:
        rate = beta / (1 + c)
        return lambda theta, grad: theta - rate * grad
    if not pgd:
        pull = lam * h
        return lambda theta, grad: theta - beta * (grad + pull * (theta - theta0))
    inv = 1 / (1 + c)
    anchor = c * theta0 * inv
    return lambda theta, grad: torch.addcmul(anchor, theta - beta * grad, inv)  # (θ − β∇ℓ + cθ₀)/(1 + c)


class EMCL(Functional, Replay):
    """``emcl``: proximal inner loop towards θ₀, closed-form meta-gradient, importance-scaled meta rates."""

    name = "emcl"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.importance = Importance(self.opts.emcl_eta)
        self.last_step: list[Tensor] | None = None

    def new_optimizer(self) -> torch.optim.Optimizer:
        return ImportanceSGD(self.model.parameters(), lr=self.opts.emcl_lr, r=self.opts.emcl_r)

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """L(θ₀) of the batch, with the gradient λĥ(θ₀ − θ_k) (a surrogate: value and gradient are EMCL's)."""
        o = self.opts
        names, theta0 = zip(*self.model.named_parameters())
        base = self.loss_at(dict(zip(names, theta0)), x, y)
        grads = torch.autograd.grad(base, theta0)
        with torch.no_grad():
            ref = theta0 if o.emcl_importance == "taylor" or self.last_step is None else self.last_step
            self.importance.update([(g * r).abs() for g, r in zip(grads, ref)])
            h = self.importance.normalized()
            steps = [emcl_inner_step(t0.detach(), hi, o.emcl_inner_lr, o.emcl_lambda, o.emcl_gamma, o.emcl_pgd, o.emcl_reg) for t0, hi in zip(theta0, h)]
        fast, n = [t.detach() for t in theta0], min(o.batch_size, len(x))
        replayed = torch.arange(n, len(x))
        for i in self.shuffled(n).tolist():  # incoming sample i with the replayed rows
            fast = [t.requires_grad_() for t in fast]
            rows = torch.cat([torch.tensor([i]), replayed])
            g = torch.autograd.grad(self.loss_at(dict(zip(names, fast)), x[rows], y[rows]), fast)
            with torch.no_grad():
                fast = [step(t, gi) for step, t, gi in zip(steps, fast, g)]
        with torch.no_grad():
            meta = [o.emcl_lambda * hi * (t0 - t) for hi, t0, t in zip(h, theta0, fast)]
            for p, hi in zip(theta0, h):
                self.optimizer.state[p]["importance"] = hi
            self.last_step = [o.emcl_lr * o.emcl_r * m / hi.clamp_min(1e-12) for m, hi in zip(meta, h)]  # the step about to be taken
        return base.detach() + sum((m * (t0 - t0.detach())).sum() for m, t0 in zip(meta, theta0))

    def extra_state(self) -> dict:
        return {**super().extra_state(), "importance": self.importance}


ONLINE_LEARNERS: dict[str, type[Learner]] = {"sgd": FineTune, "er": Replay, "ewc": EWC, "gem": GEM, "agem": AGEM, "mer": MER, "lamaml": LaMAML, "emcl": EMCL}
