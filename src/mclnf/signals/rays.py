"""Pinhole-camera rays and volume rendering (Mildenhall et al., "NeRF", 2020), as pure tensor functions.

Conventions are NeRF's: camera-to-world poses in the OpenGL frame (camera x right, y up, looking
along −z); a ray is ``o + t·d`` with ``d`` *not* normalized (its camera-frame z is −1), so ``t`` is
depth along the optical axis and ``near``/``far`` are depths. Rendering integrates

    C(r) = Σ_k T_k α_k c_k + (1 − Σ_k T_k α_k)·background,  α_k = 1 − exp(−σ_k δ_k ‖d‖),  T_k = Π_{j<k} (1 − α_j),

with δ_k the length of sample k's cell: the cells' borders are the midpoints between consecutive
samples and the segment's ends, so the cells tile the segment exactly (for stratified samples at the
strata's centres δ_k is the stratum's width). T_k is written exp(−Σ_{j<k} σ_j δ_j ‖d‖), which is
exact and needs no cumulative product.

Forward-facing scenes (LLFF) are rendered in normalized device coordinates (NeRF's appendix C, its
``ndc_rays``): :func:`ndc_rays` maps a ray of a camera looking along −z to a ray whose points lie in
[-1, 1]³ (for a camera at the origin; about it for cameras near it) with depth t ∈ [0, 1] from the near plane (t = 0) to infinity (t = 1).

Camera paths to render (``mclnf render --camera-path``) are read from JSON by :func:`read_camera_path`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor

from mclnf.errors import MclnfError


def camera_rays(height: int, width: int, focal: float, c2w: Tensor) -> tuple[Tensor, Tensor]:
    """Rays through the pixel centres of one camera: origins and directions (H·W, 3), row-major pixel order.

    Pixel (row j, column i) has the camera-frame direction ((i + ½ − W/2)/f, −(j + ½ − H/2)/f, −1),
    turned into the world by the pose's rotation; every origin is the camera centre (the pose's
    translation). ``c2w`` is (4, 4) or (3, 4).
    """
    c2w = torch.as_tensor(c2w, dtype=torch.float32)
    j, i = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij")
    cam = torch.stack([(i + 0.5 - width / 2) / focal, -(j + 0.5 - height / 2) / focal, -torch.ones_like(i)], -1).reshape(-1, 3)
    dirs = cam @ c2w[:3, :3].T
    return c2w[:3, 3].expand_as(dirs).clone(), dirs


def ndc_rays(height: int, width: int, focal: float, near: float, origins: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
    """World rays (N, 3) + (N, 3) → the same rays in normalized device coordinates (NeRF's ``ndc_rays``).

    Each origin is first moved along its ray to the plane z = −``near``; then, with a_x = −2f/W and
    a_y = −2f/H, the origin becomes (a_x o_x/o_z, a_y o_y/o_z, 1 + 2·near/o_z) and the direction
    (a_x (d_x/d_z − o_x/o_z), a_y (d_y/d_z − o_y/o_z), −2·near/o_z): the point o' + t·d' of the warped ray
    is the projection of the ray's world point at z = −near/(1 − t), so t ∈ [0, 1] spans the near plane to infinity.
    Rays must point away from the plane (d_z < 0, as every camera of a recentred forward-facing capture)."""
    t = -(near + origins[..., 2]) / dirs[..., 2]
    o = origins + t[..., None] * dirs
    ax, ay = -2.0 * focal / width, -2.0 * focal / height
    oz = o[..., 2]
    o_ndc = torch.stack([ax * o[..., 0] / oz, ay * o[..., 1] / oz, 1 + 2 * near / oz], -1)
    d_ndc = torch.stack([ax * (dirs[..., 0] / dirs[..., 2] - o[..., 0] / oz), ay * (dirs[..., 1] / dirs[..., 2] - o[..., 1] / oz), -2 * near / oz], -1)
    return o_ndc, d_ndc


def box_segment(origins: Tensor, dirs: Tensor, center: Tensor, bound: float, near: float, far: float) -> tuple[Tensor, Tensor]:
    """The part [t0, t1] of each ray between ``near`` and ``far`` that lies in the cube ``center ± bound`` (slab test).

    A ray that misses the cube gets t1 = t0 (an empty segment: it renders the background)."""
    safe = torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    a, b = (center - bound - origins) / safe, (center + bound - origins) / safe
    t0 = torch.minimum(a, b).amax(-1).clamp_min(near)
    t1 = torch.maximum(a, b).amin(-1).clamp_max(far)
    return t0, torch.maximum(t0, t1)


def stratified(t0: Tensor, t1: Tensor, n: int, jitter: bool) -> Tensor:
    """``n`` depths per ray, one in each of n equal strata of [t0, t1]: uniformly at random in its stratum
    (``jitter``) or at its centre; (N, n), increasing."""
    k = torch.arange(n, dtype=t0.dtype, device=t0.device)
    u = torch.rand(*t0.shape, n, dtype=t0.dtype, device=t0.device) if jitter else torch.full_like(k, 0.5)
    return t0[..., None] + (t1 - t0)[..., None] * (k + u) / n


def cell_borders(t: Tensor, t0: Tensor, t1: Tensor) -> Tensor:
    """Borders (N, S + 1) of the cells of sorted depths ``t`` (N, S): t0, the midpoints, t1; δ_k = their differences."""
    return torch.cat([t0[..., None], (t[..., 1:] + t[..., :-1]) / 2, t1[..., None]], -1)


def composite(sigma: Tensor, rgb: Tensor, t: Tensor, delta: Tensor, dir_norm: Tensor, background: float = 1.0) -> dict[str, Tensor]:
    """Alpha compositing of samples (module docstring): densities ``sigma`` (N, S) ≥ 0, colours ``rgb``
    (N, S, C), depths ``t`` and cell lengths ``delta`` (N, S), ray direction norms (N,).

    Returns ``rgb`` (N, C), ``depth`` (N,) (expected termination depth Σ w t, background counting as
    the segment's last depth), ``acc`` = Σ_k w_k ≤ 1 (opacity) and the weights ``w`` (N, S).
    """
    tau = sigma * delta * dir_norm[..., None]  # optical thickness of each cell
    before = torch.cumsum(tau, -1) - tau  # Σ_{j<k}: exclusive
    w = torch.exp(-before) * -torch.expm1(-tau)  # T_k α_k
    acc = w.sum(-1)
    return {
        "rgb": (w[..., None] * rgb).sum(-2) + (1 - acc)[..., None] * background,
        "depth": (w * t).sum(-1) + (1 - acc) * t[..., -1],
        "acc": acc,
        "w": w,
    }


def sample_pdf(borders: Tensor, weights: Tensor, n: int, jitter: bool) -> Tensor:
    """``n`` depths per ray drawn from the piecewise-constant density ∝ ``weights`` (N, S) over the cells
    with ``borders`` (N, S + 1) — hierarchical sampling, NeRF's ``sample_pdf``: the inverse CDF at
    stratified uniforms (random when ``jitter``, else the strata's centres); (N, n), increasing."""
    pdf = weights.detach() + 1e-5  # no cell of zero probability: the CDF increases strictly
    pdf = pdf / pdf.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[..., :1]), torch.cumsum(pdf, -1)], -1).clamp_max(1.0).contiguous()
    zeros = torch.zeros_like(borders[..., 0])
    u = stratified(zeros, zeros + 1, n, jitter).contiguous()
    hi = torch.searchsorted(cdf, u, right=True).clamp(1, cdf.shape[-1] - 1)
    c0, c1 = cdf.gather(-1, hi - 1), cdf.gather(-1, hi)
    b0, b1 = borders.gather(-1, hi - 1), borders.gather(-1, hi)
    return b0 + (u - c0) / (c1 - c0).clamp_min(1e-12) * (b1 - b0)


