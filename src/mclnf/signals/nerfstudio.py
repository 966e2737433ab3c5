"""nerfstudio / instant-ngp scenes: a folder with one ``transforms.json`` (read here; the images by :mod:`mclnf.signals.scenes`).

What is read, and whose convention it follows (nerfstudio's ``nerfstudio_dataparser.py`` and instant-ngp's
``src/nerf_loader.cu``; the two agree except where said):

* **Frames** — ``frames``: each a ``file_path`` (relative to the json's folder; ``\\`` read as ``/``, as
  instant-ngp; with or without extension: without one, or when the path as written is missing, ``.png``,
  ``.jpg``, ``.jpeg`` are tried, as instant-ngp's ``resolve_path``; it must resolve inside the folder, as
  for NeRF-synthetic scenes) and a ``transform_matrix``, camera-to-world in the OpenGL convention
  (camera x right, y up, looking along −z; 4 × 4, or its top 3 × 4 rows), used as given. Frames are sorted
  by file name (nerfstudio sorts them so; instant-ngp by natural order).
* **Intrinsics** — ``fl_x``, ``fl_y``, ``cx``, ``cy``, ``w``, ``h`` in pixels of the full-resolution images;
  without ``fl_x``/``fl_y``: ``camera_angle_x``/``camera_angle_y`` (radians) or ``x_fov``/``y_fov``
  (degrees), f = ½·size / tan(½·angle); one focal length alone serves both axes; without ``cx``/``cy`` the
  image centre; without ``w``/``h`` the image's own size (instant-ngp). A frame's own values override the
  file's (instant-ngp's ``read_focal_length``/``read_lens`` per frame; nerfstudio uses a frame's value only
  when the file has none — the two agree whenever only one of them gives it). ``w``/``h`` must be the
  images' size (within a pixel when read from a downscaled folder).
* **Distortion** — ``k1 k2 k3 k4 p1 p2``, OpenCV radial-tangential on y-down normalized coordinates, as
  nerfstudio's ``camera_utils`` (:mod:`mclnf.signals.cameras`): the **rays** are undistorted per pixel
  (Newton's method), the images are used as they are. ``camera_model`` ``OPENCV_FISHEYE`` or
  ``EQUIRECTANGULAR`` and instant-ngp's ``is_fisheye`` are refused (not modelled).
* **Scene box** — when the file has instant-ngp's ``aabb_scale`` (or ``scale``, ``offset``, ``aabb``):
  instant-ngp's, the cube of side ``aabb_scale`` about (0.5, 0.5, 0.5) in its coordinates ``scale·x + offset``
  (defaults 0.33 and 0.5; ``aabb`` sets them so it spans the unit cube), i.e. centre (0.5 − offset)/scale and
  half-size 0.5·aabb_scale/scale in the file's coordinates (1.515 for aabb_scale 1). Without them (nerfstudio
  files, whose scene box is a dataparser option, not in the file) the box is the default of every scene
  (:func:`mclnf.signals.radiance.default_bound`). ``--scene-bound`` overrides either.
* **Near / far** — not in the format: near = 0.05·s (nerfacto's near plane 0.05 at nerfstudio's scale, where
  the cameras span ±1) with s the largest distance of a camera from the cameras' mean; far = the largest
  distance from a camera to a corner of the scene box (else of the cube of half-size s about the cameras'
  mean), so every ray crosses the whole box.
* **Downscaled images** — nerfstudio's convention: ``--factor N`` reads ``images_N/<file name>`` (the file
  name of ``file_path``, whatever its folder) with the intrinsics divided by N; without ``--factor``,
  nerfstudio's automatic choice: the smallest power of two N that brings the longer side under 1600 pixels
  for which ``images_N/`` holds the first frame's file (N = 1: the paths as written).
* **Held-out views** — the file's ``test_filenames`` (else ``val_filenames``), training on
  ``train_filenames`` (else every other frame), as nerfstudio; without them every ``holdout``-th frame
  (0, 8, 16, … by default) is held out: nerfstudio's ``--eval-mode interval`` with its ``eval_interval`` 8
  (its default mode is a 90 % fraction; instant-ngp trains on every frame).
* ``applied_transform`` (nerfstudio: how the file's poses were obtained from the source reconstruction,
  used only to bring its point cloud into their frame) is checked (3 × 4 or 4 × 4) and not applied: the
  poses are already in it.

Every malformed file is one :class:`~mclnf.errors.MclnfError` line naming the file, the frame and the field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mclnf.errors import MclnfError

TRANSFORMS = "transforms.json"
EXTENSIONS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")  # tried, in order, for a file_path that is missing as written
MAX_AUTO_RESOLUTION = 1600  # nerfstudio's: the automatic downscale brings the longer side under this
NGP_SCALE, NGP_OFFSET = 0.33, 0.5  # instant-ngp's NERF_SCALE and default offset
NEAR_FRACTION = 0.05  # nerfacto's near plane, at nerfstudio's scale (cameras within ±1)
FOCAL_KEYS = ("fl_x", "fl_y", "camera_angle_x", "camera_angle_y", "x_fov", "y_fov")
LENS_KEYS = ("cx", "cy", "k1", "k2", "k3", "k4", "p1", "p2")
DISTORTION = ("k1", "k2", "k3", "k4", "p1", "p2")
PINHOLE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "PERSPECTIVE")
BOX_KEYS = ("aabb_scale", "scale", "offset", "aabb")


@dataclass
class TransformsScene:
    """What a ``transforms.json`` says, images not yet read."""

    json: Path
    files: list[Path]  # one image per frame, frames sorted by file name
    poses: np.ndarray  # (V, 4, 4) float64 camera-to-world, OpenGL convention
    intrinsics: list[dict]  # per frame: its own keys over the file's (FOCAL_KEYS, LENS_KEYS, w, h), numbers
    factor: int  # the images are the full-resolution ones downscaled this many times
    split: tuple[list[int], list[int]] | None  # (train, test) from the file's *_filenames, or None: every holdout-th
    center: tuple[float, float, float] | None  # instant-ngp's box (None: the default box)
    bound: float | None


def is_transforms_folder(p: Path) -> bool:
    return p.is_dir() and (p / TRANSFORMS).is_file()


def _number(f: Path, where: str, key: str, value, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MclnfError(f"{f}: {where}{key} {value!r} is not a finite number")
    if positive and value <= 0:
        raise MclnfError(f"{f}: {where}{key} {value!r} must be positive")
    return float(value)


def read_meta(f: Path) -> dict:
    """The json object of a transforms file ``f`` (NeRF-synthetic or nerfstudio), with a ``frames`` list of at least one frame."""
    try:
        meta = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise MclnfError(f"{f}: malformed JSON ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MclnfError(f"{f}: cannot read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise MclnfError(f"{f}: malformed transforms file: expected an object with a 'frames' list")
    if not meta["frames"]:
        raise MclnfError(f"{f}: no frames")
    return meta


def _matrix(f: Path, where: str, key: str, value, shapes=((4, 4), (3, 4))) -> np.ndarray:
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise MclnfError(f"{f}: {where}{key} is not a matrix of numbers") from None
    if m.shape not in shapes:
        raise MclnfError(f"{f}: {where}{key} has shape {m.shape}; expected {' or '.join('×'.join(map(str, s)) for s in shapes)}")
    if not np.isfinite(m).all():
        raise MclnfError(f"{f}: {where}{key} has NaN or infinite entries")
    return m


def _image_path(folder: Path, f: Path, i: int, file_path, factor: int) -> Path:
    """Frame ``i``'s image: ``file_path`` (or, downscaled, ``images_N/<its name>``), extensions tried when missing."""
    if not isinstance(file_path, str) or not file_path:
        raise MclnfError(f"{f}: frame {i}: file_path {file_path!r} is not a path")
    rel = Path(file_path.replace("\\", "/"))
    path = folder / rel if factor == 1 else folder / f"images_{factor}" / rel.name
    if not path.resolve().is_relative_to(folder.resolve()):
        raise MclnfError(f"{f}: frame {i}: file_path {file_path!r} resolves outside the scene folder {folder}; image paths must stay inside it")
    if path.is_file():
        return path
    tried = [path.with_name(path.name + e) for e in EXTENSIONS]
    found = next((q for q in tried if q.is_file()), None)
    if found is None:
        also = f" (nor with {', '.join(EXTENSIONS[:3])})" if path.suffix.lower() not in (".png", ".jpg", ".jpeg") else ""
        raise MclnfError(f"{f}: frame {i}: image file {path} is missing{also}")
    return found


