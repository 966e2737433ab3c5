"""Losses of field fitting. Written out rather than via F.mse_loss: torch 2.13's ``jvp(grad(f))``
fails on ``F.mse_loss`` with mean reduction ("ZeroTensors are immutable")."""

from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor

Loss = Callable[[Tensor, Tensor], Tensor]


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over all samples and channels."""
    return (pred - target).square().mean()


def bce_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy of logits against labels in {0, 1} (occupancy)."""
    return F.binary_cross_entropy_with_logits(logits, labels)


LOSSES: dict[str, Loss] = {"mse": mse, "bce": bce_logits}
