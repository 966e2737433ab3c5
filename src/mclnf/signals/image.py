"""Images: PNG/JPEG/TIFF files or scikit-image's built-in images → (x, y) ↦ intensities in [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from mclnf.errors import MclnfError
from mclnf.resources import check_fits
from mclnf.signals.base import GridLayout, Signal, check_readable

SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
BUILTIN_IMAGES = ("astronaut", "camera", "cat", "coffee", "coins", "horse", "moon", "page", "rocket", "text", "brick", "grass", "gravel")


SSIM_MIN_SIDE = 6  # torchmetrics' 11-pixel Gaussian window reflect-pads 5 pixels a side: each side needs more than 5


def ssim(pred: Tensor, target: Tensor) -> float | None:
    """SSIM (torchmetrics, Gaussian window 11 px, σ 1.5, data range 1) of images (B, C, H, W); ``None`` if undefined.

    Rule: an image whose height or width is under :data:`SSIM_MIN_SIDE` (6) pixels has no SSIM: the
    window cannot be reflect-padded over it, and a smaller window would give a number not comparable
    with the SSIM of larger images. ``None`` is reported (``null`` in metrics.json) instead of a value.
    """
    if min(pred.shape[-2:]) < SSIM_MIN_SIDE:
        return None
    return float(structural_similarity_index_measure(pred, target, data_range=1.0))


def image_metrics(pred: Tensor, target: Tensor) -> dict[str, float | None]:
    """PSNR and SSIM (torchmetrics, data range 1) of images (B, C, H, W); predictions are clipped to [0, 1].

    SSIM is ``None`` for images with a side under 6 pixels (see :func:`ssim`).
    """
    pred = pred.clamp(0, 1)
    return {"psnr": float(peak_signal_noise_ratio(pred, target, data_range=1.0)), "ssim": ssim(pred, target)}


@dataclass(frozen=True)
class ImageLayout(GridLayout):
    height: int
    width: int
    channels: int
    bit_depth: int = 8

    kind = "image"
    grid_fields = ("height", "width")
    suffix = ".png"

    def metrics(self, pred: Tensor, target: Tensor) -> dict[str, float | None]:
        """PSNR and SSIM (``None`` if a side is under 6 pixels, see :func:`ssim`)."""
        as_image = lambda v: self.to_array(v).permute(2, 0, 1)[None]  # noqa: E731
        return image_metrics(as_image(pred), as_image(target))

    def quantize(self, array: Tensor) -> np.ndarray:
        """Float array in [0, 1] → unsigned integers of the layout's bit depth (gray images lose the channel axis)."""
        top = 2**self.bit_depth - 1
        out = (array.clamp(0, 1) * top).round().cpu().numpy().astype(np.uint8 if self.bit_depth == 8 else np.uint16)
        return out[..., 0] if self.channels == 1 else out

    def save(self, native: Tensor, path: Path) -> None:
        iio.imwrite(path, self.quantize(native), extension=".png")


def composite_on_white(x: Tensor) -> Tensor:
    """(…, C) in [0, 1] with a last alpha channel (gray+alpha, RGBA) → without it, over white."""
    return x[..., :-1] * x[..., -1:] + (1 - x[..., -1:]) if x.shape[-1] in (2, 4) else x


def resize_longer_side(x: Tensor, size: int) -> Tensor:
    """Frames (T, H, W, C) scaled so the longer side has ``size`` pixels: bilinear without antialiasing,
    as the preconditioner paper's data code."""
    if size < 1:
        raise MclnfError(f"--resize {size}: must be a positive number of pixels")
    scale = size / max(x.shape[1:3])
    hw = (max(1, round(x.shape[1] * scale)), max(1, round(x.shape[2] * scale)))
    samples = x.shape[0] * hw[0] * hw[1]  # each a value (C floats) and coordinates, in a few copies: 16 bytes a float is the estimate
    check_fits(16 * samples * (x.shape[3] + 3), f"--resize {size}: {x.shape[0]} × {hw[0]} × {hw[1]} samples")
    if hw == tuple(x.shape[1:3]):
        return x
    return F.interpolate(x.permute(0, 3, 1, 2), size=hw, mode="bilinear", align_corners=False, antialias=False).permute(0, 2, 3, 1)


