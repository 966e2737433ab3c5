"""Radiance fields of posed images (NeRF): a scene's rays ↦ pixel colours through volume rendering.

A radiance signal's samples are rays, (N, 6) = world origin and direction (:func:`mclnf.signals.rays.camera_rays`
of the training views), and their pixels' RGB; the held-out views' rays and pixels are its evaluation
samples. The field is the same MLP as every other kind's, on 5 inputs — the sample's position,
normalized so the scene box ``center ± bound`` is [-1, 1]³, and the view direction as two angles in
[-1, 1] (θ = atan2(d_y, d_x)/π, φ = 2·acos(d_z)/π − 1; the MCL-NF paper's d_in = 5) — or 6 with the
direction as a unit vector (``direction="vector"``); its 4 outputs are density σ = softplus(o₀) and
colour sigmoid(o₁..₃). :meth:`RadianceLayout.observe` renders rays from it: ``samples`` stratified
depths on the part of [near, far] inside the scene box (jittered while gradients are on, i.e. in
training; strata centres in evaluation), plus ``importance`` depths drawn from the first pass's weights
(hierarchical sampling with the same field, as mip-NeRF), composited over a white background.

Forward-facing scenes (LLFF) are rendered in normalized device coordinates (``ndc``, NeRF's default for
them): a ray (still stored as its world origin and direction) is warped by :func:`mclnf.signals.rays.ndc_rays`
(near plane 1, the layout's focal length and size), its samples are the depths t ∈ [0, 1] of the warped
ray (layout ``near`` 0, ``far`` 1: the near plane to infinity), whose points lie in about [-1, 1]³ (exactly for
the average camera) and are the field's position input as they are; the view direction is the world ray's, and δ is measured along
the warped ray (as NeRF). No scene box bounds the samples; ``center``/``bound`` only place the cameras
(:meth:`RadianceLayout.locate`), and the turntable becomes a circle of cameras in the average held-out
camera's image plane.

Scene box (default): centred on the point nearest to every training camera's optical axis; its
half-size (:func:`default_bound`) that of the ball about the centre every camera sees whole when
they all look at it (lego: 1.37), else the cube that holds every sample of every training ray
(``scene_bound`` sets it; NeRF-synthetic objects lie within 1.5); a nerfstudio/instant-ngp file's box when it
gives one (``aabb_scale``, :mod:`mclnf.signals.nerfstudio`). The views of such files have their own cameras
(intrinsics, distortion): their rays come from :func:`mclnf.signals.cameras.general_camera_rays`, and the
layout keeps the held-out views' cameras (``cameras``) to render them; novel views (turntable, camera paths)
use the pinhole of ``focal`` (the first view's fx) about the image centre.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio

from mclnf.errors import MclnfError
from mclnf.io import atomic_path
from mclnf.signals.base import Layout, Predict, Signal, predict_in_chunks
from mclnf.signals.cameras import general_camera_rays
from mclnf.signals.image import ssim
from mclnf.signals.rays import box_segment, camera_rays, cell_borders, composite, ndc_rays, sample_pdf, stratified
from mclnf.signals.scenes import average_pose, load_posed_images

DIRECTIONS = ("angles", "vector")
NDC_NEAR = 1.0  # NeRF's near plane of the NDC warp (after LLFF's rescaling the nearest depth is 1/0.75)
POINTS_PER_CHUNK = 2**14  # field evaluations per chunk when rendering without gradients (small: the activations stay in cache)


@dataclass(frozen=True, repr=False)
class RadianceLayout(Layout):
    """One scene's cameras (held-out poses flattened in ``views``, V·16 numbers), box and renderer settings."""

    height: int
    width: int
    focal: float
    near: float
    far: float
    center: tuple[float, float, float]
    bound: float
    up: tuple[float, float, float]  # the scene's up axis (mean camera up), for the turntable
    views: tuple[float, ...]
    samples: int = 64
    importance: int = 0
    direction: str = "angles"
    turntable_frames: int = 24
    jitter: bool = True  # stratified depths drawn at random while training (False: strata centres always; deterministic)
    block_views: int = 0  # views per signal when a scene is cut into blocks of views (a meta-learning dataset); 0: a whole scene
    ndc: bool = False  # rays rendered in normalized device coordinates (forward-facing scenes; near 0, far 1, no box)
    cameras: tuple[float, ...] = ()  # held-out views' own cameras (nerfstudio scenes), 10 numbers each: fx/W, fy/H, cx/W, cy/H, k1 k2 k3 k4 p1 p2; (): the pinhole of focal

    kind = "radiance"
    loss = "mse"
    primary_metric = "psnr"
    suffix = ".png"
    blank = (-30.0, 0.0, 0.0, 0.0)  # a field output for empty space: σ = softplus(−30) ≈ 1e−13

    def __repr__(self) -> str:  # the poses would fill a screen
        return (f"RadianceLayout({self.height}×{self.width}, focal {self.focal:.6g}, near {self.near:g}, far {self.far:g}, box {self.bound:.4g} about "
                f"({', '.join(f'{c:.3g}' for c in self.center)}), {len(self.views) // 16} held-out views, {self.samples}+{self.importance} samples, "
                f"direction {self.direction}, block of {self.block_views} views{', NDC' if self.ndc else ''})")  # fmt: skip

    @property
    def in_dim(self) -> int:
        return 5 if self.direction == "angles" else 6

    @property
    def out_dim(self) -> int:
        return 4

    @property
    def chunk(self) -> int:
        return max(1, POINTS_PER_CHUNK // (self.samples + self.importance))

    @property
    def poses(self) -> Tensor:
        return torch.tensor(self.views, dtype=torch.float32).reshape(-1, 4, 4)

    def probe(self) -> Signal:
        """A stand-in block of ``block_views`` views (zero rays): what task splits of a block are, by sample index."""
        n = self.block_views * self.height * self.width
        return Signal("layout", self, torch.zeros(n, 6), torch.zeros(n, 3))

    # ---- the observation model ---------------------------------------------------------------
    def locate(self, coords: Tensor) -> Tensor:
        """Where each ray is taken from, in field coordinates: its camera centre (for splitting a scene by space)."""
        return (coords[:, :3] - coords.new_tensor(self.center)) / self.bound

    def field_inputs(self, points: Tensor, dirs: Tensor) -> Tensor:
        """Field inputs of points (…, 3) seen along directions (…, 3): normalized position (world points by the
        scene box; NDC points as they are) and direction."""
        x = points if self.ndc else (points - points.new_tensor(self.center)) / self.bound
        u = F.normalize(dirs, dim=-1)
        if self.direction == "vector":
            return torch.cat([x, u], -1)
        theta = torch.atan2(u[..., 1], u[..., 0]) / math.pi
        phi = torch.acos(u[..., 2].clamp(-1, 1)) * (2 / math.pi) - 1
        return torch.cat([x, theta[..., None], phi[..., None]], -1)

    def shade(self, field: Predict, origins: Tensor, dirs: Tensor, t: Tensor, view: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Density (N, S) and colour (N, S, 3) of the field at depths ``t`` (N, S) of the rays, seen along
        ``view`` (N, 3; default ``dirs``: NDC rays are seen along their world directions)."""
        points = origins[:, None] + t[..., None] * dirs[:, None]
        inputs = self.field_inputs(points, (dirs if view is None else view)[:, None].expand_as(points))
        raw = field(inputs.reshape(-1, inputs.shape[-1])).reshape(*t.shape, 4)
        return F.softplus(raw[..., 0]), torch.sigmoid(raw[..., 1:])

    def render(self, field: Predict, rays: Tensor, jitter: bool | None = None) -> dict[str, Tensor]:
        """Volume rendering of rays (N, 6) through ``field``: ``rgb`` (N, 3), ``depth``, ``acc`` (module
        docstring); ``jitter`` defaults to the layout's, while gradients are on (training)."""
        jitter = (self.jitter and torch.is_grad_enabled()) if jitter is None else jitter
        origins, dirs = rays[:, :3], rays[:, 3:]
        view = dirs
        if self.ndc:
            origins, dirs = ndc_rays(self.height, self.width, self.focal, NDC_NEAR, origins, dirs)
            t0, t1 = torch.full_like(origins[:, 0], self.near), torch.full_like(origins[:, 0], self.far)
        else:
            t0, t1 = box_segment(origins, dirs, origins.new_tensor(self.center), self.bound, self.near, self.far)
        t = stratified(t0, t1, self.samples, jitter)
        norm = dirs.norm(dim=-1)
        if self.importance:
            with torch.no_grad():
                borders = cell_borders(t, t0, t1)
                w = composite(*self.shade(field, origins, dirs, t, view), t, borders.diff(dim=-1), norm)["w"]
                t = torch.sort(torch.cat([t, sample_pdf(borders, w, self.importance, jitter)], -1), -1).values
        sigma, rgb = self.shade(field, origins, dirs, t, view)
        return composite(sigma, rgb, t, cell_borders(t, t0, t1).diff(dim=-1), norm)

    def observe(self, field: Predict, coords: Tensor) -> Tensor:
        return self.render(field, coords)["rgb"]

    # ---- metrics and outputs -----------------------------------------------------------------
    def as_views(self, values: Tensor) -> Tensor:
        """Pixels (V·H·W, C) of whole views → images (V, C, H, W)."""
        return values.detach().float().cpu().reshape(-1, self.height, self.width, values.shape[-1]).permute(0, 3, 1, 2)

    def metrics(self, pred: Tensor, target: Tensor) -> dict[str, float | None]:
        """PSNR (mean over views of each view's PSNR, as NeRF reports it) and SSIM of whole views; data range 1.

        SSIM is ``None`` for views with a side under 6 pixels (see :func:`mclnf.signals.image.ssim`)."""
        p, t = self.as_views(pred).clamp(0, 1), self.as_views(target)
        psnr = peak_signal_noise_ratio(p, t, data_range=1.0, reduction="none", dim=(1, 2, 3))
        return {"psnr": float(psnr.mean()), "ssim": ssim(p, t)}

    def view_rays(self, poses: Tensor, cameras: tuple[float, ...] = ()) -> list[Tensor]:
        """The rays (H·W, 6) of each camera pose (V, 4, 4): through the layout's pinhole, or each view's own camera of
        ``cameras`` (:attr:`cameras`' form, scaled to the layout's H × W; :func:`mclnf.signals.cameras.general_camera_rays`)."""
        if not cameras:
            return [torch.cat(camera_rays(self.height, self.width, self.focal, pose), -1) for pose in poses]
        size = torch.tensor([self.width, self.height, self.width, self.height], dtype=torch.float64)
        cams = torch.tensor(cameras, dtype=torch.float64).reshape(-1, 10)
        return [torch.cat(general_camera_rays(self.height, self.width, torch.cat([cam[:4] * size, cam[4:]]), pose), -1) for cam, pose in zip(cams, poses)]

    def render_views(self, predict: Predict, poses: Tensor, cameras: tuple[float, ...] = ()) -> Tensor:
        """Images (V, H, W, C) that ``predict`` (rays → values: the field observed, or a learner's prediction) gives for camera poses (V, 4, 4)
        (and their own ``cameras``, :meth:`view_rays`)."""
        return torch.stack([predict_in_chunks(predict, rays, self.chunk).reshape(self.height, self.width, -1) for rays in self.view_rays(poses, cameras)])

    def reconstruct(self, predict: Predict) -> Tensor:
        """The held-out views (V, H, W, 3) as ``predict`` (rays → RGB) renders them."""
        return self.render_views(predict, self.poses, self.cameras)

    def save(self, native: Tensor, path: Path) -> None:
        """One PNG: the rendered held-out views side by side, 8 a row."""
        iio.imwrite(path, tile([native]), extension=".png")

    def depth_range(self) -> tuple[float, float]:
        """The depths a depth map is coloured over: the box's depth range seen from the held-out cameras (NDC: [0, 1])."""
        if self.ndc:
            return self.near, self.far
        dist = float((self.poses[:, :3, 3] - torch.tensor(self.center)).norm(dim=-1).mean())
        return max(self.near, dist - self.bound * math.sqrt(3)), min(self.far, dist + self.bound * math.sqrt(3))

    def extra_outputs(self, field: Predict, signal: Signal, out: Path) -> list[str]:
        """``views_vs_truth.png`` (held-out views: truth, rendering with its PSNR and depth map, band by band: :func:`plot_views`) and ``turntable.mp4``
        (a circle around the scene at the held-out cameras' mean distance and elevation)."""
        both = lambda rays: torch.cat([(r := self.render(field, rays, jitter=False))["rgb"], r["depth"][:, None]], -1)  # noqa: E731
        views = self.render_views(both, self.poses, self.cameras)
        truth = self.as_views(signal.eval_values).permute(0, 2, 3, 1)
        with atomic_path(out / "views_vs_truth.png") as tmp:
            plot_views(truth, views[..., :3], views[..., 3], self.depth_range(), tmp, depth_unit="NDC" if self.ndc else "world units")
        path = (image_plane_circle if self.ndc else turntable_poses)(self, self.turntable_frames)
        frames = self.render_views(lambda rays: self.observe(field, rays), path)
        frames = (frames.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)), mode="edge")  # yuv420p: even sizes
        with atomic_path(out / "turntable.mp4") as tmp:
            iio.imwrite(tmp, frames, extension=".mp4", plugin="pyav", codec="libx264", fps=20)
        return ["views_vs_truth.png", "turntable.mp4"]


