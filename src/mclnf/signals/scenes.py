"""Posed images of one scene for radiance fields (NeRF): ``.npz`` files, NeRF-synthetic, nerfstudio/instant-ngp and LLFF folders.

Every loader gives :class:`PosedImages`: RGB images in [0, 1] (an alpha channel is composited on white),
camera-to-world poses in the OpenGL/NeRF convention (camera x right, y up, looking along -z), one focal
length in pixels (square pixels, principal point at the image centre) — or, for nerfstudio/instant-ngp
scenes, each view's own camera (focal lengths, principal point, lens distortion: :mod:`mclnf.signals.cameras`)
— near/far bounds and a split. A folder's format is told by its files: ``transforms_train.json`` →
NeRF-synthetic; else ``transforms.json`` → nerfstudio/instant-ngp; else ``poses_bounds.npy`` → LLFF.

- ``.npz`` (``images_rgba`` (V, H, W, 4) or ``images`` (V, H, W, 3), ``poses`` (V, 4, 4) or (V, 3, 4),
  ``focal`` or ``camera_angle_x``, optional ``near``/``far``, 2 and 6 when absent): every ``holdout``-th
  view (0, holdout, 2·holdout, …) is held out, as LLFF's ``llffhold``.
- NeRF-synthetic folder (``transforms_{train,val,test}.json``): train views from ``transforms_train.json``,
  held-out views from ``transforms_test.json`` (``transforms_val.json`` without it); near 2, far 6;
  focal = 0.5·W / tan(0.5·camera_angle_x). Every frame's ``file_path`` must resolve (``..`` and symlinks
  followed) inside the scene folder; one that leads out of it is refused.
- nerfstudio / instant-ngp folder (one ``transforms.json``): :mod:`mclnf.signals.nerfstudio` reads the file
  (intrinsics, distortion, ``aabb_scale``, split, ``images_N/``; its docstring says whose convention each
  follows); every view's rays come from its own camera (:meth:`PosedImages.view_rays`). All images must have
  one size.
- LLFF folder (``poses_bounds.npy`` and ``images/`` or ``images_N/``), read as NeRF's ``load_llff_data``
  reads it: the images of ``images_N/`` (``factor`` N; without it ``images/`` when present, else the
  ``images_N/`` of the smallest N) must be the file's full-resolution H×W divided by N (within a pixel,
  as LLFF's own downscaling rounds), and the focal length is the file's f / N. LLFF's [down, right,
  backwards] rotation columns become [right, up, backwards]; translations and depth bounds are scaled by
  1 / (0.75·min(bounds)) (NeRF's ``bd_factor``: the nearest depth becomes 1/0.75), then every pose is
  recentred so that the average pose (mean centre, summed back and up axes; NeRF's ``poses_avg``) is the
  identity. Near = 0.9·min(bounds), far = max(bounds), after the scaling. Such a scene is
  ``forward_facing``: radiance fields render it in normalized device coordinates by default
  (:func:`mclnf.signals.rays.ndc_rays`). NeRF's ``spherify`` and spiral render path are not done.

``resize`` scales the images so the longer side has that many pixels (bilinear, no antialiasing, after
compositing) and the focal length by the same factor (per-view cameras: fx, cx by the width's factor, fy,
cy by the height's).
"""

from __future__ import annotations

import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mclnf.errors import MclnfError
from mclnf.signals.cameras import general_camera_rays, scale_cameras
from mclnf.signals.image import SUFFIXES, composite_on_white, read_image, resize_longer_side
from mclnf.signals.nerfstudio import is_transforms_folder, near_far, read_meta, read_transforms, resolve_cameras
from mclnf.signals.rays import camera_rays

BLENDER_NEAR, BLENDER_FAR = 2.0, 6.0  # the NeRF-synthetic convention
LLFF_BD_FACTOR = 0.75  # NeRF's bd_factor: the nearest depth bound becomes 1 / 0.75 after scaling


