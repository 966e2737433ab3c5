"""Optimizers for fields, all behind the torch.optim API, and the one protocol the training loop uses.

The loop asks an optimizer one question before each backward pass: ``needs_create_graph()`` — must
the gradient stay differentiable because the coming ``step()`` takes a Hessian-vector product?
Optimizers without the method (Adam, SGD) never need it. Mixed-precision training asks one more before
the forward pass, :func:`curvature_step` (that, or K-FAC's ``records_curvature()``): such a step runs in float32.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import torch
from torch import nn

from mclnf.errors import MclnfError
from mclnf.optim.adahessian import AdaHessian
from mclnf.optim.esgd import ESGD
from mclnf.optim.kfac import KFAC
from mclnf.optim.shampoo import Shampoo


@runtime_checkable
class CurvatureAware(Protocol):
    def needs_create_graph(self) -> bool:
        """True when the next ``step()`` needs ``backward(create_graph=True)``."""


def needs_create_graph(optimizer: torch.optim.Optimizer) -> bool:
    return isinstance(optimizer, CurvatureAware) and optimizer.needs_create_graph()


@runtime_checkable
class RecordsCurvature(Protocol):
    def records_curvature(self) -> bool:
        """True when the next ``step()`` estimates curvature from the coming forward and backward pass (K-FAC's factors)."""


def curvature_step(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the coming step estimates curvature from its own forward and backward pass — a Hessian-vector
    product (:func:`needs_create_graph`) or recorded Kronecker factors: mixed-precision training runs such a
    step in float32 (:class:`mclnf.runtime.Precision`)."""
    return needs_create_graph(optimizer) or (isinstance(optimizer, RecordsCurvature) and optimizer.records_curvature())


OPTIMIZERS: dict[str, tuple[Callable[[nn.Module, float, int], torch.optim.Optimizer], float]] = {
    # name: (constructor(model, lr, seed), default learning rate); K-FAC needs the model's layers, the
    # rest take model.parameters(); seed seeds the optimizer's own random draws (Rademacher vectors)
    "adam": (lambda model, lr, seed: torch.optim.Adam(model.parameters(), lr=lr, fused=True), 1e-4),  # fused: ≈5 % faster steps at batch 512
    "sgd": (lambda model, lr, seed: torch.optim.SGD(model.parameters(), lr=lr), 1.0),
    # the preconditioner paper's optimizers at its learning rates; seeded Rademacher draws, so a run
    # (and a resumed run: the generator state is in state_dict) is reproducible and seeds differ
    "esgd": (lambda model, lr, seed: ESGD(model.parameters(), lr=lr, bias_correction="reference", seed=seed), 0.15),
    "esgd-corrected": (lambda model, lr, seed: ESGD(model.parameters(), lr=lr, bias_correction="per-update", seed=seed), 0.15),
    # esgd-corrected with its learning rate ramped up over the curvature warm-up (steps 1-50): no first-step shock,
    # no implicit step growth (docs/preconditioners.md: above Adam on 40 of 40 photos for gaussian and wavelet fields at 5000 steps)
    "esgd-robust": (lambda model, lr, seed: ESGD(model.parameters(), lr=lr, bias_correction="per-update", seed=seed, lr_warmup=50), 0.15),
    "adahessian-j": (lambda model, lr, seed: AdaHessian(model.parameters(), lr=lr, estimator="jacobi", seed=seed), 0.15),
    "adahessian-e": (lambda model, lr, seed: AdaHessian(model.parameters(), lr=lr, estimator="equilibrated", seed=seed), 0.15),
    "shampoo": (lambda model, lr, seed: Shampoo(model.parameters(), lr=lr), 0.1),
    # K-FAC-preconditioned SGD: damping 0.01, factors and inverses refreshed every 100 steps
    "kfac": (lambda model, lr, seed: KFAC(model, lr=lr, damping=0.01, update_every=100), 0.1),
}


def default_lr(name: str) -> float:
    return _lookup(name)[1]


def build_optimizer(name: str, model: nn.Module, lr: float | None = None, seed: int = 0) -> torch.optim.Optimizer:
    """An optimizer by name for ``model``'s trainable parameters, at ``lr`` or at its default learning
    rate; ``seed`` seeds its own random draws (the curvature optimizers' Rademacher vectors)."""
    make, lr_default = _lookup(name)
    lr = lr_default if lr is None else lr
    if not (lr > 0 and lr < float("inf")):
        raise MclnfError(f"--lr {lr}: must be a positive finite number")
    return make(model, lr, seed)


def _lookup(name: str):
    if name not in OPTIMIZERS:
        raise MclnfError(f"--optimizer {name}: unknown; choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name]