def tile(rows: list[Tensor], per_row: int = 8) -> np.ndarray:
    """Image sets (V, H, W, 3) of one V, interleaved band by band (≤ ``per_row`` views a band) → one uint8 image."""
    V, H, W, _ = rows[0].shape
    bands = []
    for start in range(0, V, per_row):
        for images in rows:
            chunk = images[start : start + per_row]
            band = torch.ones(H, W * min(per_row, V), 3)
            band[:, : W * len(chunk)] = chunk.permute(1, 0, 2, 3).reshape(H, -1, 3)
            bands.append(band)
    return (torch.cat(bands).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def plot_views(truth: Tensor, render: Tensor, depth: Tensor, depth_range: tuple[float, float], path: Path, per_row: int = 8, depth_unit: str = "world units") -> None:
    """Held-out views (V, H, W, 3) as a labelled figure: bands of ≤ ``per_row`` views, each band's rows the ground
    truth, the rendering (titled with its PSNR) and the depth map (V, H, W; turbo over ``depth_range``, near is red,
    with a colour bar)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    V, H, W, _ = truth.shape
    cols, bands = min(per_row, V), -(-V // per_row)
    render = render.clamp(0, 1)
    psnr = -10 * torch.log10(((render - truth) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-12))
    side = min(3.0, max(1.6, W / 64))  # inches per view
    fig = Figure(figsize=(side * cols * max(W / H, 0.5) + 1.6, side * 3 * bands + 0.6), layout="constrained")
    axes = fig.subplots(3 * bands, cols, squeeze=False)
    norm = Normalize(*depth_range)
    for v in range(bands * cols):
        band, col = divmod(v, cols)
        column = [axes[3 * band + r][col] for r in range(3)]
        for r, ax in enumerate(column):
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(("truth", "render", "depth")[r], fontsize=10)
            if v >= V:
                ax.axis("off")
        if v < V:
            column[0].imshow(truth[v].numpy(), interpolation="nearest")
            column[0].set_title(f"view {v + 1}", fontsize=9, pad=2)
            column[1].imshow(render[v].numpy(), interpolation="nearest")
            column[1].set_title(f"{float(psnr[v]):.2f} dB", fontsize=9, pad=2)
            column[2].imshow(depth[v].numpy(), cmap="turbo_r", norm=norm, interpolation="nearest")
    fig.colorbar(ScalarMappable(norm=norm, cmap="turbo_r"), ax=axes[:, -1].tolist(), label=f"depth ({depth_unit}; near is red)", shrink=0.8)
    fig.suptitle(f"{V} held-out views: mean PSNR {float(psnr.mean()):.2f} dB", fontsize=11)
    fig.savefig(path, dpi=120, format="png")


def look_at(eye: Tensor, target: Tensor, up: Tensor) -> Tensor:
    """The camera-to-world pose (4, 4), OpenGL convention, of a camera at ``eye`` looking at ``target``."""
    forward = F.normalize(target - eye, dim=0)
    right = F.normalize(torch.linalg.cross(forward, up), dim=0)
    pose = torch.eye(4)
    pose[:3, :3] = torch.stack([right, torch.linalg.cross(right, forward), -forward], 1)
    pose[:3, 3] = eye
    return pose


def turntable_poses(layout: RadianceLayout, n: int) -> Tensor:
    """``n`` poses on a circle about the up axis through the box centre, at the held-out cameras' mean distance and elevation."""
    center, up = torch.tensor(layout.center), torch.tensor(layout.up)
    rel = layout.poses[:, :3, 3] - center
    radius = float(rel.norm(dim=-1).mean())
    height = float((rel @ up).mean())
    e1 = F.normalize(rel[0] - (rel[0] @ up) * up, dim=0)
    e2 = torch.linalg.cross(up, e1)
    ring = math.sqrt(max(radius**2 - height**2, 1e-12))
    angles = torch.arange(n) * (2 * math.pi / n)
    return torch.stack([look_at(center + height * up + ring * (math.cos(a) * e1 + math.sin(a) * e2), center, up) for a in angles.tolist()])


def image_plane_circle(layout: RadianceLayout, n: int) -> Tensor:
    """``n`` poses of a forward-facing scene: the average held-out camera (NeRF's ``poses_avg``) moved on a circle
    in its own image plane, of radius the held-out cameras' 90th-percentile offset from it, looking where it looks."""
    poses = layout.poses.double().numpy()
    avg = torch.from_numpy(average_pose(poses))
    offsets = (poses[:, :3, 3] - avg[:3, 3].numpy()) @ avg[:3, :3].numpy()  # in the average camera's frame
    radius = float(np.percentile(np.linalg.norm(offsets[:, :2], axis=1), 90)) or 0.1  # one held-out view: a small circle
    out = avg[None].repeat(n, 1, 1)
    for k, a in enumerate((torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)).tolist()):
        out[k, :3, 3] += radius * (math.cos(a) * avg[:3, 0] + math.sin(a) * avg[:3, 1])
    return out.float()


