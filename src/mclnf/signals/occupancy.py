"""Occupancy of watertight meshes (OBJ/PLY/STL/OFF) → (x, y, z) ↦ inside (1) or outside (0).

The mesh is normalized into the field's box: field coordinates = (mesh coordinates − center) / scale
with ``center`` the bounding-box centre and ``scale`` = half the longest bounding-box extent / 0.9,
so the mesh's longest side spans [-0.9, 0.9] (a margin of 0.1 in field units on every side, which
keeps the surface inside the marching-cubes grid). The field outputs one logit (> 0: inside).

Samples follow the occupancy setups of SIREN/BACON as used by the preconditioner paper (Chng et al.):
a third uniform in [-1, 1]^3, two thirds near the surface, points sampled uniformly on the surface
(area-weighted) plus Gaussian noise of standard deviation 0.1 (half of them) or 0.01 (the other half)
in field units, clipped to [-1, 1]^3. Labels come from ``trimesh``'s ``contains`` (ray tests,
embree-backed when ``embreex`` is installed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh
from skimage.measure import marching_cubes
from torch import Tensor
from torchmetrics.functional.classification import binary_jaccard_index

from mclnf.errors import MclnfError
from mclnf.signals.base import Layout, Predict, Signal, check_readable, predict_in_chunks

SUFFIXES = (".obj", ".ply", ".stl", ".off")
MARGIN = 0.9  # the mesh's longest side spans [-MARGIN, MARGIN] in field coordinates
SIGMAS = (0.1, 0.01)  # noise of the near-surface samples, in field units


@dataclass(frozen=True)
class OccupancyLayout(Layout):
    """A mesh's normalization, and the resolution at which to extract the surface of a field."""

    center: tuple[float, float, float]
    scale: float
    resolution: int = 128

    kind = "occupancy"
    loss = "bce"
    primary_metric = "iou"
    suffix = ".ply"

    @property
    def in_dim(self) -> int:
        return 3

    @property
    def out_dim(self) -> int:
        return 1

    def normalize(self, points: np.ndarray) -> np.ndarray:
        """Mesh coordinates → field coordinates."""
        return (np.asarray(points, dtype=np.float64) - np.asarray(self.center)) / self.scale

    def denormalize(self, points: np.ndarray) -> np.ndarray:
        """Field coordinates → mesh coordinates."""
        return np.asarray(points, dtype=np.float64) * self.scale + np.asarray(self.center)

    def metrics(self, pred: Tensor, target: Tensor) -> dict[str, float]:
        """IoU and accuracy of the occupancy (logit > 0) against 0/1 labels."""
        inside, truth = (pred > 0).reshape(-1).long(), (target > 0.5).reshape(-1).long()
        return {
            "iou": float(binary_jaccard_index(inside, truth)),
            "accuracy": float((inside == truth).float().mean()),
        }

    def reconstruct(self, predict: Predict) -> trimesh.Trimesh:
        """The level-0 surface of the logits on a ``resolution``³ grid over [-1, 1]^3, in mesh coordinates.

        The grid is padded with one layer of "far outside" so the result is closed, cut by the box's
        faces, even where the field is inside at the box's boundary. A field with no surface (everywhere inside or everywhere
        outside) raises :class:`MclnfError`: an empty mesh would only fail later, less clearly.
        """
        n = self.resolution
        if n < 2:
            raise MclnfError(f"resolution {n}: the marching-cubes grid needs at least 2 points per axis")
        axis = torch.linspace(-1.0, 1.0, n)
        coords = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
        logits = predict_in_chunks(predict, coords).reshape(n, n, n).double().cpu().numpy()
        if not np.isfinite(logits).all():
            raise MclnfError("the field's logits contain NaN or infinite values; cannot extract a surface")
        lo, hi = float(logits.min()), float(logits.max())
        if hi <= 0 or lo > 0:
            where = "outside" if hi <= 0 else "inside"
            raise MclnfError(f"the field is everywhere {where} (logits in [{lo:.3g}, {hi:.3g}] on a {n}³ grid); no surface to extract")
        # a far-outside pad puts the closing surface (almost exactly) on the box's faces
        padded = np.pad(logits, 1, constant_values=-1e3 * max(abs(lo), abs(hi)))
        step = 2.0 / (n - 1)
        verts, faces, _, _ = marching_cubes(padded, level=0.0, spacing=(step,) * 3, gradient_direction="ascent")
        verts = verts - (1.0 + step)  # padded index 0 lies one step outside -1
        return trimesh.Trimesh(self.denormalize(verts), faces, process=False)

    def save(self, native: trimesh.Trimesh, path: Path) -> None:
        native.export(Path(path), file_type="ply")