# ---- camera paths --------------------------------------------------------------------------------
CAMERA_PATH_FORMS = 'a list of 4×4 camera-to-world matrices or nerfstudio\'s {"camera_path": [{"camera_to_world": [16 numbers]}, …]}'


def read_camera_path(path: str | Path, option: str = "--camera-path") -> Tensor:
    """Camera-to-world poses (V, 4, 4) from a JSON file holding a list of 4 × 4 matrices (rows), or a nerfstudio
    camera path, ``{"camera_path": [{"camera_to_world": [16 numbers, row-major]}, …]}`` (its other keys — fov,
    render size — are not used: the run's camera renders). Both in the OpenGL convention of NeRF and nerfstudio
    (camera x right, y up, looking along −z). Any problem is one error naming ``option`` and the file."""
    where = f"{option} {path}"
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MclnfError(f"{where}: no such file (give orbit or a JSON file of camera poses)") from None
    except OSError as e:
        raise MclnfError(f"{where}: cannot read the file ({e.strerror or type(e).__name__})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MclnfError(f"{where}: not JSON ({str(e).splitlines()[0]})") from None
    if isinstance(data, dict) and isinstance(data.get("camera_path"), list):
        cameras = [camera_matrix(c.get("camera_to_world") if isinstance(c, dict) else None, k, where, flat=True) for k, c in enumerate(data["camera_path"])]
    elif isinstance(data, list):
        cameras = [camera_matrix(c, k, where) for k, c in enumerate(data)]
    else:
        raise MclnfError(f"{where}: expected {CAMERA_PATH_FORMS}")
    if not cameras:
        raise MclnfError(f"{where}: no cameras in the file")
    return torch.stack(cameras)


def camera_matrix(value, index: int, where: str, flat: bool = False) -> Tensor:
    """Camera ``index`` of a camera path as a (4, 4) float32 tensor: from rows (``flat``: 16 numbers, row-major)."""

    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if flat:
        if not isinstance(value, list) or len(value) != 16:
            got = f"{len(value)} numbers" if isinstance(value, list) else "no camera_to_world list"
            raise MclnfError(f"{where}: camera {index} has {got}, not the 16 of a 4×4 camera-to-world matrix")
        value = [value[4 * r : 4 * r + 4] for r in range(4)]
    rows = value if isinstance(value, list) and all(isinstance(r, list) for r in value) else None
    if rows is None or len(rows) != 4 or any(len(r) != 4 for r in rows):
        shape = f"{len(rows)}×{'/'.join(sorted({str(len(r)) for r in rows}))}" if rows else "not a matrix"
        raise MclnfError(f"{where}: camera {index} is {shape}, not a 4×4 camera-to-world matrix")
    if not all(number(x) for r in rows for x in r):
        raise MclnfError(f"{where}: camera {index} has entries that are not finite numbers")
    return torch.tensor(rows, dtype=torch.float32)