def axes_center(poses: Tensor) -> Tensor:
    """The point nearest (least squares) to every camera's optical axis; a tiny pull towards the cameras'
    mean keeps it defined when the axes are parallel (forward-facing captures)."""
    c, a = poses[:, :3, 3].double(), -poses[:, :3, 2].double()
    P = torch.eye(3, dtype=torch.float64) - a[:, :, None] * a[:, None, :]  # projections onto each axis's normal plane
    ridge = 1e-6 * len(poses)
    return torch.linalg.solve(P.sum(0) + ridge * torch.eye(3, dtype=torch.float64), (P @ c[:, :, None]).sum(0)[:, 0] + ridge * c.mean(0)).float()


def default_bound(rays: Tensor, poses: Tensor, center: Tensor, focal: float, height: int, width: int, near: float, far: float) -> float:
    """The scene box's default half-size: for cameras that all look at the centre (an object captured
    all around), the radius of the largest ball about it that every camera sees whole — D·sin(half the
    narrower field of view), D the nearest camera's distance; otherwise (forward-facing captures) the
    cube that holds every sample of every training ray."""
    o, d = rays[:, :3], rays[:, 3:]
    every_sample = float((torch.cat([o + near * d, o + far * d]) - center).abs().max())
    to_center = center - poses[:, :3, 3]
    dist = to_center.norm(dim=-1)
    facing = F.cosine_similarity(to_center, -poses[:, :3, 2], dim=-1)
    half_fov = math.atan(min(height, width) / 2 / focal)
    if bool((facing > math.cos(half_fov)).all()) and float(dist.min()) > near:
        return min(every_sample, float(dist.min()) * math.sin(half_fov))
    return every_sample


