"""``mclnf render``: evaluate the field of any run — fit, continual, meta-train — and write it in its signal's form.

What a run renders:

* a ``fit`` run (or its ``field.safetensors``): the fitted field;
* a ``continual`` run: its learner's final field (the modular learner's whole field, every module routed
  to its region), rebuilt from ``checkpoint.pt`` and the run's signal (which gives the task regions, so it
  must still be where the run read it); a ``--learner all`` run renders every learner's field into its
  sub-folder, or only ``--learner NAME``'s;
* a ``meta-train`` run (or its ``init.safetensors``): θ₀ itself, or with ``--adapt-steps N`` θ₀ adapted
  to SIGNAL by the method's test-time learner (the inner loop's SGD at the inner learning rate, N steps per
  task on SIGNAL's task stream, as ``mclnf meta-test`` does).

Super-resolution (``--resolution``, ``--scale``): the field evaluated on a denser grid spanning the same
[-1, 1] coordinates as in training (pixel centres at ±1 on both grids), so it is the same signal, sampled
more finely — images and video frames (H W), audio (samples: the sample rate grows with them), scenes (the
views' H W, the focal length scaled with W), meshes (the marching-cubes grid).

Scenes along a camera path (``--camera-path``): ``orbit`` — ``--frames`` cameras on a circle about the
scene's centre at the mean distance and elevation of its held-out cameras (the training cameras' sample
that the run keeps; forward-facing scenes: a circle in the average camera's image plane) — or a JSON file
of camera-to-world matrices (:func:`mclnf.signals.rays.read_camera_path`), rendered with the run's
camera (size, focal length) into an MP4, or PNG frames when ``--out`` is a folder.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path

import torch

from mclnf.config import ContinualConfig, DeviceOptions, learner_options, load_configured_signal, loader_options
from mclnf.errors import MclnfError
from mclnf.fields import Field
from mclnf.io import atomic_path, load_checkpoint
from mclnf.learners import CONTINUAL_LEARNERS, LearnerOptions
from mclnf.options import check_positive_int, option
from mclnf.resources import check_fits
from mclnf.runs import load_field, load_init, write_reconstruction
from mclnf.runtime import on_device, tensors_to
from mclnf.signals import Layout, load_signal, signal_kind
from mclnf.signals.base import Predict
from mclnf.signals.image import ImageLayout
from mclnf.signals.radiance import image_plane_circle, turntable_poses
from mclnf.signals.rays import read_camera_path
from mclnf.signals.tasks import split_signal
from mclnf.signals.video import VideoLayout
from mclnf.train import learn_task

GRID_SIZE = {"image": 2, "video": 2, "radiance": 2, "audio": 1, "occupancy": 1}  # numbers --resolution takes per kind
PATH_FPS = 20.0
ORBIT_FRAMES = 48


@dataclass(kw_only=True)
class RenderConfig(DeviceOptions):
    """render"""

    run: Path = option(dataclasses.MISSING, "a fit, continual or meta-train run folder (or its field.safetensors / init.safetensors)", positional=True)
    signal: str | None = option(None, "meta-train runs: the signal θ₀ is adapted to (with --adapt-steps), loaded with the run's loader options", positional=True)
    adapt_steps: int | None = option(None, "meta-train runs: render θ₀ adapted to SIGNAL for N steps per task (default: θ₀ itself)", metavar="N")
    learner: str | None = option(None, "continual --learner all runs: render only this learner's field (default: every learner's)", choices=tuple(CONTINUAL_LEARNERS))
    resolution: tuple[int, ...] | None = option(None, "image, video, scene: H W of the output (a denser grid: super-resolution); audio: samples; mesh: marching-cubes grid N "
                                                "(default: the run's)", metavar="N")  # fmt: skip
    scale: float | None = option(None, "S times the run's resolution (images, video frames and scene views: H and W; audio: samples; mesh: grid)", metavar="S")
    camera_path: str | None = option(None, "scene: orbit (around the scene's centre) or a JSON file of camera-to-world matrices (nerfstudio camera paths too); writes a video", metavar="orbit|FILE")
    frames: int | None = option(None, f"--camera-path orbit: number of frames (default: {ORBIT_FRAMES})", metavar="N")
    out: Path | None = option(None, "output file (default: RUN/render.<png|wav|mp4|ply>; camera paths: RUN/render_<path>.mp4, or a folder for PNG frames)")

    def check(self):
        check_positive_int(self, "adapt_steps", "frames")
        if self.resolution is not None and (not self.resolution or any(n < 1 for n in self.resolution)):
            raise MclnfError(f"--resolution {' '.join(map(str, self.resolution))}: sizes must be positive integers")
        if self.scale is not None and not (0 < self.scale < math.inf):
            raise MclnfError(f"--scale {self.scale}: must be a positive finite number")
        if self.frames is not None and self.camera_path != "orbit":
            raise MclnfError("--frames: only with --camera-path orbit")
        if self.resolution is not None and self.scale is not None:
            raise MclnfError("--resolution and --scale: give one of them")
        if (self.signal is None) != (self.adapt_steps is None):
            raise MclnfError("--adapt-steps and SIGNAL: give both (θ₀ adapted to SIGNAL) or neither (θ₀ itself)")


@dataclass
class Source:
    """One field to render: its prediction of samples (CPU in, CPU out), its layout and where its outputs go by default."""

    predict: Predict
    layout: Layout
    folder: Path
    stem: str = "render"


# ---- what a run holds ----------------------------------------------------------------------------
def sources(cfg: RenderConfig, device: torch.device) -> list[Source]:
    """The fields ``cfg.run`` holds (one, or one per learner of a continual ``--learner all`` run)."""
    path = Path(cfg.run)
    kind = run_kind(path)
    if kind != "meta-train" and cfg.adapt_steps is not None:
        raise MclnfError(f"--adapt-steps: only meta-train runs adapt θ₀; {path} is a {kind} run")
    if kind != "continual-all" and cfg.learner is not None:
        raise MclnfError(f"--learner: only for continual --learner all runs; {path} is a {kind} run")
    if kind == "fit":
        field, layout = load_field(path)
        check_options(cfg, layout)
        return [Source(field_predict(field, layout, device), layout, folder_of(path))]
    if kind == "meta-train":
        return [meta_source(cfg, path, device)]
    if kind == "continual":
        return [continual_source(cfg, path, device)]
    learners = [n for n in CONTINUAL_LEARNERS if (path / n / "checkpoint.pt").is_file()]
    if cfg.learner is not None and cfg.learner not in learners:
        raise MclnfError(f"--learner {cfg.learner}: {path} holds no {cfg.learner} run (it holds {', '.join(learners) or 'none yet'})")
    chosen = [cfg.learner] if cfg.learner else learners
    if len(chosen) > 1 and cfg.out is not None:
        raise MclnfError(f"--out {cfg.out}: {path} holds {len(chosen)} learners' fields; choose one with --learner")
    return [continual_source(cfg, path / n, device) for n in chosen]


def run_kind(path: Path) -> str:
    """``fit``, ``meta-train``, ``continual`` or ``continual-all``, from the files ``path`` holds (or is)."""
    if path.is_file():
        return "meta-train" if path.name == "init.safetensors" else "fit"
    if not path.is_dir():
        raise MclnfError(f"{path}: no such run folder or file")
    if (path / "field.safetensors").is_file():
        return "fit"
    if (path / "init.safetensors").is_file():
        return "meta-train"
    if (path / "checkpoint.pt").is_file():
        return "continual"
    if any((path / n / "checkpoint.pt").is_file() for n in CONTINUAL_LEARNERS):
        return "continual-all"
    raise MclnfError(f"{path}: no field to render (a fit run's field.safetensors, a meta-train run's init.safetensors or a continual run's checkpoint.pt)")


def folder_of(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def field_predict(field: Field, layout: Layout, device: torch.device) -> Predict:
    """The signal's samples → values as ``field`` (moved to ``device``) makes them, CPU in and out."""
    field.to(device)
    return on_device(lambda x: layout.observe(field, x), device)


