"""Pinhole cameras with their own intrinsics and OpenCV radial-tangential lens distortion: rays through pixel centres.

A camera is 10 numbers, ``(fx, fy, cx, cy, k1, k2, k3, k4, p1, p2)``: focal lengths and principal point in pixels
(pixel (row j, column i) has its centre at (i + ½, j + ½), as in nerfstudio's ``Cameras.generate_rays`` and
instant-ngp's ``nerf_loader``, so ``cx = W/2`` is the image centre), and the distortion model of nerfstudio's
``camera_utils`` (MultiNeRF's; OpenCV's radial-tangential with a fourth radial term), on normalized image
coordinates (x, y) = ((u − cx)/fx, (v − cy)/fy) with y pointing **down** (OpenCV's, as COLMAP calibrates them):

    r² = x² + y²,  d = 1 + k1 r² + k2 r⁴ + k3 r⁶ + k4 r⁸,
    x_d = d x + 2 p1 x y + p2 (r² + 2x²),   y_d = d y + 2 p2 x y + p1 (r² + 2y²).

A pixel's ray needs the inverse: its distorted coordinates (x_d, y_d) are undistorted per pixel by Newton's
method on the 2 × 2 system (:func:`undistort`; nerfstudio's ``radial_and_tangential_undistort`` does the same,
10 iterations), in float64, until the step is below 1e-12 (at most 20 iterations); a pixel where the model
cannot be inverted (the residual stays above 1e-9, or the solution lies beyond a fold of the model: radial
factor d ≤ 0 or Jacobian determinant ≤ 0 there) is an error. The ray's camera-frame direction is then
(x, −y, −1) — the OpenGL/NeRF frame (x right, y up, looking along −z) of every scene here — so, as in
:func:`mclnf.signals.rays.camera_rays`, its depth along the optical axis is ``t``. With no distortion,
fx = fy = f and (cx, cy) = (W/2, H/2) the rays are exactly ``camera_rays``'.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mclnf.errors import MclnfError

CAMERA_FIELDS = ("fl_x", "fl_y", "cx", "cy", "k1", "k2", "k3", "k4", "p1", "p2")  # the 10 numbers, by their transforms.json names
NEWTON_STEPS, NEWTON_TOL, RESIDUAL_TOL = 20, 1e-12, 1e-9


def distort(x: Tensor, y: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """Undistorted normalized coordinates → distorted ones (module docstring); ``k`` = (k1, k2, k3, k4, p1, p2)."""
    k1, k2, k3, k4, p1, p2 = k.unbind(-1)
    r2 = x * x + y * y
    d = 1 + r2 * (k1 + r2 * (k2 + r2 * (k3 + r2 * k4)))
    return d * x + 2 * p1 * x * y + p2 * (r2 + 2 * x * x), d * y + 2 * p2 * x * y + p1 * (r2 + 2 * y * y)


def undistort(xd: Tensor, yd: Tensor, k: Tensor, where: str = "camera") -> tuple[Tensor, Tensor]:
    """Distorted normalized coordinates → undistorted ones: Newton's method from (x, y) = (x_d, y_d) (module docstring)."""
    xd, yd, k = xd.double(), yd.double(), k.double()
    if not bool(k.any()):
        return xd, yd
    k1, k2, k3, k4, p1, p2 = k.unbind(-1)
    x, y = xd.clone(), yd.clone()
    for _ in range(NEWTON_STEPS):
        r2 = x * x + y * y
        d = 1 + r2 * (k1 + r2 * (k2 + r2 * (k3 + r2 * k4)))
        dd = k1 + r2 * (2 * k2 + r2 * (3 * k3 + r2 * 4 * k4))  # ∂d/∂(r²)
        fx = d * x + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) - xd
        fy = d * y + 2 * p2 * x * y + p1 * (r2 + 2 * y * y) - yd
        fx_x = d + 2 * x * x * dd + 2 * p1 * y + 6 * p2 * x
        fx_y = 2 * x * y * dd + 2 * p1 * x + 2 * p2 * y
        fy_x = 2 * x * y * dd + 2 * p2 * y + 2 * p1 * x
        fy_y = d + 2 * y * y * dd + 2 * p2 * x + 6 * p1 * y
        det = fx_x * fy_y - fx_y * fy_x
        det = torch.where(det.abs() < 1e-15, torch.full_like(det, 1e-15), det)
        step_x, step_y = (fx * fy_y - fy * fx_y) / det, (fy * fx_x - fx * fy_x) / det
        x, y = x - step_x, y - step_y
        if float(torch.maximum(step_x.abs(), step_y.abs()).max()) < NEWTON_TOL:
            break
    rx, ry = distort(x, y, k)
    residual = float(torch.maximum((rx - xd).abs(), (ry - yd).abs()).max())
    r2 = x * x + y * y
    d = 1 + r2 * (k1 + r2 * (k2 + r2 * (k3 + r2 * k4)))
    dd = k1 + r2 * (2 * k2 + r2 * (3 * k3 + r2 * 4 * k4))
    det = (d + 2 * x * x * dd + 2 * p1 * y + 6 * p2 * x) * (d + 2 * y * y * dd + 2 * p2 * x + 6 * p1 * y) - (2 * x * y * dd + 2 * p1 * x + 2 * p2 * y) * (2 * x * y * dd + 2 * p2 * y + 2 * p1 * x)
    if not residual < RESIDUAL_TOL or bool((d <= 0).any()) or bool((det <= 0).any()):
        why = f"Newton's method leaves a residual of {residual:.3g}" if not residual < RESIDUAL_TOL else "the model folds over before reaching them"
        raise MclnfError(f"{where}: its distortion (k1 k2 k3 k4 p1 p2 = {' '.join(f'{float(v):g}' for v in k)}) cannot be inverted over the whole image "
                         f"({why}); the coefficients do not describe a lens that covers these pixels")  # fmt: skip
    return x, y


def pixel_directions(height: int, width: int, camera: Tensor, where: str = "camera") -> Tensor:
    """Camera-frame ray directions (H·W, 3), row-major, OpenGL frame with z = −1, of ``camera`` (10 numbers; module docstring), float64."""
    camera = torch.as_tensor(camera, dtype=torch.float64)
    fx, fy, cx, cy = camera[:4].tolist()
    j, i = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij")
    x, y = undistort((i + 0.5 - cx) / fx, (j + 0.5 - cy) / fy, camera[4:], where)
    return torch.stack([x, -y, -torch.ones_like(x)], -1).reshape(-1, 3)


def general_camera_rays(height: int, width: int, camera: Tensor, c2w: Tensor, where: str = "camera") -> tuple[Tensor, Tensor]:
    """Rays (origins, directions: (H·W, 3) float32) through the pixel centres of a camera with its own intrinsics and
    distortion (module docstring) and camera-to-world pose ``c2w`` ((4, 4) or (3, 4), OpenGL convention)."""
    c2w = torch.as_tensor(c2w, dtype=torch.float64)
    dirs = (pixel_directions(height, width, camera, where) @ c2w[:3, :3].T).float()
    return c2w[:3, 3].float().expand_as(dirs).clone(), dirs


def scale_cameras(cameras: Tensor, sx: float, sy: float) -> Tensor:
    """Cameras (V, 10) of images resampled by ``sx`` horizontally and ``sy`` vertically: fx, cx times sx; fy, cy times sy
    (pixel centres map onto pixel centres: (i + ½)·s); the distortion, on normalized coordinates, unchanged."""
    out = cameras.clone()
    out[:, 0] *= sx
    out[:, 2] *= sx
    out[:, 1] *= sy
    out[:, 3] *= sy
    return out
