"""Datasets for meta-learning: a collection of signals of one layout, split into meta-train and meta-test.

A dataset is named by

* ``lfw_subset`` — scikit-image's 200 gray 25 × 25 faces;
* ``skimage_patches`` — the 14 natural photos bundled with scikit-image (:data:`PATCH_PHOTOS`), in gray, cut
  into every whole 64 × 64 tile (664 patches); the photos are split, not the patches, so no meta-test patch
  shares a photo with a meta-train one;
* a folder — every supported file in it (sorted by name);
* a glob pattern — e.g. ``'../shared/data/celeba_align/*.jpg'``;
* one audio or video file cut into clips (``--clip``): its clips are split instead of files;
* one scene of posed images (``.npz``, a NeRF-synthetic or LLFF folder): its training views cut into
  blocks of ``block_views`` cameras adjacent in azimuth (:func:`mclnf.signals.radiance.scene_blocks`);
  the blocks are split instead of files (the MCL-NF paper's 70/30 split of a city's blocks).

Files are split *before* they are cut into clips (so no clip of a meta-test file is seen in
meta-training): a seeded permutation puts ``test_fraction`` of them (at least one) into meta-test,
or the split is given as two text files listing names, one per line. Audio and video files can be
cut into consecutive clips of ``clip`` seconds/frames (a clip shorter than that at the end is dropped).
Where files give several signals (patches, clips), the meta-test signals take the meta-test files in turn
(the first clip of every file, then the second …), so the first N (``meta-test --signals N``) span the files.
Every signal of a dataset must have the same layout (same image size, clip length, …): the
meta-batch is one stacked tensor.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

import numpy as np
import torch

from mclnf.errors import MclnfError
from mclnf.signals import SUFFIX_KIND, GridLayout, Signal, load_signal, signal_kind
from mclnf.signals.image import image_signal
from mclnf.signals.radiance import scene_blocks
from mclnf.signals.scenes import is_scene

BUILTIN_DATASETS = ("lfw_subset", "skimage_patches")
PATCH_PHOTOS = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel", "immunohistochemistry", "moon", "page", "rocket", "text")
PATCH = 64  # skimage_patches' tile side


@dataclass
class MetaDataset:
    """Meta-train and meta-test signals (one layout) and the names of the files they came from."""

    source: str
    train: list[Signal]
    test: list[Signal]
    train_files: list[str]
    test_files: list[str]

    @property
    def layout(self):
        return self.train[0].layout

    def values(self, split: str) -> torch.Tensor:
        """The values of every signal of ``split`` stacked: (S, N, C)."""
        return torch.stack([s.values for s in (self.train if split == "train" else self.test)])

    def coords(self, split: str) -> torch.Tensor | None:
        """The samples of every signal of ``split`` stacked (S, N, d); None when they are all the layout's own (grid signals)."""
        if isinstance(self.layout, GridLayout):
            return None
        return torch.stack([s.coords for s in (self.train if split == "train" else self.test)])


def dataset_files(source: str) -> list[str]:
    """The files a dataset spec names (module docstring), as absolute paths, sorted; ``lfw_subset`` gives item names."""
    if source == "lfw_subset":
        return [f"lfw_subset[{i}]" for i in range(200)]
    if source == "skimage_patches":
        return [f"skimage_patches[{name}]" for name in PATCH_PHOTOS]
    p = Path(source)
    if is_scene(p):  # one scene, cut into blocks of views
        return [str(p.resolve())]
    if p.is_dir():
        files = sorted(str(f.resolve()) for f in p.iterdir() if f.is_file() and f.suffix.lower() in SUFFIX_KIND)
        what = f"folder {p}"
    elif p.is_file():  # one long audio/video file, cut into clips (load_dataset checks --clip)
        if p.suffix.lower() not in SUFFIX_KIND:
            raise MclnfError(f"{source}: unsupported format {p.suffix or '(no suffix)'}")
        return [str(p.resolve())]
    else:
        files = sorted(str(Path(f).resolve()) for f in glob.glob(source) if Path(f).is_file() and Path(f).suffix.lower() in SUFFIX_KIND)
        what = f"pattern {source}"
        if not any(ch in source for ch in "*?["):
            raise MclnfError(f"{source}: no such folder, not a glob pattern, and not a built-in dataset ({', '.join(BUILTIN_DATASETS)})")
    if len(files) < 2:
        raise MclnfError(f"{what}: {len(files)} signal file(s) found; a meta-learning dataset needs at least 2 (one to meta-train, one to meta-test)")
    kinds = {SUFFIX_KIND[Path(f).suffix.lower()] for f in files}
    if len(kinds) > 1:
        raise MclnfError(f"{what}: mixes kinds of signals ({', '.join(sorted(kinds))}); a dataset holds one kind")
    return files