def read_mesh(path: str | Path) -> trimesh.Trimesh:
    """A watertight triangle mesh from a file (a scene's meshes are merged); else a clear error."""
    p = check_readable(path, SUFFIXES)
    try:
        mesh = trimesh.load(p, force="mesh")
    except Exception as e:  # trimesh raises many types for corrupt files
        msg = str(e).splitlines()[0] if str(e) else "corrupt file"
        raise MclnfError(f"{p}: cannot read mesh ({type(e).__name__}: {msg})") from None
    if isinstance(mesh, trimesh.Scene):
        parts = [g for g in mesh.dump() if isinstance(g, trimesh.Trimesh)]
        mesh = trimesh.util.concatenate(parts) if parts else None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise MclnfError(f"{p}: the file has no triangle faces (empty, unparsable, or a point cloud); occupancy needs a closed surface")
    if not np.isfinite(mesh.vertices).all():
        raise MclnfError(f"{p}: the mesh has NaN or infinite vertex coordinates")
    if not mesh.is_watertight:
        raise MclnfError(f"{p}: the mesh is not watertight (it has holes or non-manifold edges), so inside/outside is undefined; close it first")
    return mesh


def sample_points(mesh: trimesh.Trimesh, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` points of a mesh in field coordinates: [uniform (count // 3), σ=0.1 group, σ=0.01 group].

    The near-surface remainder is split in half (the σ=0.1 group gets the odd one); all are
    clipped to [-1, 1]^3.
    """
    n_uniform = count // 3
    n_near = count - n_uniform
    n_coarse = n_near - n_near // 2
    uniform = rng.uniform(-1.0, 1.0, size=(n_uniform, 3))
    surface, _ = trimesh.sample.sample_surface(mesh, n_near, seed=rng)
    sigma = np.repeat(SIGMAS, [n_coarse, n_near - n_coarse])[:, None]
    near = surface + sigma * rng.standard_normal((n_near, 3))
    return np.clip(np.concatenate([uniform, near]), -1.0, 1.0)


def label(mesh: trimesh.Trimesh, points: np.ndarray) -> tuple[Tensor, Tensor]:
    """Float32 coordinates (N, 3) and their 0/1 inside labels (N, 1), labelled as stored (after rounding)."""
    coords = torch.from_numpy(points.astype(np.float32))
    inside = mesh.contains(coords.double().numpy())
    return coords, torch.from_numpy(inside.astype(np.float32))[:, None]


def load_occupancy(path: str | Path, points: int = 100_000, eval_points: int = 100_000, seed: int = 0, resolution: int = 128) -> Signal:
    """Load a watertight mesh as occupancy samples: ``points`` to train on, ``eval_points`` held out.

    Both sets are drawn the same way from independent streams of ``seed`` (the same seed gives the
    same points); see the module docstring for the distribution and the normalization.
    """
    for name, n in (("points", points), ("eval_points", eval_points)):
        if n < 1:
            raise MclnfError(f"--{name.replace('_', '-')} {n}: must be at least 1")
    mesh = read_mesh(path)
    lo, hi = mesh.bounds
    center = (lo + hi) / 2
    scale = float((hi - lo).max()) / 2 / MARGIN
    if not scale > 0:
        raise MclnfError(f"{path}: the mesh is degenerate (its bounding box has zero size)")
    layout = OccupancyLayout(center=tuple(float(c) for c in center), scale=scale, resolution=resolution)
    unit = trimesh.Trimesh(layout.normalize(mesh.vertices), mesh.faces, process=False)
    train_rng, eval_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    coords, values = label(unit, sample_points(unit, points, train_rng))
    eval_coords, eval_values = label(unit, sample_points(unit, eval_points, eval_rng))
    return Signal(name=str(path), layout=layout, coords=coords, values=values, eval_coords=eval_coords, eval_values=eval_values)