def read_image(source: str | Path) -> np.ndarray:
    """Pixels of a file or of a scikit-image built-in (by name) as an (H, W, C) array, C in {1, 3}."""
    if isinstance(source, str) and source in BUILTIN_IMAGES:
        import skimage.data

        pixels = getattr(skimage.data, source)()
    else:
        path = check_readable(source, SUFFIXES)
        try:
            pixels = iio.imread(path)
        except Exception as e:  # imageio raises many types for corrupt files
            raise MclnfError(f"{path}: cannot read image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'corrupt file'})") from None
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 2, 3, 4) or pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise MclnfError(f"{source}: unsupported image shape {pixels.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")
    return pixels


def load_image(source: str | Path, resize: int | None = None, crop: tuple[int, int] | None = None, gray: bool = False, pad: int = 0) -> Signal:
    """Load an image as a :class:`Signal` with values in [0, 1].

    ``crop`` (h, w) takes a centred crop first; ``resize`` then scales the image so that its longer
    side is ``resize`` pixels (bilinear, no antialiasing, as the preconditioner paper's data code);
    ``pad`` last adds that many rows/columns of zeros on every side (MCL-NF's CelebA: 178×178 + 1 = 180×180).
    An alpha channel is composited onto white; ``gray`` converts RGB to luminance (ITU-R 601).
    """
    return image_signal(read_image(source), str(source), resize=resize, crop=crop, gray=gray, pad=pad)


def center_crop(frames: Tensor, crop: tuple[int, int], what: str) -> Tensor:
    """The centred (h, w) = ``crop`` window of (N, H, W, C) ``frames`` (of a ``what``: "image", "video"); a clear error when it does not fit."""
    (h, w), (height, width) = crop, frames.shape[1:3]
    if not (0 < h <= height and 0 < w <= width):
        raise MclnfError(f"--crop {h} {w}: larger than the {what} ({height}×{width}) or not positive")
    top, left = (height - h) // 2, (width - w) // 2
    return frames[:, top : top + h, left : left + w]


def image_signal(pixels: np.ndarray, source: str, resize: int | None = None, crop: tuple[int, int] | None = None, gray: bool = False, pad: int = 0) -> Signal:
    """An (H, W, C) pixel array (uint8, uint16 or floats in [0, 1]) named ``source`` as :func:`load_image` makes it."""
    if pixels.dtype == np.uint8:
        bit_depth, x = 8, torch.from_numpy(pixels.astype(np.float32) / 255.0)
    elif pixels.dtype == np.uint16:
        bit_depth, x = 16, torch.from_numpy(pixels.astype(np.float32) / 65535.0)
    elif np.issubdtype(pixels.dtype, np.floating):
        bit_depth, x = 8, torch.from_numpy(pixels.astype(np.float32))
        if not np.isfinite(pixels).all():
            raise MclnfError(f"{source}: the image contains NaN or infinite values")
        if x.min() < 0 or x.max() > 1:
            raise MclnfError(f"{source}: floating-point pixels must lie in [0, 1], found [{x.min():.3g}, {x.max():.3g}]")
    else:
        raise MclnfError(f"{source}: unsupported pixel type {pixels.dtype}")
    x = composite_on_white(x)
    if gray and x.shape[-1] == 3:
        x = x @ torch.tensor([[0.299], [0.587], [0.114]])
    if crop is not None:
        x = center_crop(x[None], crop, "image")[0]
    if resize:
        x = resize_longer_side(x[None], resize)[0]
    if pad < 0:
        raise MclnfError(f"--pad {pad}: must not be negative")
    if pad:
        check_fits(16 * (x.shape[0] + 2 * pad) * (x.shape[1] + 2 * pad) * (x.shape[2] + 2), f"--pad {pad}: {x.shape[0] + 2 * pad} × {x.shape[1] + 2 * pad} pixels")
        x = torch.nn.functional.pad(x.permute(2, 0, 1), (pad, pad, pad, pad)).permute(1, 2, 0)
    layout = ImageLayout(height=x.shape[0], width=x.shape[1], channels=x.shape[2], bit_depth=bit_depth)
    return Signal(name=source, layout=layout, coords=layout.coords(), values=x.reshape(-1, x.shape[2]).contiguous())
