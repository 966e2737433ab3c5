"""A fixed-size replay memory filled by reservoir sampling (shared by every replay learner)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mclnf.errors import MclnfError


class ReservoirBuffer:
    """At most ``capacity`` samples ``(x, y)``, a uniform random subset of all samples ever added.

    Algorithm R (Vitter 1985): the ``t``-th sample seen (0-based) is stored at slot ``t`` while the
    buffer is not full, afterwards at slot ``j ~ U{0, …, t}`` if ``j < capacity`` (else dropped).
    :meth:`add` is vectorized and equal to adding the samples one by one in order. Draws come from
    the buffer's own generator, seeded by ``seed``, so a run is reproducible.
    """

    def __init__(self, capacity: int, seed: int = 0):
        if not isinstance(capacity, int) or capacity < 1:
            raise MclnfError(f"--buffer-size {capacity}: must be a positive integer")
        self.capacity, self.seen = capacity, 0
        self.x: Tensor | None = None
        self.y: Tensor | None = None
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    def add(self, x: Tensor, y: Tensor) -> None:
        """Offer the samples ``x[i], y[i]`` in order of ``i``."""
        if len(x) != len(y):
            raise MclnfError(f"replay: {len(x)} inputs but {len(y)} targets")
        if self.x is None:
            self.x = x.new_empty(self.capacity, *x.shape[1:])
            self.y = y.new_empty(self.capacity, *y.shape[1:])
        t = self.seen + np.arange(len(x))
        slot = np.where(t < self.capacity, t, self.rng.integers(0, t + 1))  # j ~ U{0..t}
        keep = np.flatnonzero(slot < self.capacity)
        # a slot drawn twice keeps the later sample, as sequential insertion would
        last = len(keep) - 1 - np.unique(slot[keep][::-1], return_index=True)[1]
        src, dst = torch.from_numpy(keep[last]), torch.from_numpy(slot[keep][last])
        self.x[dst] = x[src.to(x.device)]
        self.y[dst] = y[src.to(y.device)]
        self.seen += len(x)

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """``n`` stored samples drawn uniformly with replacement."""
        if len(self) == 0:
            raise MclnfError("replay: the buffer is empty")
        idx = torch.from_numpy(self.rng.integers(0, len(self), n))
        return self.x[idx.to(self.x.device)], self.y[idx.to(self.y.device)]

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "seen": self.seen, "x": self.x, "y": self.y, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.capacity, self.seen, self.x, self.y = state["capacity"], state["seen"], state["x"], state["y"]
        self.rng.bit_generator.state = state["rng"]
