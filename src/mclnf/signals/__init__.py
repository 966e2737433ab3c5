"""Real signals as coordinates → values, and back to their own form.

Every kind is imported here, so each kind's :class:`Layout` subclass is in ``base.LAYOUTS`` (for
:meth:`Layout.from_dict`) whichever module of the package is imported first: a package's
``__init__`` runs before any of its submodules. The kind modules import ``base`` and their sibling
modules, never the package itself, so nothing here is imported in a circle.
"""

from __future__ import annotations

from pathlib import Path

from mclnf.errors import MclnfError
from mclnf.signals.audio import load_audio
from mclnf.signals.base import GridLayout, Layout, Signal, grid_coords, predict_in_chunks
from mclnf.signals.image import BUILTIN_IMAGES, load_image
from mclnf.signals.occupancy import load_occupancy
from mclnf.signals.radiance import load_radiance
from mclnf.signals.scenes import is_scene
from mclnf.signals.video import SUFFIXES as VIDEO_SUFFIXES
from mclnf.signals.video import load_video

KINDS = ("image", "audio", "video", "occupancy", "radiance")
SUFFIX_KIND = {
    **dict.fromkeys((".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"), "image"),
    **dict.fromkeys((".wav", ".flac", ".ogg"), "audio"),
    **dict.fromkeys(VIDEO_SUFFIXES, "video"),
    **dict.fromkeys((".obj", ".ply", ".stl", ".off"), "occupancy"),
    ".npz": "radiance",
}


def signal_kind(source: str | Path) -> str:
    """The kind of signal a path (by its suffix) or a built-in name holds."""
    if str(source) in BUILTIN_IMAGES:
        return "image"
    if Path(source).is_dir() and is_scene(source):
        return "radiance"
    kind = SUFFIX_KIND.get(Path(source).suffix.lower())
    if kind is None:
        if not Path(source).exists():
            raise MclnfError(f"{source}: no such file, and not a built-in image ({', '.join(BUILTIN_IMAGES)})")
        raise MclnfError(f"{source}: unsupported format {Path(source).suffix or '(no suffix)'}; expected one of {', '.join(sorted(SUFFIX_KIND))}")
    return kind


def load_signal(source: str | Path, **options) -> Signal:
    """Load any supported signal; ``options`` are those of the kind's loader (unset ones: ``None``)."""
    loader = {"image": load_image, "audio": load_audio, "video": load_video, "occupancy": load_occupancy, "radiance": load_radiance}[signal_kind(source)]
    return loader(source, **{k: v for k, v in options.items() if v is not None})


__all__ = ["KINDS", "GridLayout", "Layout", "Signal", "grid_coords", "load_signal", "predict_in_chunks", "signal_kind"]