def _auto_factor(folder: Path, f: Path, meta: dict, first: dict) -> int:
    """nerfstudio's automatic downscale: powers of two while the longer side is ≥ 1600 and ``images_{2N}/`` holds the first frame's file."""
    w, h = first.get("w", meta.get("w")), first.get("h", meta.get("h"))
    if w is None or h is None:
        try:
            import imageio.v3 as iio

            h, w = iio.improps(_image_path(folder, f, 0, first.get("file_path"), 1)).shape[:2]
        except MclnfError:
            raise
        except Exception:
            return 1  # unreadable: reported when the images are read
    longest, name = max(float(w), float(h)), Path(str(first.get("file_path", "")).replace("\\", "/")).name
    factor = 1
    while longest / factor >= MAX_AUTO_RESOLUTION:
        nxt = folder / f"images_{2 * factor}" / name
        if not (nxt.is_file() or any(nxt.with_name(nxt.name + e).is_file() for e in EXTENSIONS)):
            break
        factor *= 2
    return factor


def _scene_box(f: Path, meta: dict) -> tuple[tuple[float, float, float] | None, float | None]:
    """instant-ngp's scene box in the file's coordinates (module docstring), or (None, None) without its keys."""
    if not any(k in meta for k in BOX_KEYS):
        return None, None
    aabb_scale = _number(f, "", "aabb_scale", meta.get("aabb_scale", 1), positive=True)
    scale = _number(f, "", "scale", meta.get("scale", NGP_SCALE), positive=True)
    offset = meta.get("offset", NGP_OFFSET)
    if isinstance(offset, list):
        if len(offset) != 3:
            raise MclnfError(f"{f}: offset {offset!r} must be a number or 3 numbers")
        offset = np.array([_number(f, "", "offset", o) for o in offset])
    else:
        offset = np.full(3, _number(f, "", "offset", offset))
    if "aabb" in meta:
        box = _matrix(f, "", "aabb", meta["aabb"], shapes=((2, 3),))
        scale = 1.0 / max(1e-6, float((box[1] - box[0]).max()))
        offset = -box.mean(0) * scale + 0.5
    center = (0.5 - offset) / scale
    return tuple(float(c) for c in center), 0.5 * aabb_scale / scale