@dataclass
class PosedImages:
    """Posed views of one scene."""

    name: str  # the path as given
    images: torch.Tensor  # (V, H, W, 3) float32 in [0, 1]
    poses: torch.Tensor  # (V, 4, 4) float32 camera-to-world, OpenGL convention
    focal: float  # pixels, for the (possibly resized) images
    near: float
    far: float
    train: list[int]  # indices of training views
    test: list[int]  # indices of held-out views
    forward_facing: bool = False  # an LLFF capture (recentred; rendered in NDC by default)
    cameras: torch.Tensor | None = None  # (V, 10) float64 each view's own camera (fx fy cx cy k1 k2 k3 k4 p1 p2), or None: the pinhole of ``focal``
    center: tuple[float, float, float] | None = None  # the scene box the file gives (instant-ngp's aabb_scale), or None: the default box
    bound: float | None = None

    @property
    def height(self) -> int:
        return self.images.shape[1]

    @property
    def width(self) -> int:
        return self.images.shape[2]

    def view_rays(self, index: int) -> torch.Tensor:
        """The rays (H·W, 6: origin, direction) through the pixel centres of view ``index``, row-major."""
        if self.cameras is None:
            return torch.cat(camera_rays(self.height, self.width, self.focal, self.poses[index]), -1)
        return torch.cat(general_camera_rays(self.height, self.width, self.cameras[index], self.poses[index], f"{self.name}: view {index}"), -1)

    def rays(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rays (V·H·W, 6) and their pixels (V·H·W, 3) of the views ``indices``."""
        return torch.cat([self.view_rays(i) for i in indices]), self.images[indices].reshape(-1, 3)


def is_scene(path: str | Path) -> bool:
    """Whether ``path`` looks like a scene: a ``.npz`` file, or a folder holding ``transforms_train.json``, ``transforms.json`` or ``poses_bounds.npy``."""
    p = Path(path)
    if p.is_file():
        return p.suffix.lower() == ".npz"
    return p.is_dir() and any((p / name).is_file() for name in ("transforms_train.json", "transforms.json", "poses_bounds.npy"))


def load_posed_images(path: str | Path, *, resize: int | None = None, holdout: int = 8, factor: int | None = None) -> PosedImages:
    """Load a scene (``.npz``, NeRF-synthetic, nerfstudio/instant-ngp or LLFF folder, see the module docstring).

    ``resize`` (0 or None keeps the size) scales the longer side to that many pixels and the focal length
    with it; ``holdout`` (≥ 2) picks every ``holdout``-th view for testing in ``.npz`` and LLFF scenes and
    ``transforms.json`` files without a split; ``factor`` (LLFF, nerfstudio) reads ``images_{factor}/``
    (1: ``images/`` for LLFF, the file paths as written for nerfstudio).
    """
    p = Path(path)
    if holdout < 2:
        raise MclnfError(f"{p}: holdout {holdout} must be at least 2")
    if resize is not None and resize < 0:
        raise MclnfError(f"{p}: resize {resize} must be a positive number of pixels (0 keeps the size)")
    if factor is not None and factor < 1:
        raise MclnfError(f"--factor {factor}: must be a positive integer")
    if not p.exists():
        raise MclnfError(f"{p}: no such file or folder")
    blender = p.is_dir() and (p / "transforms_train.json").is_file()
    studio = not blender and is_transforms_folder(p)
    llff = p.is_dir() and not blender and not studio and (p / "poses_bounds.npy").is_file()
    if factor is not None and not (llff or studio):
        raise MclnfError(f"--factor {factor}: only LLFF folders (poses_bounds.npy with images_N/) and nerfstudio folders (transforms.json with images_N/) "
                         f"have downscaled image folders; {p} is neither")  # fmt: skip
    cameras, box = None, (None, None)
    if p.is_dir():
        if blender:
            images, poses, focal, near, far, train, test = _load_blender(p)
        elif studio:
            images, poses, cameras, near, far, split, box = _load_transforms(p, factor)
            focal = float(cameras[0, 0])
            train, test = split or _holdout_split(p / "transforms.json", len(images), holdout)
        elif llff:
            images, poses, focal, near, far = _load_llff(p, factor)
            train, test = _holdout_split(p, len(images), holdout)
        else:
            raise MclnfError(f"{p}: not a scene folder (no transforms_train.json, transforms.json or poses_bounds.npy)")
    elif p.suffix.lower() == ".npz":
        images, poses, focal, near, far = _load_npz(p)
        train, test = _holdout_split(p, len(images), holdout)
    else:
        raise MclnfError(f"{p}: unsupported scene format {p.suffix or '(no suffix)'}; expected a .npz file or a NeRF-synthetic, nerfstudio or LLFF folder")

    _check_scene(p, images, poses, focal, near, far)
    images = composite_on_white(images)
    if images.shape[-1] == 1:
        images = images.expand(-1, -1, -1, 3)
    if resize:
        old_h, old_w = images.shape[1:3]
        images = resize_longer_side(images, resize)
        focal *= images.shape[2] / old_w
        if cameras is not None:
            cameras = scale_cameras(cameras, images.shape[2] / old_w, images.shape[1] / old_h)
    return PosedImages(
        name=str(path),
        images=images.float().contiguous(),
        poses=poses.float().contiguous(),
        focal=float(focal),
        near=float(near),
        far=float(far),
        train=train,
        test=test,
        forward_facing=llff,
        cameras=cameras,
        center=box[0],
        bound=box[1],
    )


def _holdout_split(p: Path, views: int, holdout: int) -> tuple[list[int], list[int]]:
    test = list(range(0, views, holdout))
    train = [i for i in range(views) if i % holdout]
    if not train or not test:
        raise MclnfError(f"{p}: {views} view(s) with holdout {holdout} leave no {'training' if not train else 'test'} views")
    return train, test


def _to_unit(p: Path, pixels: np.ndarray, what: str) -> torch.Tensor:
    """uint8/uint16 or floats in [0, 1] → float32 tensor in [0, 1]."""
    if pixels.dtype == np.uint8:
        return torch.from_numpy(pixels.astype(np.float32) / 255.0)
    if pixels.dtype == np.uint16:
        return torch.from_numpy(pixels.astype(np.float32) / 65535.0)
    if np.issubdtype(pixels.dtype, np.floating):
        if not np.isfinite(pixels).all():
            raise MclnfError(f"{p}: {what} contain NaN or infinite values")
        if pixels.size and (pixels.min() < 0 or pixels.max() > 1):
            raise MclnfError(f"{p}: floating-point {what} must lie in [0, 1], found [{pixels.min():.3g}, {pixels.max():.3g}]")
        return torch.from_numpy(pixels.astype(np.float32))
    raise MclnfError(f"{p}: unsupported pixel type {pixels.dtype} of {what}")


def _as_poses(p: Path, poses: np.ndarray, what: str = "poses") -> torch.Tensor:
    """(V, 4, 4) or (V, 3, 4) camera-to-world matrices → (V, 4, 4) float32 tensor."""
    if poses.ndim != 3 or poses.shape[1:] not in ((4, 4), (3, 4)):
        raise MclnfError(f"{p}: {what} have shape {poses.shape}; expected (V, 4, 4) or (V, 3, 4)")
    if not np.issubdtype(poses.dtype, np.number) or not np.isfinite(poses).all():
        raise MclnfError(f"{p}: {what} contain NaN, infinite or non-numeric values")
    if poses.shape[1] == 3:
        bottom = np.broadcast_to(np.array([0, 0, 0, 1], dtype=poses.dtype), (poses.shape[0], 1, 4))
        poses = np.concatenate([poses, bottom], 1)
    return torch.from_numpy(poses.astype(np.float32))


def _check_scene(p: Path, images: torch.Tensor, poses: torch.Tensor, focal: float, near: float, far: float) -> None:
    if len(images) != len(poses):
        raise MclnfError(f"{p}: {len(images)} images but {len(poses)} poses")
    if not (math.isfinite(focal) and focal > 0):
        raise MclnfError(f"{p}: focal length {focal} must be positive")
    if not (math.isfinite(near) and math.isfinite(far)) or near < 0 or near >= far:
        raise MclnfError(f"{p}: near {near} and far {far} must satisfy 0 <= near < far")


def _scalar(p: Path, data, key: str) -> float:
    value = np.asarray(data[key])
    if value.size != 1 or not np.issubdtype(value.dtype, np.number):
        raise MclnfError(f"{p}: '{key}' must be a single number, found shape {value.shape} of {value.dtype}")
    return float(value.reshape(()))


def _load_npz(p: Path):
    if not p.is_file():
        raise MclnfError(f"{p}: not a regular file")
    if not zipfile.is_zipfile(p):
        raise MclnfError(f"{p}: not a valid .npz file (not a zip archive)")
    try:
        with np.load(p, allow_pickle=False) as data:
            keys = set(data.files)
            image_key = "images_rgba" if "images_rgba" in keys else "images"
            missing = [k for k in (image_key, "poses") if k not in keys]
            if "focal" not in keys and "camera_angle_x" not in keys:
                missing.append("focal (or camera_angle_x)")
            if missing:
                raise MclnfError(f"{p}: missing key(s) {', '.join(missing)}; found {', '.join(sorted(keys)) or 'none'}")
            pixels, poses = np.asarray(data[image_key]), np.asarray(data["poses"])
            if pixels.ndim != 4 or pixels.shape[-1] not in (3, 4) or 0 in pixels.shape:
                raise MclnfError(f"{p}: '{image_key}' has shape {pixels.shape}; expected (V, H, W, 3) or (V, H, W, 4)")
            if "focal" in keys:
                focal = _scalar(p, data, "focal")
            else:
                focal = 0.5 * pixels.shape[2] / math.tan(0.5 * _scalar(p, data, "camera_angle_x"))
            near = _scalar(p, data, "near") if "near" in keys else BLENDER_NEAR
            far = _scalar(p, data, "far") if "far" in keys else BLENDER_FAR
    except MclnfError:
        raise
    except Exception as e:  # zipfile, zlib and numpy raise many types for corrupt archives
        raise MclnfError(f"{p}: not a valid .npz file ({type(e).__name__}: {_first_line(e)})") from None
    return _to_unit(p, pixels, f"'{image_key}'"), _as_poses(p, poses), focal, near, far


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else "corrupt file"


def _read_views(p: Path, files: list[Path]) -> torch.Tensor:
    """The image files of a folder scene, same size, as (V, H, W, C) in [0, 1] (C in 1…4, alpha not composited)."""
    views = []
    for f in files:
        if not f.is_file():
            raise MclnfError(f"{p}: image file {f} is missing")
        pixels = read_image(f)  # raises MclnfError naming f when unreadable
        if views and pixels.shape != views[0][1].shape:
            raise MclnfError(f"{p}: images of different sizes: {files[0].name} is {views[0][1].shape}, {f.name} is {pixels.shape}")
        views.append((f, pixels))
    return torch.stack([_to_unit(f, pixels, "pixels") for f, pixels in views])


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` resolves (``..`` and symlinks followed) to ``folder`` or somewhere below it."""
    return path.resolve().is_relative_to(folder.resolve())


def _load_blender(p: Path):
    held_out = next((p / f"transforms_{s}.json" for s in ("test", "val") if (p / f"transforms_{s}.json").is_file()), None)
    if held_out is None:
        raise MclnfError(f"{p}: no held-out views (neither transforms_test.json nor transforms_val.json)")
    files, matrices, angle = [], [], None
    counts = []
    for jf in (p / "transforms_train.json", held_out):
        meta = read_meta(jf)
        if angle is None:
            if "camera_angle_x" not in meta:
                raise MclnfError(f"{jf}: missing key camera_angle_x")
            try:
                angle = float(meta["camera_angle_x"])
            except (TypeError, ValueError):
                raise MclnfError(f"{jf}: camera_angle_x {meta['camera_angle_x']!r} is not a number") from None
            if not (math.isfinite(angle) and 0 < angle < math.pi):
                raise MclnfError(f"{jf}: camera_angle_x {angle} must lie in (0, π)")
        for i, frame in enumerate(meta["frames"]):
            if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
                raise MclnfError(f"{jf}: frame {i} needs file_path and transform_matrix")
            name = Path(str(frame["file_path"]))
            files.append(p / (name if name.suffix.lower() in SUFFIXES else name.with_name(name.name + ".png")))
            if not _inside(files[-1], p):
                raise MclnfError(f"{jf}: frame {i}: file_path {frame['file_path']!r} resolves outside the scene folder {p}; image paths must stay inside it")
            try:
                matrices.append(np.asarray(frame["transform_matrix"], dtype=np.float64))
            except (TypeError, ValueError):
                raise MclnfError(f"{jf}: frame {i}: transform_matrix is not a matrix of numbers") from None
            if matrices[-1].shape not in ((4, 4), (3, 4)):
                raise MclnfError(f"{jf}: frame {i}: transform_matrix has shape {matrices[-1].shape}; expected 4×4 or 3×4")
        counts.append(len(meta["frames"]))
    poses = _as_poses(p, np.stack([np.concatenate([m, [[0, 0, 0, 1]]]) if m.shape[0] == 3 else m for m in matrices]))
    images = _read_views(p, files)
    focal = 0.5 * images.shape[2] / math.tan(0.5 * angle)
    train, test = list(range(counts[0])), list(range(counts[0], counts[0] + counts[1]))
    return images, poses, focal, BLENDER_NEAR, BLENDER_FAR, train, test


def _load_transforms(p: Path, factor: int | None):
    """A nerfstudio / instant-ngp folder (:mod:`mclnf.signals.nerfstudio`): images, poses, per-view cameras (V, 10), near, far, split, box."""
    scene = read_transforms(p, factor)
    images = _read_views(p, scene.files)
    cameras = torch.from_numpy(resolve_cameras(scene, images.shape[1], images.shape[2]))
    poses = _as_poses(scene.json, scene.poses)
    near, far = near_far(scene.poses, scene.center, scene.bound)
    return images, poses, cameras, near, far, scene.split, (scene.center, scene.bound)


def _read_poses_bounds(f: Path) -> np.ndarray:
    """The array of an LLFF ``poses_bounds.npy``; anything that is not a plain .npy array is refused in one line
    (never with numpy's hint to load it with ``allow_pickle``: such a file is not a poses_bounds.npy)."""
    expected = "expected an N × 17 float array saved by numpy.save"
    try:
        with open(f, "rb") as fh:
            if fh.read(6) != b"\x93NUMPY":
                raise MclnfError(f"{f}: not a valid poses_bounds.npy: not a NumPy .npy file ({expected})")
            fh.seek(0)
            return np.load(fh, allow_pickle=False)
    except (ValueError, EOFError, TypeError, SyntaxError):  # numpy's errors for bad headers, object arrays and truncated data
        raise MclnfError(f"{f}: not a valid poses_bounds.npy: damaged, truncated or holding Python objects ({expected})") from None
    except OSError as e:
        raise MclnfError(f"{f}: cannot read ({type(e).__name__}: {_first_line(e)})") from None


def _llff_image_folder(p: Path, factor: int | None) -> tuple[Path, int]:
    """The image folder of an LLFF scene and its downscaling factor: ``images_{factor}/`` (1: ``images/``), or,
    without a factor, ``images/`` when present, else the ``images_N/`` of the smallest N (NeRF's ``_load_data``)."""
    found = {1: p / "images"} if (p / "images").is_dir() else {}
    for q in p.iterdir():
        m = re.fullmatch(r"images_([0-9]+)", q.name)
        if m and int(m[1]) >= 1 and q.is_dir():
            found.setdefault(int(m[1]), q)
    have = ", ".join(f"{found[n].name}/" for n in sorted(found)) or "none"
    if factor is None:
        if not found:
            raise MclnfError(f"{p}: no images/ or images_N/ folder beside poses_bounds.npy")
        factor = min(found)
    elif factor not in found:
        name = "images" if factor == 1 else f"images_{factor}"
        raise MclnfError(f"{p}: --factor {factor}: no {name}/ folder beside poses_bounds.npy (image folders: {have})")
    return found[factor], factor


def average_pose(c2w: np.ndarray) -> np.ndarray:
    """The average (4, 4) of camera-to-world poses (V, ≥3, 4) (NeRF's ``poses_avg``): the mean camera centre, the
    normalized sum of the back axes, and the summed up axes made orthogonal to it (right = up × back)."""
    back = c2w[:, :3, 2].sum(0)
    back = back / np.linalg.norm(back)
    right = np.cross(c2w[:, :3, 1].sum(0), back)
    right = right / np.linalg.norm(right)
    avg = np.eye(4)
    avg[:3] = np.stack([right, np.cross(back, right), back, c2w[:, :3, 3].mean(0)], 1)
    return avg


def _load_llff(p: Path, factor: int | None = None):
    f = p / "poses_bounds.npy"
    arr = _read_poses_bounds(f)
    if arr.ndim != 2 or arr.shape[1] != 17 or arr.shape[0] == 0:
        raise MclnfError(f"{f}: shape {arr.shape}; expected (N, 17): a 3×5 [R | t | hwf] and 2 depth bounds per view")
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
        raise MclnfError(f"{f}: contains NaN, infinite or non-numeric values")
    arr = arr.astype(np.float64)
    m, bounds = arr[:, :15].reshape(-1, 3, 5), arr[:, 15:]
    full_h, full_w, full_f = m[0, :, 4]
    if full_h <= 0 or full_w <= 0 or full_f <= 0:
        raise MclnfError(f"{f}: image height {full_h:g}, width {full_w:g} and focal {full_f:g} of the first view must be positive")
    image_dir, factor = _llff_image_folder(p, factor)
    if bounds.min() <= 0 or (bounds[:, 0] >= bounds[:, 1]).any():
        raise MclnfError(f"{f}: depth bounds must satisfy 0 < near < far for every view, found near {bounds[:, 0].min():g} to far {bounds[:, 1].max():g}")
    files = sorted(q for q in image_dir.iterdir() if q.suffix.lower() in SUFFIXES)
    if len(files) != len(arr):
        raise MclnfError(f"{image_dir}: {len(files)} image(s) but poses_bounds.npy has {len(arr)} views")
    images = _read_views(p, files)
    h, w = images.shape[1:3]
    if abs(h - full_h / factor) >= 1 or abs(w - full_w / factor) >= 1:
        raise MclnfError(f"{image_dir}: images are {h}×{w} pixels but poses_bounds.npy's {full_h:g}×{full_w:g} "
                         f"divided by {factor} is {full_h / factor:g}×{full_w / factor:g}; the folder does not hold the images of that factor")  # fmt: skip
    # LLFF rotation columns [down, right, backwards] → OpenGL [right, up, backwards]
    c2w = np.concatenate([m[:, :, 1:2], -m[:, :, 0:1], m[:, :, 2:4]], 2)
    scale = 1.0 / (bounds.min() * LLFF_BD_FACTOR)
    c2w[:, :, 3] *= scale
    bounds = bounds * scale
    c2w = np.concatenate([c2w, np.broadcast_to(np.array([0.0, 0.0, 0.0, 1.0]), (len(c2w), 1, 4))], 1)
    c2w = np.linalg.inv(average_pose(c2w)) @ c2w
    return images, _as_poses(f, c2w), full_f / factor, 0.9 * float(bounds.min()), float(bounds.max())