def folder_files(folder: str | Path) -> list[str]:
    """The signal files of ``folder`` (its files with a supported suffix, not its subfolders'), sorted by name;
    an error unless there is at least one and all are of one kind (the first file of another kind is named)."""
    p = Path(folder)
    if not p.is_dir():
        raise MclnfError(f"{folder}: {'not a folder' if p.exists() else 'no such folder'}")
    files = sorted(str(f) for f in p.iterdir() if f.is_file() and f.suffix.lower() in SUFFIX_KIND)
    if not files:
        raise MclnfError(f"{folder}: no signal files in the folder (expected {', '.join(sorted(SUFFIX_KIND))})")
    kind = SUFFIX_KIND[Path(files[0]).suffix.lower()]
    other = next((f for f in files if SUFFIX_KIND[Path(f).suffix.lower()] != kind), None)
    if other is not None:
        raise MclnfError(f"{other}: {SUFFIX_KIND[Path(other).suffix.lower()]}, not {kind} as {Path(files[0]).name}; the folder must hold one kind of signal")
    return files


def load_alike(files: list[str], options: dict, keep=None, hint: str = "") -> list[Signal | None]:
    """Every file loaded with the loader ``options`` (:func:`mclnf.signals.load_signal`'s); all must have one layout
    (one size, channel count, sample rate …) and the same samples, else an error names the first file that differs
    and how (``hint`` says what makes them alike). Signals whose index is not in ``keep`` (default: all kept) are
    loaded, checked and dropped: None in their place."""
    out, first = [], None
    for i, f in enumerate(files):
        s = load_signal(f, **options)
        if first is None:
            first = s
        elif s.layout != first.layout or not torch.equal(s.coords, first.coords):
            a, b = s.layout.to_dict(), first.layout.to_dict()
            diff = ", ".join(f"{k} {a[k]}" for k in a if a[k] != b.get(k)) or "other samples"
            same = ", ".join(f"{k} {b[k]}" for k in a if a[k] != b.get(k)) or "its"
            raise MclnfError(f"{f}: {diff}, where {Path(files[0]).name} has {same}; signals fitted together must be alike{hint}")
        out.append(s if keep is None or i in keep else None)
    return out


def split_files(files: list[str], test_fraction: float, seed: int, lists: tuple[str, str] | None = None) -> tuple[list[str], list[str]]:
    """(meta-train, meta-test) names: from two list files, or a seeded random ``test_fraction`` split."""
    if lists is not None:
        known = {Path(f).name: f for f in files} | {f: f for f in files}
        out = []
        for path in lists:
            try:
                names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
            except OSError as e:
                raise MclnfError(f"{path}: cannot read the list ({e.strerror})") from None
            missing = [n for n in names if n not in known]
            if missing:
                raise MclnfError(f"{path}: {missing[0]} is not in the dataset")
            if not names:
                raise MclnfError(f"{path}: the list is empty")
            out.append([known[n] for n in names])
        if set(out[0]) & set(out[1]):
            raise MclnfError(f"{lists[1]}: {sorted(set(out[0]) & set(out[1]))[0]} is in both the meta-train and the meta-test list")
        return out[0], out[1]
    if not 0 < test_fraction < 1:
        raise MclnfError(f"--test-fraction {test_fraction}: must be between 0 and 1")
    n_test = min(len(files) - 1, max(1, round(test_fraction * len(files))))
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    test = sorted(order[:n_test])
    return [files[i] for i in sorted(order[n_test:])], [files[i] for i in test]


