"""Occupancy of meshes (OBJ/PLY/STL/OFF) → (x, y, z) ↦ inside (1) or outside (0).

The mesh is normalized into the field's box: field coordinates = (mesh coordinates − center) / scale
with ``center`` the bounding-box centre and ``scale`` = half the longest bounding-box extent / 0.9,
so the mesh's longest side spans [-0.9, 0.9] (a margin of 0.1 in field units on every side, which
keeps the surface inside the marching-cubes grid). The field outputs one logit (> 0: inside).

Samples follow the occupancy setups of SIREN/BACON as used by the preconditioner paper (Chng et al.):
a third uniform in [-1, 1]^3, two thirds near the surface, points sampled uniformly on the surface
(area-weighted) plus Gaussian noise of standard deviation 0.1 (half of them) or 0.01 (the other half)
in field units, clipped to [-1, 1]^3.

Labels (:func:`inside_test`): for a watertight mesh ``trimesh``'s ``contains`` (ray tests, embree-backed
when ``embreex`` is installed); a mesh that is not watertight is first repaired by ``trimesh.repair``
(consistent winding, holes filled), and if it is still open (holes it cannot fill, non-manifold edges)
its points are labelled by the generalized winding number (:func:`winding_numbers`, Jacobson et al. 2013),
which is exact for closed meshes and degrades gracefully for open ones. What was done is printed and
kept in the layout (``inside_test``, so in a run's ``metrics.json``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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
WATERTIGHT = "ray tests (watertight mesh)"
BRANCHING, TOP_NODES = 4, 64  # the winding numbers' tree of triangles: children per node, least nodes on its highest level
BETA = 2.0  # a node is far from a point beyond BETA times its radius (Barill et al. 2018's accuracy parameter)


@dataclass(frozen=True)
class OccupancyLayout(Layout):
    """A mesh's normalization, and the resolution at which to extract the surface of a field."""

    center: tuple[float, float, float]
    scale: float
    resolution: int = 128
    inside_test: str = WATERTIGHT  # how the labels were computed (:func:`inside_test`)

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
    """A triangle mesh from a file (a scene's meshes are merged); else a clear error. It need not be watertight (:func:`inside_test`)."""
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
        raise MclnfError(f"{p}: the file has no triangle faces (empty, unparsable, or a point cloud); occupancy needs a surface")
    if not np.isfinite(mesh.vertices).all():
        raise MclnfError(f"{p}: the mesh has NaN or infinite vertex coordinates")
    return mesh


# ---- inside or outside ---------------------------------------------------------------------------
def solid_angles(tri: Tensor, points: Tensor) -> Tensor:
    """Signed solid angles Ω (…) of triangles ``tri`` (…, 3, 3) seen from ``points`` (…, 3), by Van Oosterom &
    Strackee (IEEE Trans. Biomed. Eng. 30(2), 1983): with a, b, c the vertices relative to the point,

        tan(Ω/2) = a·(b×c) / (|a||b||c| + (a·b)|c| + (a·c)|b| + (b·c)|a|),

    evaluated as Ω = 2·atan2(numerator, denominator), exact in every octant. Ω > 0 where the point sees the
    triangle's back (an outward-oriented closed mesh's faces from inside); a degenerate triangle gives 0."""
    a, b, c = (tri[..., k, :] - points for k in range(3))
    la, lb, lc = a.norm(dim=-1), b.norm(dim=-1), c.norm(dim=-1)
    num = (a * torch.linalg.cross(b, c, dim=-1)).sum(-1)
    den = la * lb * lc + (a * b).sum(-1) * lc + (a * c).sum(-1) * lb + (b * c).sum(-1) * la
    return 2 * torch.atan2(num, den)


