r"""Multiresolution hash encoding (Müller, Evans, Schied, Keller: "Instant Neural Graphics Primitives with a
Multiresolution Hash Encoding", SIGGRAPH 2022, §3), in plain PyTorch: it runs on CPU and under ``torch.func``.

L levels; level l has resolution

.. math:: N_l = \lfloor N_{\min} \, b^l \rfloor, \qquad l = 0, \dots, L-1

(b the growth factor; up to float rounding: 1e-9 is added before the floor, so that a growth computed as
(N_max/N_min)^{1/(L−1)} reaches N_max exactly) and a table of T_l feature vectors of F entries. A point
x ∈ [−1, 1]^d (clamped) is mapped to u = (x + 1)/2 ∈ [0, 1]^d and scaled, x_l = u N_l; its cell's 2^d
corner vertices v ∈ {⌊x_l⌋ + c : c ∈ {0, 1}^d} ⊂ {0, …, N_l}^d index the table by

* the dense, one-to-one index Σ_i v_i (N_l + 1)^i when the level's grid fits, (N_l + 1)^d ≤ T
  (then T_l = (N_l + 1)^d entries), as instant-ngp does;
* the spatial hash h(v) = (⊕_i v_i π_i) mod T otherwise (T_l = T), π = (1, 2654435761, 805459861),
  ⊕ bitwise XOR (the products taken in int64, whose low 32 bits are instant-ngp's uint32 arithmetic).

The level's feature is the d-linear interpolation of its corner features (linear in 1-D, bilinear in 2-D,
trilinear in 3-D),

.. math:: f_l(x) = \sum_{c \in \{0,1\}^d} \Big( \prod_i w_i^{c_i} (1 - w_i)^{1 - c_i} \Big) \, \theta_l[\mathrm{idx}_l(\lfloor x_l \rfloor + c)],
   \qquad w = x_l - \lfloor x_l \rfloor,

and the encoding is the concatenation [f_0(x), …, f_{L−1}(x)] (L·F numbers; level-major), followed by
the input's remaining coordinates unchanged: only the first min(d_in, 3) coordinates are hashed (a
radiance field's position; its view direction passes through to the MLP head). On the upper face
(x_l = N_l) the cell is the last one with w = 1, so vertices are interpolated exactly.

All levels live in one Parameter ``table`` of shape (F, Σ_l T_l) (level l at columns offset_l …;
feature-major, so that each feature's gather reads one contiguous row), so one gather per feature serves
every level and every corner at once — no Python loop over levels — and the table is an
ordinary ``nn.Parameter``: ``functional_call``, ``vmap`` over stacked tables, ``grad``, ``jvp`` and
double back-propagation (second-order MAML) apply as to any weight. A table with a leading module axis
(K, F, Σ_l T_l) evaluates K modules' encodings in one gather (:meth:`HashGridEncoding.forward` with
``x`` of shape (K, M, d), or (A, M, d) and ``select``), as :class:`~mclnf.fields.modular.ModularField` does.

Tables start uniform in [−10⁻⁴, 10⁻⁴] (the paper's initialization). instant-ngp's CUDA version
(tiny-cuda-nn) rounds a dense level's size up to a multiple of 8 for alignment; here a level has exactly
the entries it can index.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mclnf.errors import MclnfError

PRIMES = (1, 2654435761, 805459861)  # instant-ngp's π_i (π_1 = 1 for coherence along the first axis)
MAX_GRID_DIM = len(PRIMES)
INIT_SCALE = 1e-4  # tables start uniform in [-1e-4, 1e-4] (the paper, §4)


def grid_dim(in_dim: int) -> int:
    """How many leading input coordinates the grid encodes: min(in_dim, 3)."""
    return min(in_dim, MAX_GRID_DIM)


def level_resolutions(levels: int, base_resolution: int, growth: float) -> list[int]:
    """N_l = ⌊N_min b^l⌋ for l = 0 … L−1 (1e-9 absorbs float rounding: with b = 128^{1/15}, 16·b¹⁵ is 2047.9999999999984, not 2048)."""
    return [math.floor(base_resolution * growth**level + 1e-9) for level in range(levels)]


def level_sizes(dim: int, levels: int, log2_table_size: int, base_resolution: int, growth: float) -> tuple[list[int], list[int], list[bool]]:
    """(N_l, T_l, hashed_l) of every level: T_l = (N_l + 1)^d when that fits in T = 2^log2_table_size (dense), else T (hashed)."""
    table = 2**log2_table_size
    res = level_resolutions(levels, base_resolution, growth)
    hashed = [(n + 1) ** dim > table for n in res]
    return res, [table if h else (n + 1) ** dim for n, h in zip(res, hashed)], hashed


def table_entries(in_dim: int, levels: int, log2_table_size: int, base_resolution: int, growth: float) -> int:
    """Σ_l T_l: the rows of the table (parameters = rows × features), in closed form per level."""
    return sum(level_sizes(grid_dim(in_dim), levels, log2_table_size, base_resolution, growth)[1])


def spatial_hash(vertices: Tensor, log2_table_size: int) -> Tensor:
    """h(v) = (⊕_i v_i π_i) mod 2^log2_table_size of integer vertices (..., d), d ≤ 3."""
    v = vertices.long()
    h = v[..., 0] * PRIMES[0]
    for i in range(1, v.shape[-1]):
        h = torch.bitwise_xor(h, v[..., i] * PRIMES[i])
    return h & (2**log2_table_size - 1)


class HashGridEncoding(nn.Module):
    """The multiresolution hash encoding of the module docstring: (..., in_dim) → (..., L·F + in_dim − min(in_dim, 3)).

    >>> enc = HashGridEncoding(2, levels=4, log2_table_size=8, features=2, base_resolution=4, growth=2.0)
    >>> enc.resolutions, enc.hashed, tuple(enc.table.shape)   # (N_l + 1)² = 25, 81, 289 > 256, 1089 > 256
    ([4, 8, 16, 32], [False, False, True, True], (2, 618))
    >>> enc(torch.zeros(5, 2)).shape
    torch.Size([5, 8])
    """

    def __init__(self, in_dim: int, levels: int = 16, log2_table_size: int = 19, features: int = 2, base_resolution: int = 16, growth: float = 2.0):
        super().__init__()
        for name, value, low in (("in_dim", in_dim, 1), ("levels", levels, 1), ("log2_table_size", log2_table_size, 1), ("features", features, 1), ("base_resolution", base_resolution, 1)):
            if not isinstance(value, int) or value < low:
                raise MclnfError(f"hash grid {name} {value}: must be an integer ≥ {low}")
        if log2_table_size > 32:
            raise MclnfError(f"hash grid log2 table size {log2_table_size}: at most 32 (the hash is instant-ngp's 32-bit one)")
        if not growth >= 1:
            raise MclnfError(f"hash grid growth {growth}: must be ≥ 1")
        self.in_dim, self.levels, self.log2_table_size, self.features = in_dim, levels, log2_table_size, features
        self.base_resolution, self.growth = base_resolution, float(growth)
        d = self.dim = grid_dim(in_dim)
        self.resolutions, self.sizes, self.hashed = level_sizes(d, levels, log2_table_size, base_resolution, growth)
        res = torch.tensor(self.resolutions)
        self.register_buffer("scale", res.double(), persistent=False)  # N_l (cast to the input's dtype)
        self.register_buffer("cell_max", res - 1, persistent=False)  # the last cell's lower corner
        self.register_buffer("strides", (res[:, None] + 1) ** torch.arange(d), persistent=False)  # (N_l + 1)^i
        self.dense_levels = k = self.hashed.count(False)  # a prefix: resolutions never decrease
        corners = torch.tensor([[(c >> i) & 1 for i in range(d)] for c in range(2**d)])  # (2^d, d), c = Σ_i c_i 2^i
        self.register_buffer("corner_strides", corners @ self.strides[:k].T, persistent=False)  # (2^d, dense levels): Σ_i c_i (N_l + 1)^i
        self.register_buffer("offsets", torch.tensor([0, *self.sizes[:-1]]).cumsum(0), persistent=False)
        self.table = nn.Parameter(torch.empty(features, sum(self.sizes)).uniform_(-INIT_SCALE, INIT_SCALE))

    @property
    def out_dim(self) -> int:
        return self.levels * self.features + self.in_dim - self.dim

    def index(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Table columns (2^d, ..., L) of every level's corner vertices of ``x`` (..., in_dim), and their
        d-linear weights (2^d, ..., L) (differentiable in ``x``); corner c = Σ_i c_i 2^i comes first.

        Each corner is an elementwise sum (dense), XOR (hashed) or product (weights) of per-axis terms of
        shape (..., L), so there is no Python loop over levels and every operation is on contiguous
        blocks. Dense levels are the coarsest ones (resolutions grow with l); hashed levels the rest."""
        d, k = self.dim, self.dense_levels
        u = ((x[..., :d] + 1) / 2).clamp(0, 1)
        pos = u[..., None, :] * self.scale.to(u.dtype)[:, None]  # x_l: (..., L, d)
        cell = torch.minimum(pos.detach().floor().long(), self.cell_max[:, None])  # ⌊x_l⌋, the last cell on the upper face
        w = pos - cell.to(pos.dtype)  # (..., L, d) in [0, 1]
        weights = [1 - w[..., 0], w[..., 0]]
        for i in range(1, d):  # Π_i w_i^{c_i} (1 − w_i)^{1 − c_i}, axis i the high bit
            weights = [p * (1 - w[..., i]) for p in weights] + [p * w[..., i] for p in weights]
        parts = []
        if k:  # dense: Σ_i v_i (N_l + 1)^i + offset_l = base + Σ_i c_i (N_l + 1)^i
            base = (cell[..., :k, :] * self.strides[:k]).sum(-1) + self.offsets[:k]
            parts.append(base + self.corner_strides[:, *[None] * (base.dim() - 1), :])
        if k < self.levels:  # hashed: (⊕_i v_i π_i) mod T + offset_l
            h = [cell[..., k:, 0] * PRIMES[0]]
            h.append(h[0] + PRIMES[0])
            for i in range(1, d):
                a = cell[..., k:, i] * PRIMES[i]
                b = a + PRIMES[i]
                h = [g ^ a for g in h] + [g ^ b for g in h]
            parts.append((torch.stack(h) & (2**self.log2_table_size - 1)) + self.offsets[k:])
        rows = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return rows, torch.stack(weights)

    def forward(self, x: Tensor, select: Tensor | None = None) -> Tensor:
        """The encoding of ``x`` (..., in_dim). With a stacked table (K, F, Σ T_l): ``x`` is (A, M, in_dim)
        and batch a uses module ``select[a]`` (default: A = K, module a)."""
        rows, weights = self.index(x)
        table = self.table
        if table.dim() == 3:  # modules side by side: one gather in the (F, K·Σ T_l) table
            k, f, n = table.shape
            module = torch.arange(k, device=x.device) if select is None else select
            if x.dim() != 3 or module.shape[0] != x.shape[0]:
                raise MclnfError(f"a stacked hash grid of {k} modules takes (modules, points, {self.in_dim}) inputs, not {tuple(x.shape)}")
            rows = rows + (module * n)[:, None, None]
            table = table.transpose(0, 1).reshape(f, k * n)
        feats = table.index_select(1, rows.flatten()).view(table.shape[0], *rows.shape)  # (F, 2^d, ..., L): one gather per feature row
        out = (feats * weights).sum(1).movedim(0, -1).flatten(-2)  # (..., L·F), level-major
        return torch.cat([out, x[..., self.dim :]], dim=-1) if self.in_dim > self.dim else out

    def extra_repr(self) -> str:
        return (f"in_dim={self.in_dim}, levels={self.levels}, log2_table_size={self.log2_table_size}, features={self.features}, "
                f"base_resolution={self.base_resolution}, growth={self.growth:g}, resolutions={self.resolutions[0]}…{self.resolutions[-1]}, "
                f"hashed_levels={sum(self.hashed)}")  # fmt: skip
