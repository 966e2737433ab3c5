"""Seeded orders: permutations fixed by a key, and the epoch sampler of every training loop.

A resumed run draws exactly the batches of an uninterrupted one because every order here depends on
``(seed, *keys)`` alone, never on a generator's history.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

Batch = tuple[Tensor, Tensor]


def task_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed derived from ``(seed, *keys)`` (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def permutation(n: int, seed: int, *keys: int) -> Tensor:
    """A random order of ``n`` items fixed by ``(seed, *keys)``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(task_seed(seed, *keys)))


class EpochSampler:
    """Mini-batches that visit every sample once per epoch (the last partial batch is dropped), in an
    order fixed by ``(seed, epoch)`` alone, so a resumed run draws exactly the batches of an
    uninterrupted one. With ``batch_size`` ≥ the number of samples every step is the full batch."""

    def __init__(self, coords: Tensor, values: Tensor, batch_size: int, seed: int):
        self.coords, self.values, self.batch_size, self.seed = coords, values, batch_size, seed
        self.per_epoch = max(1, len(coords) // batch_size)
        self._epoch, self._perm = -1, None

    def __call__(self, step: int) -> Batch:
        """The batch of training step ``step`` (1-based)."""
        if self.batch_size >= len(self.coords):
            return self.coords, self.values
        epoch, i = divmod(step - 1, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, permutation(len(self.coords), self.seed, epoch)
        idx = self._perm[i * self.batch_size : (i + 1) * self.batch_size]
        return self.coords[idx], self.values[idx]