def continual_source(cfg: RenderConfig, folder: Path, device: torch.device) -> Source:
    """A continual run's learner after its last finished task, rebuilt on the run's signal and task stream."""
    ck = load_checkpoint(folder / "checkpoint.pt", ("config", "rows", "learner"))
    run = config_from_dict(ContinualConfig, ck["config"], folder / "checkpoint.pt")
    try:
        signal = load_configured_signal(run)
    except MclnfError as e:
        raise MclnfError(f"{folder}: its signal is needed to rebuild the learner's task regions, but {e}") from None
    check_options(cfg, signal.layout)
    signal = tensors_to(signal, device)
    tasks = split_signal(signal, run.split, run.tasks, run.grid)
    with torch.device(device):
        learner = CONTINUAL_LEARNERS[run.learner].for_signal(signal, tasks, run.field_config(signal.layout), learner_options(run))
    learner.load_state_dict(ck["learner"])
    return Source(on_device(learner.predict, device), signal.layout, folder)


def config_from_dict(cls: type, values: dict, where: Path):
    """The config ``cls`` a run recorded (as JSON-ready values: lists back to tuples; options this version does not know are
    dropped; ``device`` is the CPU's: a run recorded on a GPU is rendered on any machine, on render's own ``--device``)."""
    values = {**values, "device": "cpu"} if "device" in values else values
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    tuples = {n for n in names if any(typing.get_origin(a) is tuple for a in (hints[n], *typing.get_args(hints[n])))}
    try:
        return cls(**{k: tuple(v) if k in tuples and isinstance(v, list) else v for k, v in values.items() if k in names})
    except (TypeError, MclnfError) as e:
        raise MclnfError(f"{where}: its config is not one this version of mclnf reads ({str(e).splitlines()[0]})") from None