def load_radiance(
    path: str | Path, resize: int | None = None, holdout: int = 8, samples: int = 64, importance: int = 0,
    scene_bound: float | None = None, direction: str = "angles", factor: int | None = None, ndc: bool | None = None,
) -> Signal:  # fmt: skip
    """A scene of posed images (``.npz``, NeRF-synthetic, nerfstudio/instant-ngp or LLFF folder; :mod:`mclnf.signals.scenes`) as a radiance signal.

    ``factor`` reads an LLFF folder's ``images_{factor}/``; ``ndc`` renders in normalized device coordinates
    (default: for LLFF scenes; refused for the others, which are not forward-facing)."""
    if samples < 2:
        raise MclnfError(f"--samples {samples}: need at least 2 samples per ray")
    if importance < 0:
        raise MclnfError(f"--importance {importance}: must be ≥ 0")
    if direction not in DIRECTIONS:
        raise MclnfError(f"--direction {direction}: unknown; choose one of {', '.join(DIRECTIONS)}")
    if scene_bound is not None and not 0 < scene_bound < math.inf:
        raise MclnfError(f"--scene-bound {scene_bound}: must be a positive number")
    scene = load_posed_images(path, resize=resize, holdout=holdout, factor=factor)
    if ndc and not scene.forward_facing:
        raise MclnfError(f"--ndc: only for forward-facing LLFF scenes (poses_bounds.npy); {path} is not one")
    ndc = scene.forward_facing if ndc is None else ndc
    V, H, W, _ = scene.images.shape
    train, test = scene.poses[scene.train], scene.poses[scene.test]
    center = axes_center(train) if scene.center is None else torch.tensor(scene.center)  # a nerfstudio/instant-ngp file's box (aabb_scale), if it gives one
    rays, pixels = scene.rays(scene.train)  # each view's own camera (nerfstudio scenes) or the pinhole of scene.focal
    eval_rays, eval_pixels = scene.rays(scene.test)
    if scene_bound is None:
        scene_bound = scene.bound if scene.bound is not None else default_bound(rays, train, center, scene.focal, H, W, scene.near, scene.far)
    cameras = () if scene.cameras is None else tuple(float(v) for v in (scene.cameras[scene.test] / torch.tensor([W, H, W, H, 1, 1, 1, 1, 1, 1.0], dtype=torch.float64)).reshape(-1))
    up = F.normalize(train[:, :3, 1].mean(0), dim=0)
    layout = RadianceLayout(
        height=H, width=W, focal=float(scene.focal), near=float(scene.near), far=float(scene.far),
        center=tuple(float(c) for c in center), bound=float(scene_bound), up=tuple(float(u) for u in up),
        views=tuple(float(v) for v in test.reshape(-1)), samples=samples, importance=importance, direction=direction, ndc=ndc, cameras=cameras,
    )  # fmt: skip
    if ndc:  # NeRF's: t ∈ [0, 1] of the warped rays, the near plane to infinity
        layout = dataclasses.replace(layout, near=0.0, far=1.0)
    return Signal(name=str(path), layout=layout, coords=rays, values=pixels, eval_coords=eval_rays, eval_values=eval_pixels)


