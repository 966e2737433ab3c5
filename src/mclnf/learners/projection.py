"""GEM and A-GEM: each step's gradient projected against the gradients of the past tasks' episodic memories.

* GEM (Lopez-Paz & Ranzato, 2017): with G (t × P) the gradients of the t past tasks' episodic
  memories and g the current gradient, if some ⟨G_k, g⟩ < 0 the gradient becomes the closest g̃ with
  G g̃ ≥ 0, through the dual QP  min_v ½ vᵀ(GGᵀ + εI)v + (Gg)ᵀv  s.t. v ≥ margin,  g̃ = Gᵀv + g
  (solved by quadprog, as GEM's code; ``margin`` is GEM's ``memory_strength``).
* A-GEM (Chaudhry et al., 2019): one reference gradient r (of the memories of all past tasks
  together); if ⟨g, r⟩ < 0, g̃ = g − (⟨g, r⟩ / ⟨r, r⟩) r.
"""

from __future__ import annotations

import numpy as np
import quadprog
import torch
from torch import Tensor
from torch.func import functional_call, grad, vmap

from mclnf.learners.base import Learner
from mclnf.sampling import permutation


def gem_project(g: Tensor, G: Tensor, margin: float = 0.5, eps: float = 1e-3) -> Tensor:
    """GEM's projection of the gradient ``g`` (P,) against the past-task gradients ``G`` (t, P)."""
    if bool((G @ g >= 0).all()):
        return g
    Gd, gd = G.double().cpu().numpy(), g.double().cpu().numpy()
    P = Gd @ Gd.T
    P = 0.5 * (P + P.T) + eps * np.eye(len(P))
    v = quadprog.solve_qp(P, -(Gd @ gd), np.eye(len(P)), np.full(len(P), margin))[0]
    return torch.from_numpy(Gd.T @ v + gd).to(g)


def agem_project(g: Tensor, r: Tensor) -> Tensor:
    """A-GEM's projection of ``g`` (P,) against the reference gradient ``r`` (P,)."""
    dot = torch.dot(g, r)
    return g if dot >= 0 else g - (dot / torch.dot(r, r)) * r


class Memory:
    """Per-task episodic memories (GEM's): ``(x, y)`` of each finished task."""

    def __init__(self):
        self.tasks: list[tuple[Tensor, Tensor]] = []

    def state_dict(self) -> dict:
        return {"tasks": self.tasks}

    def load_state_dict(self, state: dict) -> None:
        self.tasks = state["tasks"]


class GEM(Learner):
    """``gem``: each step's gradient projected so that no past task's memory loss increases
    (memories of ``buffer_size // T`` samples per task, GEM's margin ``memory_strength``)."""

    name = "gem"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.memory = Memory()
        self.per_task = max(1, self.opts.buffer_size // len(self.tasks))

    def memory_gradient(self, x: Tensor, y: Tensor) -> Tensor:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(self.loss(x, y), params)])

    def references(self) -> Tensor:
        """The past tasks' memory gradients as rows (t, P), flattened in the order of the model's parameters."""
        sizes = {len(x) for x, _ in self.memory.tasks}
        if len(sizes) > 1 or any(True for _ in self.model.buffers()):  # ragged memories, batch norm: one task at a time
            return torch.stack([self.memory_gradient(x, y) for x, y in self.memory.tasks])
        params = {k: p.detach() for k, p in self.model.named_parameters()}
        per_task = vmap(grad(lambda p, x, y: self.loss_of(functional_call(self.model, p, (x,)), y)), in_dims=(None, 0, 0))
        grads = per_task(params, torch.stack([x for x, _ in self.memory.tasks]), torch.stack([y for _, y in self.memory.tasks]))
        return torch.cat([g.reshape(len(self.memory.tasks), -1) for g in grads.values()], 1)

    def project(self, g: Tensor) -> Tensor:
        return gem_project(g, self.references(), self.opts.memory_strength)

    def update(self) -> None:
        if self.memory.tasks:
            params = [p for p in self.model.parameters() if p.grad is not None]
            g = self.project(torch.cat([p.grad.reshape(-1) for p in params]))
            offset = 0
            for p in params:
                p.grad.copy_(g[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        super().update()

    def after_task(self, task) -> None:
        pick = permutation(len(task), self.opts.seed, task.index, 4)[: self.per_task]
        self.memory.tasks.append((task.coords[pick], task.values[pick]))

    def extra_state(self) -> dict:
        return {"memory": self.memory}


class AGEM(GEM):
    """``agem``: one constraint, the gradient of all past memories together (task 0's included)."""

    name = "agem"

    def project(self, g: Tensor) -> Tensor:
        x, y = (torch.cat([m[i] for m in self.memory.tasks]) for i in (0, 1))
        return agem_project(g, self.memory_gradient(x, y))
