"""Task streams for continual learning: one signal split into T tasks that arrive one after another.

Splits per kind (the first is the default when ``split`` is ``None``):

* image — ``patches``: a grid of ``rows × cols`` rectangular patches (``grid=(rows, cols)``; the
  default ``(1, T)`` gives the MCL-NF paper's T vertical strips along x: a 180×180 image into four
  180×45 strips); ``resolution``: the paper's Appendix D, T = s² sub-images by pixel parity, task
  ``k = a·s + b`` takes rows ``a, a+s, …`` and columns ``b, b+s, …`` (s = 2: offsets (0,0), (0,1),
  (1,0), (1,1) in (row, column) order, stride 2), each covering the whole image at 1/s resolution.
* video — ``time``: T chunks of consecutive frames.
* audio — ``time``: T consecutive segments.
* occupancy — ``space``: blocks of [-1, 1]³ (``grid=(gx, gy, gz)``, default ``(T, 1, 1)``: T slabs
  along x), equal in size; training and held-out points go to the block that contains them.
* radiance — ``views`` (default): T groups of consecutive views (the capture's order); a held-out
  view goes with the task of the nearest training camera, and so does any ray in :func:`route`
  (``Task.cameras``): a module of such a stream renders whole rays, as Block-NeRF's block models.
  ``space`` (the default when a ``grid`` is given): the occupancy blocks of the scene box; a ray goes
  with its camera (``RadianceLayout.locate``) to the block that holds it or, outside the box, the
  nearest one — a scene captured block by block — while every sample along a ray is routed to the
  module of its own block (Mega-NeRF / Switch-NeRF style).

Conventions
-----------
* Uneven grid splits are as even as possible: sizes differ by at most one sample, the first
  ``n mod g`` pieces getting the extra one (``numpy.array_split``).
* Tasks of a grid are numbered in C order of the piece grid, in grid-axis order: for an image
  ``(rows, cols)``, task ``r·cols + c``; strips are numbered left to right, chunks early to late.
* ``Task.region`` is one ``(lo, hi)`` per *coordinate column* (image (x, y), video (x, y, t),
  audio (t,), occupancy (x, y, z)). Between two grid tasks the border is the midpoint between the
  last sample centre of one and the first of the next, so the boxes tile [-1, 1]^d without gaps or
  overlaps. Boxes are closed on their upper side, ``(lo, hi]``, and the first box along an axis
  also contains ``-1`` — so a point on a shared border belongs to the *lower* task index, which
  is what :func:`route` returns. Grid samples never lie on a border.
* ``Task.lattice`` (``resolution`` only; else ``None``): per *grid axis* (image: (row, column))
  the ``(offset, stride)`` of the task's samples; the region is then the whole domain.
* ``sample_index`` indexes the parent's training samples (``coords``/``values``),
  ``eval_sample_index`` its evaluation samples (for grids they are the same tensor); both are in
  increasing order, so each task's samples keep the parent's C order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mclnf.errors import MclnfError
from mclnf.signals.base import GridLayout, Layout, Signal

SPLITS = {"image": ("patches", "resolution"), "video": ("time",), "audio": ("time",), "occupancy": ("space",), "radiance": ("views", "space")}
ALL_SPLITS = ("patches", "resolution", "time", "space", "views")
Region = tuple[tuple[float, float], ...]


@dataclass(kw_only=True)
class Task(Signal):
    """One task of a stream: a :class:`Signal` (so the training loop takes it as is) plus where it lies.

    ``index`` is the task's position in the stream; ``sample_index``/``eval_sample_index``
    (LongTensor) its samples in the parent; ``region`` its box in coordinate space (one (lo, hi)
    per coordinate column, upper side closed); ``lattice`` (``resolution`` split only) per grid
    axis the (offset, stride) of its samples; ``eval_layout`` the layout its evaluation samples
    form on their own (grid splits: the sub-grid, so SSIM and PESQ see a real image/clip; else the parent's).
    """

    index: int
    sample_index: Tensor
    eval_sample_index: Tensor
    region: Region
    lattice: tuple[tuple[int, int], ...] | None = None
    eval_layout: Layout | None = None
    cameras: Tensor | None = None  # views split: the centres of the task's cameras (field coordinates)

    def metrics(self, pred: Tensor) -> dict[str, float | None]:
        """Quality of ``pred`` on the task's evaluation samples (e.g. PSNR, SSIM of the strip)."""
        return (self.eval_layout or self.layout).metrics(pred, self.eval_values)

    @property
    def signal(self) -> Signal:
        """The task as a plain :class:`Signal` named ``parent#task{i}``."""
        return Signal(self.name, self.layout, self.coords, self.values, self.eval_coords, self.eval_values)


def default_split(kind: str) -> str:
    if kind not in SPLITS:
        raise MclnfError(f"signals of kind {kind!r} cannot be split into tasks; supported kinds: {', '.join(SPLITS)}")
    return SPLITS[kind][0]


def split_signal(signal: Signal, split: str | None = None, tasks: int = 4, grid: tuple[int, ...] | None = None) -> list[Task]:
    """Split ``signal`` into ``tasks`` tasks (see the module docstring); ``split=None``: the kind's default."""
    kind = signal.kind
    if split is None:
        split = "space" if grid is not None and "space" in SPLITS.get(kind, ()) else default_split(kind)
    if split not in ALL_SPLITS:
        raise MclnfError(f"--split {split}: unknown split; expected one of {', '.join(ALL_SPLITS)}")
    if split not in SPLITS.get(kind, ()):
        raise MclnfError(f"--split {split}: not applicable to {kind} signals; {kind} supports {', '.join(SPLITS.get(kind, ())) or 'no split'}")
    if isinstance(tasks, bool) or not isinstance(tasks, (int, np.integer)) or tasks < 1:
        raise MclnfError(f"--tasks {tasks}: must be an integer of at least 1")
    tasks = int(tasks)
    if grid is not None:
        grid = tuple(grid)
        if split not in ("patches", "space"):
            raise MclnfError(f"--grid {' '.join(map(str, grid))}: only the patches and space splits take a grid, not {split}")
        want = 2 if split == "patches" else 3
        names = "(rows, cols)" if split == "patches" else "(gx, gy, gz)"
        if len(grid) != want or any(isinstance(g, bool) or not isinstance(g, (int, np.integer)) or g < 1 for g in grid):
            raise MclnfError(f"--grid {' '.join(map(str, grid))}: the {split} split needs {want} positive integers {names}")
        if math.prod(grid) != tasks:
            raise MclnfError(f"--grid {' '.join(map(str, grid))}: {math.prod(grid)} blocks but --tasks {tasks}; the grid's product must equal the number of tasks")
    if split == "patches":
        rows, cols = grid or (1, tasks)
        return _split_grid(signal, (rows, cols), ("rows (y)", "columns (x)"))
    if split == "time":
        layout = signal.layout
        pieces = (tasks,) + (1,) * (len(layout.grid_shape) - 1)
        what = "frames" if kind == "video" else "samples"
        return _split_grid(signal, pieces, (what,) + ("",) * (len(pieces) - 1))
    if split == "resolution":
        return _split_resolution(signal, tasks)
    if split == "views":
        return _split_views(signal, tasks)
    return _split_space(signal, tuple(grid or (tasks, 1, 1)))


def _check_grid_signal(signal: Signal) -> GridLayout:
    if not isinstance(signal.layout, GridLayout) or len(signal) != math.prod(signal.layout.grid_shape):
        raise MclnfError(f"{signal.name}: not a complete grid signal; it cannot be split by grid")
    return signal.layout


def _pieces(n: int, g: int) -> list[tuple[int, int]]:
    """``n`` samples into ``g`` contiguous ranges [start, end), sizes differing by at most one."""
    base, extra = divmod(n, g)
    bounds = np.cumsum([0] + [base + (i < extra) for i in range(g)])
    return [(int(bounds[i]), int(bounds[i + 1])) for i in range(g)]


def _centres(n: int) -> list[float]:
    """Sample centres along a grid axis of ``n`` samples, exactly as :func:`grid_coords` (float32)."""
    axis = torch.linspace(-1.0, 1.0, n) if n > 1 else torch.zeros(1)
    return axis.double().tolist()


def _range_bounds(n: int, start: int, end: int) -> tuple[float, float]:
    c = _centres(n)
    lo = -1.0 if start == 0 else (c[start - 1] + c[start]) / 2
    hi = 1.0 if end == n else (c[end - 1] + c[end]) / 2
    return lo, hi


def _task(signal: Signal, index: int, idx: Tensor, region: Region, lattice=None, eval_idx: Tensor | None = None, shape=None) -> Task:
    eval_idx = idx if eval_idx is None else eval_idx
    same = eval_idx is idx and signal.eval_coords is signal.coords
    return Task(
        name=f"{signal.name}#task{index}",
        layout=signal.layout,
        coords=signal.coords[idx],
        values=signal.values[idx],
        eval_coords=None if same else signal.eval_coords[eval_idx],
        eval_values=None if same else signal.eval_values[eval_idx],
        index=index,
        sample_index=idx,
        eval_sample_index=eval_idx,
        region=region,
        lattice=lattice,
        eval_layout=None if shape is None else signal.layout.with_grid_shape(shape),
    )


def _split_grid(signal: Signal, pieces: tuple[int, ...], names: tuple[str, ...]) -> list[Task]:
    """Split a grid signal into ``prod(pieces)`` boxes, ``pieces[a]`` contiguous ranges along grid axis ``a``."""
    layout = _check_grid_signal(signal)
    shape = layout.grid_shape
    for n, g, name in zip(shape, pieces, names):
        if g > n:
            raise MclnfError(f"--tasks/--grid: {g} pieces along an axis of only {n} {name}; a task would be empty")
    order = torch.arange(len(signal)).reshape(shape)
    ranges = [_pieces(n, g) for n, g in zip(shape, pieces)]
    out = []
    for index, combo in enumerate(np.ndindex(*pieces)):
        spans = [ranges[a][k] for a, k in enumerate(combo)]
        idx = order[tuple(slice(s, e) for s, e in spans)].reshape(-1)
        region = tuple(_range_bounds(n, s, e) for n, (s, e) in zip(shape, spans))[::-1]  # coordinate columns
        out.append(_task(signal, index, idx, region, shape=tuple(e - s for s, e in spans)))
    return out


def _split_resolution(signal: Signal, tasks: int) -> list[Task]:
    layout = _check_grid_signal(signal)
    s = math.isqrt(tasks)
    if s * s != tasks:
        raise MclnfError(f"--tasks {tasks}: the resolution split needs a perfect square (4 = 2×2 by pixel parity, 9 = 3×3, …)")
    h, w = layout.grid_shape
    if s > min(h, w):
        raise MclnfError(f"--tasks {tasks}: stride {s} is larger than the image ({h}×{w}); a task would be empty")
    order = torch.arange(len(signal)).reshape(h, w)
    whole = ((-1.0, 1.0), (-1.0, 1.0))
    out = []
    for index in range(tasks):
        a, b = divmod(index, s)
        sub = order[a::s, b::s]
        out.append(_task(signal, index, sub.reshape(-1), whole, lattice=((a, s), (b, s)), shape=tuple(sub.shape)))
    return out


def _split_space(signal: Signal, grid: tuple[int, ...]) -> list[Task]:
    locate = signal.layout.locate  # radiance: a ray lies where its camera is
    d = locate(signal.coords[:1]).shape[1]
    if len(grid) != d:
        raise MclnfError(f"--grid: the space split needs {d} numbers, one per coordinate axis")
    edges = [np.linspace(-1.0, 1.0, g + 1).tolist() for g in grid]
    # task order: C order of the grid in coordinate-axis order (x slowest)
    regions = [tuple((edges[a][k], edges[a][k + 1]) for a, k in enumerate(combo)) for combo in np.ndindex(*grid)]
    boxes = [_Box(r) for r in regions]
    train, held = route(locate(signal.coords), boxes), route(locate(signal.eval_coords), boxes)
    parts = [[torch.nonzero(r == index).reshape(-1) for r in (train, held)] for index in range(len(regions))]
    noun, hints = ("views", ("another --grid", "a smaller --holdout")) if signal.kind == "radiance" else ("points", ("more --points", "more --eval-points"))
    for k, what in ((0, "training"), (1, "held-out")):
        for index, region in enumerate(regions):
            if len(parts[index][k]) == 0:
                box = " × ".join(f"[{lo:.3g}, {hi:.3g}]" for lo, hi in region)
                raise MclnfError(f"--tasks {len(regions)}: block {index} ({box}) holds no {what} {noun}; a task would be empty (use fewer --tasks or {hints[k]})")
    return [_task(signal, index, idx, region, eval_idx=eval_idx) for index, (region, (idx, eval_idx)) in enumerate(zip(regions, parts))]


def _split_views(signal: Signal, tasks: int) -> list[Task]:
    layout = signal.layout
    per_view = layout.height * layout.width
    n_views = len(signal) // per_view
    if tasks > n_views:
        raise MclnfError(f"--tasks {tasks}: {signal.name} has only {n_views} training views; a task would be empty")
    cams, groups = layout.locate(signal.coords[::per_view]), _pieces(n_views, tasks)
    owner = torch.cat([torch.full((e - s,), k) for k, (s, e) in enumerate(groups)])
    pixels = torch.arange(per_view)
    held = owner if signal.eval_coords is signal.coords else owner[torch.cdist(layout.locate(signal.eval_coords[::per_view]), cams).argmin(1)]
    out = []
    for index, (s, e) in enumerate(groups):
        idx = (torch.arange(s, e)[:, None] * per_view + pixels).reshape(-1)
        eval_idx = idx if held is owner else (torch.nonzero(held == index)[:, 0, None] * per_view + pixels).reshape(-1)
        if len(eval_idx) == 0:
            raise MclnfError(f"--tasks {tasks}: no held-out view is nearest to task {index}'s cameras; a task would have nothing to evaluate (use fewer --tasks or a smaller --holdout)")
        region = tuple(zip(cams[s:e].amin(0).tolist(), cams[s:e].amax(0).tolist()))
        task = _task(signal, index, idx, region, eval_idx=eval_idx)
        task.cameras = cams[s:e]
        out.append(task)
    return out


@dataclass(frozen=True)
class _Box:
    region: Region
    lattice: None = None


def route(coords: Tensor, tasks: list, chunk: int = 65536) -> Tensor:
    """For each coordinate (N, d), the index (into ``tasks``) of the task that holds it.

    Region tasks: the task whose region contains the coordinate. Regions are closed on their upper
    side (module docstring): a point on a shared border goes to the lower index. Coordinates
    outside every region (outside [-1, 1]^d, or in a part of the domain no given task covers) go
    to the nearest region (Euclidean distance to the box), ties again to the lower index.
    Lattice tasks (``resolution`` split, every region the whole domain): the coordinate is snapped
    to the nearest sample of the parent's grid and goes to the task whose lattice holds that sample.
    """
    if len(tasks) == 0:
        raise MclnfError("route: no tasks to route to")
    d = len(tasks[0].region)
    if coords.ndim != 2 or coords.shape[1] != d or any(len(t.region) != d for t in tasks):
        raise MclnfError(f"route: coordinates of shape {tuple(coords.shape)} do not match regions of dimension {d}")
    if getattr(tasks[0], "cameras", None) is not None:  # views split: the task of the nearest camera
        cams = torch.cat([t.cameras for t in tasks]).to(coords)
        owner = torch.cat([torch.full((len(t.cameras),), k, device=coords.device) for k, t in enumerate(tasks)])
        return owner[torch.cdist(coords.detach(), cams).argmin(1)] if len(coords) else owner[:0]
    lattices = [getattr(t, "lattice", None) for t in tasks]
    if any(lat is not None for lat in lattices):
        if any(lat is None for lat in lattices):
            raise MclnfError("route: tasks mix lattices (resolution split) and regions")
        return _route_lattice(coords, tasks)
    bounds = torch.tensor([t.region for t in tasks], dtype=torch.float64, device=coords.device)  # (T, d, 2)
    lo, hi = bounds[..., 0], bounds[..., 1]
    out = []
    for c in coords.detach().double().split(chunk):
        c = c[:, None, :]  # (n, 1, d)
        dist = (c.clamp(lo, hi) - c).square().sum(-1)  # (n, T); 0 inside (closed boxes)
        out.append(dist.argmin(1))  # first minimum: the lowest index on shared borders
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=coords.device)


def _route_lattice(coords: Tensor, tasks: list) -> Tensor:
    shape = tasks[0].layout.grid_shape
    d = coords.shape[1]
    c = coords.detach().double()
    grid = [((c[:, d - 1 - a] + 1) / 2 * (n - 1)).round().clamp(0, n - 1).long() for a, n in enumerate(shape)]  # grid axis a is column d-1-a
    out = torch.full((len(coords),), -1, dtype=torch.long, device=coords.device)
    for index, task in reversed(list(enumerate(tasks))):  # lowest index wins, should lattices overlap
        hit = torch.ones(len(coords), dtype=torch.bool, device=coords.device)
        for g, (offset, stride) in zip(grid, task.lattice):
            hit &= g % stride == offset
        out[hit] = index
    if bool((out < 0).any()):
        raise MclnfError("route: some grid samples belong to none of the given lattice tasks")
    return out