def meta_source(cfg: RenderConfig, path: Path, device: torch.device) -> Source:
    """θ₀ of a meta-train run, or θ₀ adapted to ``cfg.signal`` for ``cfg.adapt_steps`` steps per task."""
    run = load_init(path)
    layout = run.method.layout
    check_options(cfg, layout)
    if cfg.adapt_steps is None:
        field = Field(run.method.field_config)
        field.load_state_dict(run.theta)
        return Source(field_predict(field, layout, device), layout, folder_of(path))
    signal = load_signal(cfg.signal, **loader_options(run.config, signal_kind(cfg.signal)))
    if signal.layout != layout:
        raise MclnfError(f"{cfg.signal}: its signal ({signal.layout}) differs from the one θ₀ was meta-trained on ({layout}); the run's loader options were applied")
    signal = tensors_to(signal, device)
    tasks = split_signal(signal, run.config.split, run.config.tasks)
    opts = LearnerOptions(optimizer="sgd", lr=run.config.inner_lr, batch_size=max(len(t) for t in tasks), seed=0)
    with torch.device(device):
        learner = run.method.test_learner(signal, tasks, opts, run.theta)
    for task in tasks:
        learn_task(learner, task, cfg.adapt_steps, progress=False)
    return Source(on_device(learner.predict, device), layout, folder_of(path), f"render_adapted{cfg.adapt_steps}")


# ---- how it is rendered --------------------------------------------------------------------------
def resized(layout: Layout, resolution: tuple[int, ...] | None, scale: float | None) -> Layout:
    """``layout`` on the grid ``--resolution`` or ``--scale`` asks for (module docstring); itself when neither is given."""
    if resolution is None and scale is None:
        return layout
    kind = layout.kind
    if resolution is not None and len(resolution) != GRID_SIZE[kind]:
        what = {1: "one number (audio: samples; mesh: grid N)", 2: "two numbers H W"}[GRID_SIZE[kind]]
        raise MclnfError(f"--resolution {' '.join(map(str, resolution))}: {kind} fields take {what}")
    if kind in ("image", "video", "radiance"):
        h, w = resolution or (max(1, round(layout.height * scale)), max(1, round(layout.width * scale)))
        frames = layout.frames if kind == "video" else len(layout.poses) if kind == "radiance" else 1
        check_fits(16 * frames * h * w * 8, f"{'--resolution' if resolution else '--scale'}: {frames} × {h} × {w} pixels")
        if kind == "radiance":
            return dataclasses.replace(layout, height=h, width=w, focal=layout.focal * w / layout.width)
        return layout.with_grid_shape((frames, h, w) if kind == "video" else (h, w))
    if kind == "audio":
        n = resolution[0] if resolution else max(1, round(layout.num_samples * scale))
        check_fits(16 * n * (layout.channels + 2), f"{'--resolution' if resolution else '--scale'}: {n} samples")
        return dataclasses.replace(layout, num_samples=n, sample_rate=max(1, round(layout.sample_rate * n / layout.num_samples)))
    n = resolution[0] if resolution else max(2, round(layout.resolution * scale))
    if n < 2:
        raise MclnfError(f"--resolution {n}: the marching-cubes grid needs at least 2 points per axis")
    check_fits(16 * n**3, f"{'--resolution' if resolution else '--scale'}: a {n}³ grid")
    return dataclasses.replace(layout, resolution=n)


