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


class Sine(nn.Module):
    def __init__(self, omega0: float):
        super().__init__()
        self.omega0 = omega0

    def forward(self, z: Tensor) -> Tensor:
        return torch.sin(self.omega0 * z)

    def of_linear(self, h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """``self(F.linear(h, weight, bias))`` with ω₀ folded into the (small) parameters rather than
        scaling every pre-activation: sin((ω₀W) h + ω₀b), one elementwise pass fewer each way."""
        return torch.sin(F.linear(h, self.omega0 * weight, self.omega0 * bias))

    def extra_repr(self) -> str:
        return f"omega0={self.omega0}"


class Gaussian(nn.Module):
    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = sigma

    def forward(self, z: Tensor) -> Tensor:
        return torch.exp(-0.5 / self.sigma**2 * z.square())

    def of_linear(self, h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """``self(F.linear(h, weight, bias))`` as exp(−u²), u = c(Wh + b), c = 1/(σ√2) folded into the parameters."""
        c = math.sqrt(0.5) / self.sigma
        return torch.exp(-F.linear(h, c * weight, c * bias).square())

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


class RealGabor(nn.Module):
    """WIRE's real Gabor wavelet: a cosine under a Gaussian window of the same pre-activation."""

    def __init__(self, omega0: float, s0: float):
        super().__init__()
        self.omega0, self.s0 = omega0, s0

    def forward(self, z: Tensor) -> Tensor:
        return torch.cos(self.omega0 * z) * torch.exp(-((self.s0 * z).square()))

    def of_linear(self, h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """``self(F.linear(h, weight, bias))`` with ω₀ folded into the parameters: u = ω₀z,
        cos(u)·exp(−(s₀/ω₀)²u²), two elementwise passes fewer each way."""
        u = F.linear(h, self.omega0 * weight, self.omega0 * bias)
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