def cut_clips(signal: Signal, length: int | None) -> list[Signal]:
    """A grid signal cut into consecutive clips of ``length`` along its first (time) axis; None: the signal."""
    if length is None:
        return [signal]
    layout = signal.layout
    total = layout.grid_shape[0]
    if length > total:
        raise MclnfError(f"--clip: {signal.name} has only {total} {'frames' if signal.kind == 'video' else 'samples'}, fewer than one clip of {length}")
    per = len(signal) // total
    clip = layout.with_grid_shape((length, *layout.grid_shape[1:]))
    coords = clip.coords()
    return [Signal(f"{signal.name}@{k * length}", clip, coords, signal.values[k * length * per : (k + 1) * length * per])
            for k in range(total // length)]  # fmt: skip


def photo_tiles(name: str) -> dict[tuple[int, int], np.ndarray]:
    """Every whole :data:`PATCH` × :data:`PATCH` tile of scikit-image's bundled photo ``name`` by its top-left corner:
    (PATCH, PATCH, C) uint8 (C = 1 for gray photos, 3 for colour ones)."""
    import skimage.data

    photo = getattr(skimage.data, name)()
    photo = photo[..., None] if photo.ndim == 2 else photo[..., :3]
    H, W = photo.shape[:2]
    return {(t, s): photo[t : t + PATCH, s : s + PATCH] for t in range(0, H - PATCH + 1, PATCH) for s in range(0, W - PATCH + 1, PATCH)}


def load_dataset(source: str, options: dict, test_fraction: float = 0.3, split_seed: int = 0, lists: tuple[str, str] | None = None,
                 clip: float | int | None = None, block_views: int | None = None) -> MetaDataset:  # fmt: skip
    """Load a dataset (module docstring). ``options`` are the signal loader's (``resize``, ``crop``,
    ``duration`` …, unset: None); ``clip`` is in seconds for audio, frames for video; ``block_views``
    the views of a scene's block (default 8)."""
    files = dataset_files(source)
    kind = "image" if source in BUILTIN_DATASETS else signal_kind(files[0])
    if clip is not None and kind not in ("audio", "video"):
        raise MclnfError(f"--clip: only audio and video files are cut into clips, not {kind} files")
    if clip is not None and not clip > 0:
        raise MclnfError(f"--clip {clip}: must be positive")
    if block_views is not None and kind != "radiance":
        raise MclnfError(f"--block-views: only scenes are cut into blocks of views, not {kind} files")
    if len(files) == 1 and kind != "radiance" and (clip is None or kind not in ("audio", "video")):
        raise MclnfError(f"{source}: a single file is a dataset only as an audio or video file cut into clips (--clip)")
    faces = None
    if source == "lfw_subset":
        import skimage.data

        faces = skimage.data.lfw_subset()
    image_options = {k: v for k, v in options.items() if k in ("resize", "crop", "gray", "pad") and v is not None}

    grid: list[torch.Tensor] = []  # the first signal's coordinates, shared by every signal sampled alike (2,000 faces at 180²: one grid, not 2,000 — 494 MiB)

    def load(name: str) -> list[Signal]:
        signals = load_one(name)
        for s in signals:
            if not grid:
                grid.append(s.coords)
            elif s.coords is not grid[0] and s.coords.shape == grid[0].shape and torch.equal(s.coords, grid[0]):
                if s.eval_coords is s.coords:
                    s.eval_coords = grid[0]
                s.coords = grid[0]
        return signals

    def load_one(name: str) -> list[Signal]:
        if faces is not None:
            index = int(name[len("lfw_subset[") : -1])
            return [image_signal(faces[index][..., None], name, **image_options)]
        if source == "skimage_patches":
            photo = name[len("skimage_patches[") : -1]
            return [image_signal(tile, f"{photo}@{top},{left}", **{**image_options, "gray": True}) for (top, left), tile in photo_tiles(photo).items()]
        sig = load_signal(name, **options)
        if kind == "radiance":
            return scene_blocks(sig, block_views or 8)
        length = None if clip is None else (round(clip * sig.layout.sample_rate) if kind == "audio" else int(clip))
        return cut_clips(sig, length)

    if len(files) == 1:  # the clips (blocks) of one file are split (they do not overlap in time, or share no view)
        clips = {s.name: s for s in load(files[0])}
        if len(clips) < 2:
            raise MclnfError(f"--clip {clip}: {files[0]} gives {len(clips)} clip; a dataset needs at least 2")
        train_files, test_files = split_files(list(clips), test_fraction, split_seed, lists)
        train, test = [clips[n] for n in train_files], [clips[n] for n in test_files]
    else:
        train_files, test_files = split_files(files, test_fraction, split_seed, lists)
        train = [s for f in train_files for s in load(f)]
        per_file = [load(f) for f in test_files]
        per_file = [[s for s in turn if s is not None] for turn in zip_longest(*per_file)]  # round-robin: the first N (--signals N) span the files
        test = [s for signals in per_file for s in signals]
    layout = train[0].layout
    for s in train + test:
        if s.layout != layout:
            raise MclnfError(f"{s.name}: its layout {s.layout} differs from {train[0].name}'s {layout}; every signal of a dataset must have one "
                             "size (use --resize/--crop for images and video, --clip for audio and video)")  # fmt: skip
    return MetaDataset(source, train, test, train_files, test_files)