@dataclass
class FaceTree:
    """Triangles in Morton order of their centroids, padded with degenerate triangles (which subtend no solid
    angle) to a multiple of B^L, and L levels of nodes above them: node j of level l (1 … L) holds triangles
    j·B^l … (j + 1)·B^l − 1, with its expansion centre (area-weighted centroid), radius (its farthest vertex
    from the centre) and dipole D = Σ ½ (B − A) × (C − A), its triangles' summed area vectors."""

    tri: Tensor  # (F, 3, 3)
    branching: int
    center: list[Tensor]  # level l − 1: (F / B^l, 3)
    radius: list[Tensor]
    dipole: list[Tensor]


def morton_order(points: Tensor, bits: int = 10) -> Tensor:
    """The order of ``points`` (N, 3) along the Z-order (Morton) curve of a 2^bits grid over their bounding box."""
    lo, hi = points.amin(0), points.amax(0)
    q = ((points - lo) / (hi - lo).clamp_min(1e-30) * (2**bits - 1)).long()
    code = torch.zeros(len(points), dtype=torch.long)
    for bit in range(bits):
        for axis in range(3):
            code |= ((q[:, axis] >> bit) & 1) << (3 * bit + axis)
    return torch.argsort(code, stable=True)


def face_tree(tri: Tensor, branching: int = BRANCHING, top: int = TOP_NODES) -> FaceTree:
    """The :class:`FaceTree` of ``tri`` (F, 3, 3) with as many levels L as leave at least ``top`` nodes on the highest."""
    levels = max(0, math.floor(math.log(max(len(tri) / top, 1), branching)))
    tri = tri[morton_order(tri.mean(1))]
    tri = torch.cat([tri, tri[-1:, :1].expand(-len(tri) % branching**levels, 3, 3)])  # padding: the last vertex, thrice
    area = 0.5 * torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    weight, centroid = area.norm(dim=-1) + 1e-30, tri.mean(1)
    tree = FaceTree(tri, branching, [], [], [])
    for level in range(1, levels + 1):
        n = branching**level
        w = weight.reshape(-1, n)
        center = (centroid.reshape(-1, n, 3) * w[..., None]).sum(1) / w.sum(1)[:, None]
        tree.center.append(center)
        tree.radius.append((tri.reshape(-1, n * 3, 3) - center[:, None]).norm(dim=-1).amax(1))
        tree.dipole.append(area.reshape(-1, n, 3).sum(1))
    return tree


def tree_solid_angles(tree: FaceTree, p: Tensor, beta: float) -> Tensor:
    """Σ_f Ω_f(p) for points ``p`` (n, 3), descending the tree (Barnes–Hut): a node farther from a point than
    ``beta`` times its radius contributes its dipole term D·(c − p)/|c − p|³ (the first-order expansion of its
    solid angle about its centre c), a nearer one its children's sum, a triangle its exact :func:`solid_angles`."""
    total = torch.zeros(len(p))
    levels, B = len(tree.center), tree.branching
    nodes = len(tree.center[-1]) if levels else len(tree.tri)
    pi, node = torch.arange(len(p)).repeat_interleave(nodes), torch.arange(nodes).repeat(len(p))  # every (point, top node) pair
    for level in reversed(range(levels)):
        d = tree.center[level][node] - p[pi]
        dist = d.norm(dim=-1)
        far = dist > beta * tree.radius[level][node]  # strict: a point on a node of zero radius goes down to its (degenerate) triangles
        total.index_add_(0, pi[far], (tree.dipole[level][node[far]] * d[far]).sum(-1) / dist[far] ** 3)
        pi, node = pi[~far].repeat_interleave(B), (node[~far, None] * B + torch.arange(B)).reshape(-1)
    return total.index_add_(0, pi, solid_angles(tree.tri[node], p[pi]))


