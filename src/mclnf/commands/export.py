"""``mclnf export RUN --mesh``: the surface of a fit run's field as a triangle mesh (.ply), by marching cubes.

* **Scenes** (radiance fields): the density σ of the field on a ``--resolution``³ grid spanning the run's scene
  box (``center ± bound``, world coordinates), the level set σ = ``--threshold`` extracted by
  ``skimage.measure.marching_cubes`` (Lorensen & Cline 1987, Lewiner et al. 2003's topology-resolving variant).
  The field's density takes a view direction as input (as the field of every kind here, one MLP on position and
  direction); the grid's σ is the mean over the 6 axis directions (±x, ±y, ±z). Default threshold: instant-ngp's
  marching-cubes default, σ = 2.5 per unit of its unit cube (which spans its ``aabb_scale`` 1 scene box), here per
  side of the run's box: 2.5 / (2·bound) world units⁻¹ (0.92 for lego's 1.365). Each vertex is coloured with the
  field's colour there, seen along the surface's inward normal (as a camera looking at it). Forward-facing
  (NDC) scenes are refused: their field lives in normalized device coordinates, not in a box (fit them with
  ``--no-ndc``). nerfstudio's own ``ns-export`` meshes density fields by Poisson reconstruction of rendered
  depth points instead; marching cubes of density is instant-ngp's (and NeRF's own ``extract_mesh``).
* **Meshes** (occupancy fields): the occupancy sigmoid(logit) on the grid over the field's [-1, 1]³ cube, level
  ``--threshold`` (default 0.5, logit 0: what ``mclnf fit``'s reconstruction.ply is at the same resolution),
  in the mesh's own coordinates.

The grid is padded by one layer far on the empty side of the threshold, so the mesh is closed (on the box's faces, to
a thousandth of a grid step) where the surface meets the box. A field whose values do not cross the threshold on the grid is an error that says their range. The mesh
is written with ``trimesh`` (binary PLY) to ``--out`` (default ``RUN/mesh.ply``), atomically.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from skimage.measure import marching_cubes
from torch import Tensor

from mclnf.config import DeviceOptions
from mclnf.errors import MclnfError
from mclnf.io import atomic_path
from mclnf.options import check_positive_int, option
from mclnf.resources import check_fits
from mclnf.runs import load_field
from mclnf.signals import Layout

DEFAULT_RESOLUTION = 128
NGP_THRESHOLD = 2.5  # instant-ngp's marching-cubes density threshold, per unit of its unit cube
AXES = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
CHUNK = 2**16  # grid points per field evaluation


@dataclass(kw_only=True)
class ExportConfig(DeviceOptions):
    """export"""

    run: Path = option(dataclasses.MISSING, "a fit run folder (or its field.safetensors) of a scene (radiance) or mesh (occupancy) field", positional=True)
    mesh: bool = option(False, "export the field's surface as a triangle mesh (.ply) by marching cubes", action="store_true")
    resolution: int | None = option(None, f"marching-cubes grid points per axis (default: {DEFAULT_RESOLUTION}; meshes: the run's)", metavar="N")
    threshold: float | None = option(None, "the surface's level: scenes a density σ in world units⁻¹, meshes an occupancy in (0, 1) "
                                     "(default: scenes 2.5 / (2·scene bound), instant-ngp's; meshes 0.5)", metavar="σ")  # fmt: skip
    out: Path | None = option(None, "output .ply file (default: RUN/mesh.ply)")

    def check(self):
        check_positive_int(self, "resolution")
        if self.resolution is not None and self.resolution < 2:
            raise MclnfError(f"--resolution {self.resolution}: the marching-cubes grid needs at least 2 points per axis")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise MclnfError(f"--threshold {self.threshold}: must be a finite number")
        if self.out is not None and self.out.suffix.lower() != ".ply":
            raise MclnfError(f"--out {self.out}: meshes are written as .ply, not {self.out.suffix or '(no suffix)'}")
        if self.out is not None and not self.out.parent.is_dir():
            raise MclnfError(f"--out {self.out}: no such folder {self.out.parent}")


# ---- the grid and its surface -------------------------------------------------------------------------
def grid_points(center, bound: float, n: int) -> Tensor:
    """The n³ points (n³, 3) of a regular grid over the cube ``center ± bound``, index order (i, j, k) ↔ (x, y, z)."""
    axis = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
    unit = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    return (unit * bound + torch.as_tensor(center, dtype=torch.float64)).float()


def surface(values: np.ndarray, level: float, center, bound: float, what: str) -> trimesh.Trimesh:
    """The level set ``level`` of ``values`` (n, n, n) sampled on :func:`grid_points`' grid (larger values inside), as a mesh in
    those coordinates, faces wound so their normals point out. The grid is padded by one layer far below the level, which closes
    the surface (almost exactly) on the box's faces where it meets them. ``what`` names the values in errors."""
    n = values.shape[0]
    if not np.isfinite(values).all():
        raise MclnfError(f"the field's {what} contains NaN or infinite values; cannot extract a surface")
    lo, hi = float(values.min()), float(values.max())
    if not lo < level < hi:
        raise MclnfError(f"--threshold: the field's {what} lies in [{lo:.4g}, {hi:.4g}] on the {n}³ grid and never crosses {level:.4g}; "
                         "no surface there (choose a threshold inside that range)")  # fmt: skip
    step = 2.0 * bound / (n - 1)
    padded = np.pad(values, 1, constant_values=level - 1e3 * (hi - lo + abs(level)))
    verts, faces, _, _ = marching_cubes(padded, level=level, spacing=(step,) * 3, gradient_direction="ascent")  # with (i, j, k) ↔ (x, y, z): outward normals
    verts = verts - (bound + step) + np.asarray(center, dtype=np.float64)  # padded index 0 lies one step outside the box
    return trimesh.Trimesh(verts, faces, process=False)


