"""Activations of coordinate networks, each with the weight initialization its paper prescribes.

=========  ===========================================  ==========================================
name       activation of a pre-activation z              initialization
=========  ===========================================  ==========================================
sine       sin(ω₀ z), ω₀ = 30 (SIREN, Sitzmann 2020)     first W ~ U(±1/n), others U(±√(6/n)/ω₀)
gaussian   exp(−z² / 2σ²), σ = 0.05 (Ramasinghe 2022)    torch's nn.Linear default, U(±1/√n)
wavelet    cos(ω₀ z)·exp(−(s₀ z)²), ω₀ = s₀ = 10 (WIRE)   nn.Linear default
relu       max(z, 0)                                     nn.Linear default
relu-pe    relu after a positional encoding (NeRF)       nn.Linear default
=========  ===========================================  ==========================================

n is a layer's fan-in. Biases keep nn.Linear's default U(±1/√n) everywhere, as the reference code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = ("sine", "gaussian", "wavelet", "relu", "relu-pe")


class FoldedActivation(nn.Module):
    """An activation σ(z) = g(c·z) whose constant c can be folded into the (small) layer parameters:
    σ(Wh + b) = g((cW)h + cb), saving elementwise passes over every pre-activation each way
    (``Field`` and ``ModularField`` use :meth:`of_linear` / :attr:`scale` + :meth:`folded`)."""

    scale: float  # c

    def folded(self, u: Tensor) -> Tensor:
        """g(u), the activation of an already scaled pre-activation u = c·z."""
        raise NotImplementedError

    def forward(self, z: Tensor) -> Tensor:
        return self.folded(self.scale * z)

    def of_linear(self, h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """``self(F.linear(h, weight, bias))`` with c folded into the parameters."""
        return self.folded(F.linear(h, self.scale * weight, self.scale * bias))


class Sine(FoldedActivation):
    """sin(ω₀z): c = ω₀, g = sin."""

    def __init__(self, omega0: float):
        super().__init__()
        self.omega0 = self.scale = omega0

    def folded(self, u: Tensor) -> Tensor:
        return torch.sin(u)

    def extra_repr(self) -> str:
        return f"omega0={self.omega0}"


class Gaussian(FoldedActivation):
    """exp(−z²/2σ²): c = 1/(σ√2), g(u) = exp(−u²)."""

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma, self.scale = sigma, math.sqrt(0.5) / sigma

    def folded(self, u: Tensor) -> Tensor:
        return torch.exp(-u.square())

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


class RealGabor(FoldedActivation):
    """WIRE's real Gabor wavelet cos(ω₀z)·exp(−(s₀z)²): c = ω₀, g(u) = cos(u)·exp(−(s₀/ω₀)²u²)."""

    def __init__(self, omega0: float, s0: float):
        super().__init__()
        self.omega0, self.s0, self.scale = omega0, s0, omega0

    def folded(self, u: Tensor) -> Tensor:
        return torch.cos(u) * torch.exp(-((self.s0 / self.omega0) ** 2) * u.square())

    def extra_repr(self) -> str:
        return f"omega0={self.omega0}, s0={self.s0}"


def siren_init_(layer: nn.Linear, omega0: float, first: bool) -> None:
    """SIREN (Sitzmann et al. 2020, Sec. 3.2): W ~ U(−1/n, 1/n) for the first layer, else U(−√(6/n)/ω₀, √(6/n)/ω₀).

    With it ω₀·Wx is ≈ N(0, 1) for arcsine-distributed inputs, so every sine layer sees the same statistics.
    """
    n = layer.in_features
    bound = 1.0 / n if first else math.sqrt(6.0 / n) / omega0
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound)