def winding_numbers(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray, beta: float = BETA, chunk: int = 512) -> np.ndarray:
    """The generalized winding number w(p) = (1/4π) Σ_f Ω_f(p) of every point (Jacobson, Kavan & Sorkine-Hornung,
    "Robust inside-outside segmentation using generalized winding numbers", SIGGRAPH 2013): 1 inside and 0
    outside a closed, outward-oriented mesh (−1 inside an inward one), a smooth harmonic blend of them across holes.

    Ω_f by Van Oosterom–Strackee (:func:`solid_angles`) for the triangles near a point and by first-order
    expansions of far groups of them (:func:`tree_solid_angles`; Barill et al., "Fast winding numbers for soups
    and clouds", SIGGRAPH 2018, with their accuracy parameter β = 2), in float32, ``chunk`` points at a time."""
    tree = face_tree(torch.from_numpy(np.asarray(vertices, dtype=np.float64)[np.asarray(faces, dtype=np.int64)]).float())
    pts = torch.as_tensor(points, dtype=torch.float32)
    w = torch.cat([tree_solid_angles(tree, p, beta) for p in pts.split(chunk)]) if len(pts) else torch.zeros(0)
    return (w / (4 * math.pi)).double().numpy()


def winding_contains(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """Inside where |w| > ½ (:func:`winding_numbers`; either orientation)."""
    return np.abs(winding_numbers(mesh.vertices, mesh.faces, points)) > 0.5


def inside_test(mesh: trimesh.Trimesh) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """How to tell inside from outside: (points (N, 3) → bool (N,), what it is). A watertight mesh: its ray
    tests; else trimesh's cheap repairs (consistent winding, boundary holes filled: ``fill_holes``) and, if that
    closed it, the repaired mesh's ray tests; else generalized winding numbers of the repaired mesh."""
    if mesh.is_watertight:
        return mesh.contains, WATERTIGHT
    open_edges = count_open_edges(mesh)
    repaired = mesh.copy()
    trimesh.repair.fix_winding(repaired)
    trimesh.repair.fill_holes(repaired)
    added = len(repaired.faces) - len(mesh.faces)
    if repaired.is_watertight:
        return repaired.contains, f"ray tests after trimesh repair (not watertight: {open_edges} open or non-manifold edges; {added} faces filled its holes)"
    what = f"generalized winding numbers (not watertight: {open_edges} open or non-manifold edges" + (f"; {added} faces added by trimesh repair" if added else "") + ")"
    return lambda points: winding_contains(repaired, points), what


def count_open_edges(mesh: trimesh.Trimesh) -> int:
    """Edges not shared by exactly two faces (boundary or non-manifold)."""
    _, counts = np.unique(mesh.edges_sorted, axis=0, return_counts=True)
    return int((counts != 2).sum())


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


def label(inside: Callable[[np.ndarray], np.ndarray], points: np.ndarray) -> tuple[Tensor, Tensor]:
    """Float32 coordinates (N, 3) and their 0/1 labels (N, 1) by ``inside`` (:func:`inside_test`), labelled as stored (after rounding)."""
    coords = torch.from_numpy(points.astype(np.float32))
    return coords, torch.from_numpy(np.asarray(inside(coords.double().numpy())).astype(np.float32))[:, None]


def load_occupancy(path: str | Path, points: int = 100_000, eval_points: int = 100_000, seed: int = 0, resolution: int = 128) -> Signal:
    """Load a mesh as occupancy samples: ``points`` to train on, ``eval_points`` held out.

    Both sets are drawn the same way from independent streams of ``seed`` (the same seed gives the
    same points); see the module docstring for the distribution, the normalization and the labels
    (a mesh that is not watertight gets a printed line saying how its labels were computed).
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
    inside, how = inside_test(unit)
    if how != WATERTIGHT:
        print(f"{path}: inside/outside by {how}", file=sys.stderr)
    layout = dataclasses.replace(layout, inside_test=how)
    train_rng, eval_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    coords, values = label(inside, sample_points(unit, points, train_rng))
    eval_coords, eval_values = label(inside, sample_points(unit, eval_points, eval_rng))
    return Signal(name=str(path), layout=layout, coords=coords, values=values, eval_coords=eval_coords, eval_values=eval_values)