def radiance_density(field: Callable[[Tensor], Tensor], layout: Layout, points: Tensor) -> Tensor:
    """σ at world ``points`` (N, 3): the mean over the 6 axis view directions of softplus(the field's first output)."""
    total = torch.zeros(len(points), dtype=torch.float64)
    with torch.no_grad():
        for d in AXES:
            for s in range(0, len(points), CHUNK):
                p = points[s : s + CHUNK]
                inputs = layout.field_inputs(p, d.expand_as(p))
                total[s : s + CHUNK] += F.softplus(field(inputs)[:, 0]).double().cpu()
    return total / len(AXES)


def radiance_colors(field: Callable[[Tensor], Tensor], layout: Layout, mesh: trimesh.Trimesh) -> np.ndarray:
    """RGBA uint8 per vertex: the field's colour at the vertex seen along the inward normal."""
    points = torch.tensor(np.asarray(mesh.vertices), dtype=torch.float32)
    view = -torch.tensor(np.asarray(mesh.vertex_normals), dtype=torch.float32)
    rgb = torch.zeros(len(points), 3)
    with torch.no_grad():
        for s in range(0, len(points), CHUNK):
            rgb[s : s + CHUNK] = torch.sigmoid(field(layout.field_inputs(points[s : s + CHUNK], view[s : s + CHUNK]))[:, 1:4]).float().cpu()
    alpha = torch.ones(len(points), 1)
    return (torch.cat([rgb, alpha], 1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def radiance_mesh(field: Callable[[Tensor], Tensor], layout: Layout, resolution: int, threshold: float | None = None) -> trimesh.Trimesh:
    """The surface σ = ``threshold`` (default: :func:`default_threshold`) of a radiance field over its scene box, coloured (module docstring)."""
    if layout.ndc:
        raise MclnfError("export --mesh: this scene was fitted in normalized device coordinates (a forward-facing LLFF scene), which has no scene box "
                         "to mesh; fit it with --no-ndc")  # fmt: skip
    level = default_threshold(layout) if threshold is None else threshold
    if level <= 0:
        raise MclnfError(f"--threshold {threshold}: a density threshold must be positive")
    n = resolution
    sigma = radiance_density(field, layout, grid_points(layout.center, layout.bound, n)).reshape(n, n, n).numpy()
    mesh = surface(sigma, level, layout.center, layout.bound, "density σ")
    mesh.visual.vertex_colors = radiance_colors(field, layout, mesh)
    return mesh


def default_threshold(layout: Layout) -> float:
    """instant-ngp's density threshold 2.5 per unit of its unit cube, here per side of the scene box: 2.5 / (2·bound)."""
    return NGP_THRESHOLD / (2 * layout.bound)


def occupancy_mesh(field: Callable[[Tensor], Tensor], layout: Layout, resolution: int, threshold: float = 0.5) -> trimesh.Trimesh:
    """The surface occupancy = ``threshold`` of an occupancy field (sigmoid of its logit), in the mesh's coordinates."""
    if not 0 < threshold < 1:
        raise MclnfError(f"--threshold {threshold}: an occupancy threshold must lie in (0, 1)")
    n = resolution
    points = grid_points((0.0, 0.0, 0.0), 1.0, n)
    with torch.no_grad():
        logits = torch.cat([field(points[s : s + CHUNK])[:, 0].double().cpu() for s in range(0, len(points), CHUNK)])
    occupancy = torch.sigmoid(logits).reshape(n, n, n).numpy()
    mesh = surface(occupancy, threshold, (0.0, 0.0, 0.0), 1.0, "occupancy")
    return trimesh.Trimesh(layout.denormalize(mesh.vertices), mesh.faces, process=False)


# ---- the command ------------------------------------------------------------------------------------------
def export(cfg: ExportConfig) -> tuple[Path, trimesh.Trimesh]:
    """Write the mesh ``cfg`` asks for; returns its path and the mesh."""
    if not cfg.mesh:
        raise MclnfError("export: say what to export: --mesh (the field's surface as a .ply; the only export so far)")
    path = Path(cfg.run)
    if path.is_dir() and not (path / "field.safetensors").is_file():
        raise MclnfError(f"{path}: no field.safetensors; export reads fit runs (mclnf fit) of a scene or a mesh")
    field, layout = load_field(path)
    if layout.kind not in ("radiance", "occupancy"):
        raise MclnfError(f"export --mesh: {path} holds a field of {layout.kind} signals; only scene (radiance) and mesh (occupancy) fields have a surface")
    n = cfg.resolution or (layout.resolution if layout.kind == "occupancy" else DEFAULT_RESOLUTION)
    check_fits(n**3 * (8 + 4 * 3 + 8) * 2, f"--resolution {n}: a {n}³ grid")
    out = cfg.out or (path if path.is_dir() else path.parent) / "mesh.ply"
    device = torch.device(cfg.device)
    field.to(device).eval()
    predict = lambda x: field(x.to(device))  # noqa: E731
    if layout.kind == "radiance":
        mesh = radiance_mesh(predict, layout, n, cfg.threshold)
    else:
        mesh = occupancy_mesh(predict, layout, n, 0.5 if cfg.threshold is None else cfg.threshold)
    with atomic_path(out) as tmp:
        mesh.export(tmp, file_type="ply")
    return out, mesh


def summary(out: Path, mesh: trimesh.Trimesh) -> str:
    """What ``mclnf export`` prints."""
    return f"{out}: {len(mesh.vertices):,} vertices, {len(mesh.faces):,} faces\n"
