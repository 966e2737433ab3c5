"""A signal as coordinates → values, and the layout that turns predictions back into the signal's form.

A :class:`Layout` is everything needed to go back from a field to the signal's own form (shape,
sample rate, normalization) and nothing of the data itself, so a trained field plus its layout
re-creates the reconstruction (``mclnf render``). A :class:`Signal` is a layout plus samples.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor

from mclnf.errors import MclnfError

Predict = Callable[[Tensor], Tensor]
"""A field evaluated on coordinates (N, d) → values (N, c), without gradients."""

LAYOUTS: dict[str, type[Layout]] = {}
"""Every layout class by its ``kind``; each subclass with a ``kind`` registers itself when defined
(``mclnf.signals`` imports every kind module, so all are here once the package is imported)."""


@dataclass(frozen=True)
class Layout(ABC):
    """How a signal of one kind is laid out; subclasses are frozen dataclasses of plain values."""

    kind: ClassVar[str]
    loss: ClassVar[str] = "mse"  # "mse" or "bce" (logits)
    primary_metric: ClassVar[str] = "psnr"
    suffix: ClassVar[str]  # file suffix of the reconstruction

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "kind" in cls.__dict__:
            LAYOUTS[cls.kind] = cls

    @property
    @abstractmethod
    def in_dim(self) -> int: ...

    @property
    @abstractmethod
    def out_dim(self) -> int: ...

    @abstractmethod
    def metrics(self, pred: Tensor, target: Tensor) -> dict[str, float | None]:
        """Quality of predictions ``pred`` against ``target`` on the evaluation samples; ``None`` where a
        metric is undefined for this signal (PESQ of a too-short clip, SSIM of an image under 6 pixels a side)."""

    @abstractmethod
    def reconstruct(self, predict: Predict) -> Any:
        """The signal in its own form (an image array, a waveform, frames, a mesh, rendered views) from
        ``predict``, which maps the signal's samples to values (a field observed through :meth:`observe`)."""

    @abstractmethod
    def save(self, native: Any, path: Path) -> None:
        """Write a reconstruction (from :meth:`reconstruct`) to ``path``."""

    # ---- how a field is observed (identity but for radiance: volume rendering of rays) ---------
    chunk: ClassVar[int] = 65536  # samples per chunk when predicting without gradients
    blank: ClassVar[tuple[float, ...] | None] = None  # a field output meaning "nothing here" (radiance: empty space)

    def observe(self, field: Predict, coords: Tensor) -> Tensor:
        """The signal's values at samples ``coords`` as a field (points → outputs) makes them; the field itself here."""
        return field(coords)

    def locate(self, coords: Tensor) -> Tensor:
        """Where in the field's domain each sample lies (for splitting by space): the coordinates themselves here."""
        return coords

    def predict(self, field: Predict, coords: Tensor) -> Tensor:
        """:meth:`observe` on many samples, in chunks, without gradients."""
        return predict_in_chunks(lambda x: self.observe(field, x), coords, self.chunk)

    def probe(self) -> Signal:
        """A signal of this layout whose samples stand for every signal's (values zero): how task splits index them."""
        coords = self.coords()
        return Signal("layout", self, coords, torch.zeros(len(coords), self.out_dim))

    def extra_outputs(self, field: Predict, signal: Signal, out: Path) -> list[str]:
        """Outputs beyond the reconstruction that a run writes into ``out`` (their names); none here."""
        return []

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    @staticmethod
    def from_dict(d: dict) -> Layout:
        d = dict(d)
        cls = LAYOUTS[d.pop("kind")]
        names = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})


@dataclass
class Signal:
    """Samples of one real signal.

    ``coords`` (N, d) in [-1, 1] and ``values`` (N, c) are what a field is trained on;
    ``eval_coords``/``eval_values`` what it is judged on (the same tensors for images, audio and
    video; held-out points for occupancy).
    """

    name: str
    layout: Layout
    coords: Tensor
    values: Tensor
    eval_coords: Tensor | None = None
    eval_values: Tensor | None = None

    def __post_init__(self):
        if self.eval_coords is None:
            self.eval_coords, self.eval_values = self.coords, self.values
        for what, c, v in (("samples", self.coords, self.values), ("evaluation samples", self.eval_coords, self.eval_values)):
            if c.ndim != 2 or v.ndim != 2 or len(c) != len(v):
                raise MclnfError(f"{self.name}: {what} have shapes {tuple(c.shape)} and {tuple(v.shape)}; expected (N, d) and (N, c)")
            if len(c) == 0:
                raise MclnfError(f"{self.name}: the signal has no samples")
            if not torch.isfinite(v).all():
                raise MclnfError(f"{self.name}: the signal contains NaN or infinite values")

    @property
    def kind(self) -> str:
        return self.layout.kind

    def __len__(self) -> int:
        return len(self.coords)


def grid_coords(*sizes: int) -> Tensor:
    """Coordinates of a regular grid, (prod(sizes), len(sizes)), each axis ``linspace(-1, 1)``.

    Samples are in C order of ``sizes`` (the first axis varies slowest); the coordinate columns
    are in reversed axis order, so an (H, W) image gives (x, y) and a (T, H, W) video (x, y, t).
    """
    axes = [torch.linspace(-1.0, 1.0, n) if n > 1 else torch.zeros(1) for n in sizes]
    return torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1).reshape(-1, len(sizes))


class GridLayout(Layout):
    """A signal sampled on a regular grid (image, audio, video): every grid point is a sample.

    Subclasses have a ``channels`` field and name the fields that hold the grid's shape in ``grid_fields``.
    """

    grid_fields: ClassVar[tuple[str, ...]]

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(getattr(self, name) for name in self.grid_fields)

    def with_grid_shape(self, shape: tuple[int, ...]) -> GridLayout:
        """The same layout on a grid of another shape (e.g. a task's sub-grid, for its metrics)."""
        return replace(self, **dict(zip(self.grid_fields, shape, strict=True)))

    @property
    def in_dim(self) -> int:
        return len(self.grid_shape)

    @property
    def out_dim(self) -> int:
        return self.channels

    def coords(self) -> Tensor:
        return grid_coords(*self.grid_shape)

    def to_array(self, values: Tensor) -> Tensor:
        """Values (N, c) in grid order → an array of shape ``grid_shape + (c,)``."""
        return values.reshape(*self.grid_shape, self.channels)

    def reconstruct(self, predict: Predict) -> Tensor:
        return self.to_array(predict_in_chunks(predict, self.coords()))


@torch.no_grad()
def predict_in_chunks(predict: Predict, coords: Tensor, chunk: int = 65536) -> Tensor:
    return torch.cat([predict(c) for c in coords.split(chunk)])


def check_readable(path: str | os.PathLike, suffixes: tuple[str, ...]) -> Path:
    """The path, if it names an existing regular file with one of ``suffixes``; else a clear error."""
    p = Path(path)
    if not p.exists():
        raise MclnfError(f"{p}: no such file")
    if not p.is_file():
        raise MclnfError(f"{p}: not a regular file")
    if p.suffix.lower() not in suffixes:
        raise MclnfError(f"{p}: unsupported format {p.suffix or '(no suffix)'}; expected one of {', '.join(suffixes)}")
    if not os.access(p, os.R_OK):
        raise MclnfError(f"{p}: file is not readable (permission denied)")
    return p
