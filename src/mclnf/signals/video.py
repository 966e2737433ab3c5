"""Video: MP4/MKV/GIF/MOV/AVI/WEBM/M4V files → (x, y, t) ↦ intensities in [0, 1]."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from torch import Tensor

from mclnf.errors import MclnfError
from mclnf.signals.base import GridLayout, Signal, check_readable
from mclnf.signals.image import center_crop, composite_on_white, image_metrics, resize_longer_side

SUFFIXES = (".mp4", ".mkv", ".gif", ".mov", ".avi", ".webm", ".m4v")
DEFAULT_FPS = 25.0


@dataclass(frozen=True)
class VideoLayout(GridLayout):
    frames: int
    height: int
    width: int
    channels: int
    fps: float = DEFAULT_FPS

    kind = "video"
    grid_fields = ("frames", "height", "width")
    suffix = ".mp4"

    def metrics(self, pred: Tensor, target: Tensor) -> dict[str, float | None]:
        """PSNR and SSIM (data range 1) over all frames, each frame an image; predictions clipped to [0, 1].

        SSIM is ``None`` for frames with a side under 6 pixels (see :func:`mclnf.signals.image.ssim`)."""
        as_frames = lambda v: self.to_array(v).permute(0, 3, 1, 2)  # noqa: E731
        return image_metrics(as_frames(pred.detach().float().cpu()), as_frames(target.detach().float().cpu()))

    def quantize(self, array: Tensor) -> np.ndarray:
        """Frames (T, H, W, C) in [0, 1] → uint8 RGB (gray is repeated to three channels)."""
        out = (torch.as_tensor(array).detach().float().cpu().clamp(0, 1) * 255).round().numpy().astype(np.uint8)
        return np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out

    def save(self, native: Tensor, path: Path) -> None:
        """H.264 MP4 (yuv420p) at the layout's fps; odd heights/widths get one replicated row/column."""
        frames = self.quantize(native)
        pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
        if pad_h or pad_w:  # yuv420p needs even sizes
            frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        iio.imwrite(path, frames, extension=".mp4", plugin="pyav", codec="libx264", fps=self.fps)


def _read_frames(path: Path, start_frame: int, frames: int | None) -> tuple[np.ndarray, float]:
    """Frames ``start_frame`` … (``frames`` of them, or all) as (T, H, W, C) uint8, decoding no more than needed."""
    got, seen = [], 0
    try:
        with iio.imopen(path, "r", plugin="pyav") as video:  # one open: each close costs a gc.collect()
            try:
                fps = float(video.metadata().get("fps") or DEFAULT_FPS)
            except (KeyError, ValueError, TypeError):
                fps = DEFAULT_FPS
            for i, frame in enumerate(video.iter()):
                seen = i + 1
                if i >= start_frame:
                    got.append(np.asarray(frame))
                    if frames is not None and len(got) == frames:
                        break
    except Exception as e:  # pyav/imageio raise many types for corrupt files
        raise MclnfError(f"{path}: cannot read video ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'corrupt file'})") from None
    if not got:
        if seen == 0:
            raise MclnfError(f"{path}: the video has no frames")
        raise MclnfError(f"--start-frame {start_frame}: beyond the end of {path} ({seen} frames)")
    if frames is not None and len(got) < frames:
        raise MclnfError(f"--frames {frames}: {path} has only {seen} frames ({len(got)} from frame {start_frame})")
    if not np.isfinite(fps) or fps <= 0:
        fps = DEFAULT_FPS
    return np.stack(got), fps


def load_video(path: str | os.PathLike, frames: int | None = None, start_frame: int = 0, resize: int | None = None, crop: tuple[int, int] | None = None) -> Signal:
    """Load a video as a :class:`Signal` with values in [0, 1] on a (T, H, W) grid, coordinates (x, y, t).

    Reads ``frames`` frames (all if ``None``) from ``start_frame`` on, stopping the decoder early;
    ``crop`` (h, w) takes the centred window of every frame first; ``resize`` then scales every frame
    so that its longer side is ``resize`` pixels (bilinear, no antialiasing, like images). fps comes
    from the file (25 if it has none).
    """
    p = check_readable(path, SUFFIXES)
    if frames is not None and frames < 1:
        raise MclnfError(f"--frames {frames}: must be at least 1")
    if start_frame < 0:
        raise MclnfError(f"--start-frame {start_frame}: must not be negative")
    if resize is not None and resize < 1:
        raise MclnfError(f"--resize {resize}: must be a positive number of pixels")  # before decoding
    pixels, fps = _read_frames(p, start_frame, frames)
    if pixels.ndim == 3:
        pixels = pixels[..., None]
    if pixels.ndim != 4 or pixels.shape[-1] not in (1, 3, 4) or pixels.dtype != np.uint8:
        raise MclnfError(f"{p}: unsupported frame shape {pixels.shape[1:]} or type {pixels.dtype}")
    x = torch.from_numpy(pixels.astype(np.float32) / 255.0)
    x = composite_on_white(x)  # RGBA (e.g. GIF)
    if crop is not None:
        x = center_crop(x, crop, "video")
    if resize:
        x = resize_longer_side(x, resize)
    t, h, w, c = x.shape
    layout = VideoLayout(frames=t, height=h, width=w, channels=c, fps=fps)
    return Signal(name=str(path), layout=layout, coords=layout.coords(), values=x.reshape(-1, c).contiguous())