def _split(f: Path, meta: dict, folder: Path, files: list[Path], factor: int) -> tuple[list[int], list[int]] | None:
    """nerfstudio's ``train_filenames`` / ``val_filenames`` / ``test_filenames`` as (train, test) frame indices."""
    if not any(f"{s}_filenames" in meta for s in ("train", "val", "test")):
        return None
    index = {q.resolve().with_suffix(""): k for k, q in enumerate(files)}

    def frames_of(key: str) -> list[int]:
        names = meta[key]
        if not isinstance(names, list) or not names:
            raise MclnfError(f"{f}: {key} must be a non-empty list of file paths")
        out = []
        for name in names:
            rel = Path(str(name).replace("\\", "/"))
            q = (folder / rel if factor == 1 else folder / f"images_{factor}" / rel.name).resolve()
            k = index.get(q.with_suffix(""), index.get(q))
            if k is None:
                raise MclnfError(f"{f}: {key}: {name!r} is not the file_path of any frame")
            out.append(k)
        return sorted(set(out))

    held = next((k for k in ("test_filenames", "val_filenames") if k in meta), None)
    if held is None:
        raise MclnfError(f"{f}: train_filenames without test_filenames or val_filenames: no held-out views")
    test = frames_of(held)
    train = frames_of("train_filenames") if "train_filenames" in meta else [k for k in range(len(files)) if k not in set(test)]
    if not train:
        raise MclnfError(f"{f}: every frame is held out by {held}; no training views")
    return train, test


