r"""Empty-space skipping for radiance fields: an occupancy grid over the field's input cube (nerfacc's
``OccGridEstimator``, Li, Tancik, Kanazawa: "NerfAcc: Efficient Sampling Accelerates NeRFs", ICCV 2023;
instant-ngp's density grid, Müller et al. 2022, §5.4).

The cube [−1, 1]³ of the field's position input (the scene box, or NDC space) is cut into R³ cells. Each
cell keeps a running density estimate ρ_c, and a sample of a ray is evaluated by the field only when its
cell is occupied; the other samples get the layout's ``blank`` output (σ ≈ 1e−13), so they add nothing to
the composite and take no gradient. Points outside the cube are always evaluated.

Every ``every`` training steps (:meth:`OccupancyGrid.step`) the estimate is refreshed as nerfacc does:

.. math:: \rho_c \leftarrow \max(\text{decay} \cdot \rho_c,\ \sigma(x_c) \, \delta), \qquad
          \text{occupied}_c = \rho_c > \min(\tau,\ \overline{\rho}),

with x_c a uniform point of the cell seen along a random direction (the field's density may depend on
the direction input), δ the mean spacing of a ray's samples (box: 2·bound/S world units; NDC: 1/S) so that
σδ is a sample's opacity to first order, τ = 0.01 and ρ̄ the mean over cells. During the first ``warmup``
steps every cell is refreshed; afterwards a random quarter of all cells and as many of the occupied ones
(nerfacc's schedule: decay 0.95, every 16 steps, warm-up 256). All cells start occupied.

It speeds up training and rendering in proportion to the share of samples in empty cells (lego: most of
the box is air) at the cost of the refreshes (R³/4 field evaluations every ``every`` steps). It is a plain
mask in front of the field, so it serves a single field (``mclnf fit``); a learner's vmapped or modular
fields keep every sample. :meth:`state_dict` holds the estimate, the step count and the generator, so a
resumed run continues exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mclnf.errors import MclnfError
from mclnf.signals.base import Predict
from mclnf.signals.radiance import RadianceLayout

THRESHOLD = 0.01  # τ: a sample's opacity σδ below which a cell is empty (nerfacc's occ_thre)
DECAY = 0.95
EVERY = 16
WARMUP = 256
CHUNK = 2**15


def check_resolution(resolution: int) -> None:
    """A grid resolution R must be an integer in [2, 512] (512³ cells: half a gigabyte of estimates)."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or not 2 <= resolution <= 512:
        raise MclnfError(f"--occupancy-grid {resolution}: the grid's resolution must be between 2 and 512")


class OccupancyGrid:
    """An R³ occupancy grid of a radiance layout's field inputs (module docstring)."""

    def __init__(self, layout: RadianceLayout, resolution: int = 64, *, every: int = EVERY, warmup: int = WARMUP, seed: int = 0):
        if not isinstance(layout, RadianceLayout):
            raise MclnfError("--occupancy-grid: applies to radiance fields (scenes) only")
        check_resolution(resolution)
        self.layout, self.resolution, self.every, self.warmup = layout, resolution, every, warmup
        self.spacing = (layout.far - layout.near) / layout.samples if layout.ndc else 2 * layout.bound / layout.samples
        self.density = torch.zeros(resolution**3)
        self.occupied = torch.ones(resolution**3, dtype=torch.bool)
        self.steps = 0
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def fraction(self) -> float:
        """The share of cells occupied."""
        return float(self.occupied.float().mean())

    def cells(self, x: Tensor) -> Tensor:
        """Cell index of positions ``x`` (P, 3) in [−1, 1]³, x the fastest axis; −1 outside the cube."""
        r = self.resolution
        ijk = ((x + 1) * (r / 2)).floor().long()
        inside = ((ijk >= 0) & (ijk < r)).all(-1)
        idx = ijk[:, 0] + r * (ijk[:, 1] + r * ijk[:, 2])
        return torch.where(inside, idx, -1)

    def keep(self, x: Tensor) -> Tensor:
        """Which positions (P, 3) the field must evaluate: those in occupied cells and those outside the cube."""
        idx = self.cells(x)
        occupied = self.occupied.to(x.device)
        return (idx < 0) | occupied[idx.clamp_min(0)]

    def skip(self, field: Predict) -> Predict:
        """``field`` evaluated only at the inputs (P, in_dim) whose position lies in an occupied cell; the layout's ``blank`` elsewhere."""

        def predict(inputs: Tensor) -> Tensor:
            rows = self.keep(inputs[:, :3]).nonzero().squeeze(1)
            out = inputs.new_tensor(self.layout.blank).expand(len(inputs), -1)
            if len(rows) == len(inputs):
                return field(inputs)
            return out.index_put((rows,), field(inputs[rows])) if len(rows) else out.clone()  # a chunk of empty space: no field call

        return predict

    def step(self, field: Predict) -> None:
        """Count a training step; every ``every``-th, refresh the estimate from ``field``."""
        self.steps += 1
        if self.steps % self.every == 0:
            self.refresh(field)

    @torch.no_grad()
    def refresh(self, field: Predict) -> None:
        """ρ ← max(decay·ρ, σδ) at a uniform point of each chosen cell (module docstring), then the occupied cells anew."""
        n, g = self.resolution**3, self.generator
        if self.steps < self.warmup:
            cells = torch.arange(n)
        else:
            occupied = self.occupied.nonzero().squeeze(1)
            cells = torch.cat([torch.randint(n, (n // 4,), generator=g), occupied[torch.randint(len(occupied), (n // 4,), generator=g)] if len(occupied) else occupied])
        r = self.resolution
        ijk = torch.stack([cells % r, (cells // r) % r, cells // (r * r)], -1)
        x = (ijk + torch.rand(len(cells), 3, generator=g)) * (2 / r) - 1
        dirs = F.normalize(torch.randn(len(cells), 3, generator=g), dim=-1)
        inputs = torch.cat([x, self.layout.field_inputs(torch.zeros_like(x), dirs)[:, 3:]], -1)
        device = next((t.device for t in getattr(field, "parameters", lambda: iter(()))()), torch.device("cpu"))
        sigma = torch.cat([F.softplus(field(chunk.to(device))[:, 0]).float().cpu() for chunk in inputs.split(CHUNK)])
        self.density *= DECAY
        self.density.scatter_reduce_(0, cells, sigma * self.spacing, "amax")
        self.occupied = self.classify()

    def classify(self) -> Tensor:
        """Occupied cells of the estimate: ρ_c > min(τ, mean ρ)."""
        return self.density > min(THRESHOLD, float(self.density.mean()))

    def state_dict(self) -> dict:
        return {"density": self.density.clone(), "steps": self.steps, "generator": self.generator.get_state(), "resolution": self.resolution}

    def load_state_dict(self, state: dict) -> None:
        if state["resolution"] != self.resolution:
            raise MclnfError(f"--occupancy-grid {self.resolution}: the run's checkpoint has a grid of {state['resolution']}³")
        self.density, self.steps = state["density"].clone(), state["steps"]
        self.generator.set_state(state["generator"])
        self.occupied = self.classify() if self.steps >= self.every else torch.ones_like(self.occupied)  # before the first refresh: all