def scene_blocks(signal: Signal, views: int) -> list[Signal]:
    """A scene's training views cut into blocks of ``views`` cameras adjacent in azimuth about the scene's
    up axis (the last, incomplete block is dropped): the signals of a meta-learning dataset, each
    evaluated on its own views, all with the scene's layout (their reconstructions: its held-out views)."""
    layout = signal.layout
    per_view = layout.height * layout.width
    n_views = len(signal) // per_view
    if not 1 <= views <= n_views // 2:
        raise MclnfError(f"--block-views {views}: {signal.name} has {n_views} training views; a block needs at least 1 and a dataset at least 2 blocks")
    cams, up = layout.locate(signal.coords[::per_view]), torch.tensor(layout.up)
    e1 = F.normalize(cams[0] - (cams[0] @ up) * up, dim=0)
    azimuth = torch.atan2(cams @ torch.linalg.cross(up, e1), cams @ e1)
    order = torch.argsort(azimuth)
    block_layout = dataclasses.replace(layout, block_views=views)
    out = []
    for k in range(n_views // views):
        idx = (order[k * views : (k + 1) * views, None] * per_view + torch.arange(per_view)).reshape(-1)
        out.append(Signal(f"{signal.name}#block{k}", block_layout, signal.coords[idx], signal.values[idx]))
    return out