def read_transforms(folder: Path, factor: int | None = None) -> TransformsScene:
    """Parse ``folder/transforms.json`` (module docstring); ``factor`` reads ``images_{factor}/`` (None: nerfstudio's automatic choice)."""
    f = folder / TRANSFORMS
    meta = read_meta(f)
    model = meta.get("camera_model", "OPENCV")
    if model not in PINHOLE_MODELS:
        raise MclnfError(f"{f}: camera_model {model!r} is not supported (only perspective cameras: {', '.join(PINHOLE_MODELS)})")
    if meta.get("is_fisheye"):
        raise MclnfError(f"{f}: is_fisheye: fisheye lenses are not supported (only perspective cameras)")
    if "applied_transform" in meta:
        _matrix(f, "", "applied_transform", meta["applied_transform"])
    for k, frame in enumerate(meta["frames"]):
        if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
            raise MclnfError(f"{f}: frame {k} needs file_path and transform_matrix")
    frames = sorted(meta["frames"], key=lambda fr: str(fr["file_path"]).replace("\\", "/"))
    if factor is None:
        factor = _auto_factor(folder, f, meta, frames[0])
    elif factor != 1 and not (folder / f"images_{factor}").is_dir():
        raise MclnfError(f"{folder}: --factor {factor}: no images_{factor}/ folder beside {TRANSFORMS}")
    files, poses, intrinsics = [], [], []
    for i, frame in enumerate(frames):
        where = f"frame {i} ({frame['file_path']}): "
        files.append(_image_path(folder, f, i, frame["file_path"], factor))
        m = _matrix(f, where, "transform_matrix", frame["transform_matrix"])
        poses.append(np.concatenate([m, [[0.0, 0.0, 0.0, 1.0]]]) if m.shape[0] == 3 else m)
        own = {}
        source = frame if any(k in frame for k in FOCAL_KEYS) else meta  # the focal length: the frame's, else the file's
        for key in FOCAL_KEYS:
            if key in source:
                own[key] = _number(f, where if source is frame else "", key, source[key], positive=True)
        for key in (*LENS_KEYS, "w", "h"):
            if key in frame or key in meta:
                own[key] = _number(f, where if key in frame else "", key, frame.get(key, meta.get(key)), positive=key in ("w", "h"))
        if not any(k in own for k in FOCAL_KEYS):
            raise MclnfError(f"{f}: {where}missing intrinsics: no fl_x/fl_y (or camera_angle_x/camera_angle_y) in the frame or the file")
        for key in ("camera_angle_x", "camera_angle_y"):
            if key in own and not own[key] < math.pi:
                raise MclnfError(f"{f}: {where}{key} {own[key]} must lie in (0, π) radians")
        intrinsics.append(own)
    center, bound = _scene_box(f, meta)
    return TransformsScene(f, files, np.stack(poses), intrinsics, factor, _split(f, meta, folder, files, factor), center, bound)


def resolve_cameras(scene: TransformsScene, height: int, width: int) -> np.ndarray:
    """Each frame's camera (V, 10: fx fy cx cy k1 k2 k3 k4 p1 p2, :mod:`mclnf.signals.cameras`) for its image of
    ``height`` × ``width`` pixels; ``w``/``h`` that disagree with the images' size are an error naming the frame."""
    n, f = scene.factor, scene.json
    out = np.zeros((len(scene.files), 10))
    for i, (own, path) in enumerate(zip(scene.intrinsics, scene.files)):
        w, h = own.get("w", width * n), own.get("h", height * n)
        if abs(w / n - width) >= (1 if n > 1 else 1e-9) or abs(h / n - height) >= (1 if n > 1 else 1e-9):
            says = f"w, h = {w:g}, {h:g}" + (f" divided by {n} ({w / n:g} × {h / n:g})" if n > 1 else "")
            raise MclnfError(f"{path}: image is {width} × {height} pixels but {f}'s {says} for frame {i}")

        def focal(axis: str, size: float) -> float | None:
            if f"{axis}_fov" in own:
                return 0.5 * size / math.tan(0.5 * math.radians(own[f"{axis}_fov"]))
            if f"fl_{axis}" in own:
                return own[f"fl_{axis}"]
            if f"camera_angle_{axis}" in own:
                return 0.5 * size / math.tan(0.5 * own[f"camera_angle_{axis}"])
            return None

        fx, fy = focal("x", w), focal("y", h)
        fx, fy = fx or fy, fy or fx
        out[i] = [fx / n, fy / n, own.get("cx", w / 2) / n, own.get("cy", h / 2) / n, *(own.get(k, 0.0) for k in DISTORTION)]
    return out


def near_far(poses: np.ndarray, center, bound) -> tuple[float, float]:
    """Near and far depths (module docstring) for camera-to-world ``poses`` (V, 4, 4) and the file's box (or None)."""
    cams = poses[:, :3, 3]
    mean = cams.mean(0)
    s = float(np.linalg.norm(cams - mean, axis=1).max())
    if center is None:
        center, bound = mean, (s if s > 0 else 1.0)
    s = s if s > 0 else float(bound)
    corners = np.asarray(center) + float(bound) * np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)])
    far = float(np.linalg.norm(cams[:, None] - corners[None], axis=-1).max())
    near = NEAR_FRACTION * s
    return near, max(far, 2 * near)
