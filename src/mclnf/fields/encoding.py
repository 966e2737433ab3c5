"""Positional encoding γ(x) = [x, sin(2ᵏπx), cos(2ᵏπx)]ₖ₌₀..L₋₁ (Mildenhall et al. 2020), as the preconditioner paper's ReLU+PE."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionalEncoding(nn.Module):
    def __init__(self, in_dim: int, frequencies: int):
        super().__init__()
        self.in_dim, self.frequencies = in_dim, frequencies
        self.register_buffer("freqs", (2.0 ** torch.arange(frequencies)) * math.pi, persistent=False)

    @property
    def out_dim(self) -> int:
        return self.in_dim * (1 + 2 * self.frequencies)

    def forward(self, x: Tensor) -> Tensor:
        spectrum = x[..., None] * self.freqs  # (..., d, L)
        enc = torch.stack([spectrum.sin(), spectrum.cos()], dim=-2)  # (..., d, 2, L)
        return torch.cat([x, enc.flatten(-3)], dim=-1)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, frequencies={self.frequencies}"