def camera_poses(layout: Layout, spec: str, frames: int) -> torch.Tensor:
    """The cameras (V, 4, 4) of ``--camera-path``: ``orbit`` or a JSON file."""
    if spec == "orbit":
        return (image_plane_circle if layout.ndc else turntable_poses)(layout, frames)
    return read_camera_path(spec)


def write_path(source: Source, layout: Layout, poses: torch.Tensor, path: Path) -> Path:
    """The views of ``poses`` as an MP4 (``path`` ending in .mp4) or PNG frames ``frame_0000.png`` … in the folder ``path``."""
    views = layout.render_views(source.predict, poses).clamp(0, 1)
    if path.suffix.lower() == ".mp4":
        with atomic_path(path) as tmp:
            VideoLayout(frames=len(views), height=layout.height, width=layout.width, channels=3, fps=PATH_FPS).save(views, tmp)
        return path
    path.mkdir(exist_ok=True)
    frame = ImageLayout(height=layout.height, width=layout.width, channels=3)
    for k, view in enumerate(views):
        with atomic_path(path / f"frame_{k:04d}.png") as tmp:
            frame.save(view, tmp)
    return path


def output_path(cfg: RenderConfig, source: Source) -> Path:
    """``--out`` (checked by :func:`check_out`) or the default beside the run."""
    if cfg.out is not None:
        return cfg.out
    suffix = ".mp4" if cfg.camera_path else source.layout.suffix
    path_name = None if cfg.camera_path is None else "orbit" if cfg.camera_path == "orbit" else Path(cfg.camera_path).stem
    return source.folder / f"{source.stem}{'' if path_name is None else '_' + path_name}{suffix}"


def check_out(cfg: RenderConfig, layout: Layout) -> None:
    """``--out``: the suffix of what the field renders to (camera paths: .mp4, or a folder of frames), in an existing folder."""
    out = cfg.out
    if out is None:
        return
    frames_folder = cfg.camera_path is not None and out.suffix == ""
    suffix = ".mp4" if cfg.camera_path else layout.suffix
    if not frames_folder and out.suffix.lower() != suffix:
        what = "a camera path renders to .mp4 or a folder of PNG frames" if cfg.camera_path else f"{layout.kind} fields render to {suffix}"
        raise MclnfError(f"--out {out}: {what}, not {out.suffix or '(no suffix)'}")
    if not out.parent.is_dir():
        raise MclnfError(f"--out {out}: no such folder {out.parent}")
    if frames_folder and out.exists() and not out.is_dir():
        raise MclnfError(f"--out {out}: exists and is not a folder")


def render_one(cfg: RenderConfig, source: Source) -> Path:
    layout = resized(source.layout, cfg.resolution, cfg.scale)
    if cfg.camera_path is None:
        return write_reconstruction(source.predict, layout, output_path(cfg, source))
    return write_path(source, layout, camera_poses(layout, cfg.camera_path, cfg.frames or ORBIT_FRAMES), output_path(cfg, source))


def check_options(cfg: RenderConfig, layout: Layout) -> None:
    """Every option checked against the run's kind of field, as soon as it is known (before any adaptation or writing)."""
    if cfg.camera_path is not None and layout.kind != "radiance":
        raise MclnfError(f"--camera-path: only scenes (radiance fields) render along camera paths, not {layout.kind} fields")
    resized(layout, cfg.resolution, cfg.scale)
    check_out(cfg, layout)


def render(cfg: RenderConfig) -> list[Path]:
    """Write what ``cfg.run`` renders (module docstring); returns the paths written."""
    device = torch.device(cfg.device)
    if cfg.camera_path not in (None, "orbit"):
        read_camera_path(cfg.camera_path)  # a bad file is refused before any field is loaded
    return [render_one(cfg, s) for s in sources(cfg, device)]


def summary(paths: list[Path]) -> str:
    """What ``mclnf render`` prints: the paths written, one a line."""
    return "".join(f"{p}\n" for p in paths)
