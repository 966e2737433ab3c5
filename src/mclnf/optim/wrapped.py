"""An optimizer that wraps another: the param groups, state and state dict are the inner one's."""

from __future__ import annotations

from torch import Tensor
from torch.optim import Optimizer


class Wrapped(Optimizer):
    """Base of optimizers that act around ``optimizer.step()`` (Reptile's interpolation, GEM's
    gradient projection). Subclasses override :meth:`step` and add their own state to
    :meth:`state_dict` under keys other than ``inner``."""

    def __init__(self, optimizer: Optimizer):  # not Optimizer.__init__: the param groups are the inner one's
        self.optimizer = optimizer

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def defaults(self):
        return self.optimizer.defaults

    @property
    def state(self):
        return self.optimizer.state

    def needs_create_graph(self) -> bool:
        return bool(getattr(self.optimizer, "needs_create_graph", lambda: False)())

    def params(self) -> list[Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        return self.optimizer.step(closure)

    def state_dict(self) -> dict:
        return {"inner": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["inner"])
