"""Benchmark streams of online continual classification: permuted MNIST, split CIFAR-100, split miniImageNet.

Every stream is built from local files (nothing is downloaded) and is a pure function of the files and
the seed. Image datasets are held as uint8 while the tasks are built, and each task's images are
converted to float32 on their own, so peak memory is the uint8 data plus one float32 copy of it.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mclnf.errors import MclnfError


@dataclass
class ClassTask:
    """One task of an online classification stream (the continual learners of :mod:`mclnf.learners` take it as they take a field's :class:`~mclnf.signals.tasks.Task`).

    ``x`` (N, *input_shape) float32 and ``y`` (N,) int64 global class ids are the training samples in
    stream order; ``test_x``, ``test_y`` the task's test set; ``classes`` the task's sorted class ids
    for a multi-head stream, None for a single head.
    """

    index: int
    x: Tensor
    y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: Tensor | None = None

    @property
    def coords(self) -> Tensor:
        return self.x

    @cached_property
    def values(self) -> Tensor:
        """(N, 2) int64: each sample's label and task index."""
        return torch.stack([self.y, torch.full_like(self.y, self.index)], 1)

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Benchmark:
    """A stream of tasks; ``deviation`` says how its protocol departs from the paper's (None: it does not)."""

    name: str
    tasks: list[ClassTask]
    input_shape: tuple[int, ...]
    num_classes: int
    multi_head: bool
    deviation: str | None

    def heads(self) -> Tensor | None:
        """(T, num_classes) bool: row t marks task t's classes; None for a single head."""
        if not self.multi_head:
            return None
        mask = torch.zeros(len(self.tasks), self.num_classes, dtype=torch.bool)
        for t, task in enumerate(self.tasks):
            mask[t, task.classes] = True
        return mask


def _generator(seed: int, purpose: str, *index: int) -> torch.Generator:
    """A torch generator seeded by (seed, purpose, index…): independent streams for every use of one seed."""
    state = np.random.SeedSequence([seed % 2**63, zlib.crc32(purpose.encode()), *index]).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


def _check_folder(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise MclnfError(f"{p}: no such folder")
    if not p.is_dir():
        raise MclnfError(f"{p}: not a folder")
    return p


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise MclnfError(f"{path}: no such file")
    try:
        return path.read_bytes()
    except OSError as e:
        raise MclnfError(f"{path}: cannot be read ({e.strerror or e})") from None


# ---------------------------------------------------------------------------------------------- MNIST

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An array in the IDX format of the MNIST files, gzip'ed or not (told by the gzip magic bytes)."""
    path = Path(path)
    data = _read_bytes(path)
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise MclnfError(f"{path}: corrupt gzip data ({e})") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        raise MclnfError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'none'})")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    if len(data) < 4 + 4 * ndim:
        raise MclnfError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    payload = len(data) - 4 - 4 * ndim
    if payload != int(np.prod(shape)) * dtype.itemsize:
        raise MclnfError(f"{path}: IDX data of {payload} bytes, but its header {shape} of {dtype.name} needs {int(np.prod(shape)) * dtype.itemsize}")
    return np.frombuffer(data, dtype, offset=4 + 4 * ndim).reshape(shape).astype(dtype.newbyteorder("="))


def _mnist_files(root: str | os.PathLike) -> tuple[str, Path, Path]:
    """The MNIST set in ``root``: ("t10k" or "train", images file, labels file); t10k is preferred."""
    root = _check_folder(root)
    for split in ("t10k", "train"):
        stems = (f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte")
        found = [next((p for p in (root / f"{stem}.gz", root / stem) if p.is_file()), None) for stem in stems]
        if all(found):
            return split, found[0], found[1]
    raise MclnfError(f"{root}: no MNIST files (expected t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz, or the train-* ones, gzip'ed or not)")


def _read_mnist(images: Path, labels: Path) -> tuple[Tensor, Tensor]:
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
        raise MclnfError(f"{images}: expected uint8 images of 28×28, got {x.dtype.name} of shape {x.shape}")
    if y.ndim != 1 or y.dtype != np.uint8 or (y > 9).any():
        raise MclnfError(f"{labels}: expected uint8 labels 0–9, got {y.dtype.name} of shape {y.shape}")
    if len(x) != len(y):
        raise MclnfError(f"{labels}: {len(y)} labels for the {len(x)} images of {images.name}")
    return torch.from_numpy(x.reshape(len(x), 784)).float().div_(255), torch.from_numpy(y.astype(np.int64))


def load_mnist(root: str | os.PathLike) -> tuple[Tensor, Tensor]:
    """MNIST digits of the folder ``root``: x float32 (N, 784) in [0, 1], y int64 (N,)."""
    return _read_mnist(*_mnist_files(root)[1:])


def _permuted_mnist(name: str, root: str | os.PathLike, tasks: int, per_task: int, seed: int, train_pool: int) -> Benchmark:
    """Permuted MNIST (GEM, La-MAML) from one MNIST set: every task, the first included, permutes the 784
    pixels with its own random permutation; its ``per_task`` training digits are a random subset of the
    first ``train_pool`` digits in random order, its test set all the other digits."""
    split, images, labels = _mnist_files(root)
    x, y = _read_mnist(images, labels)
    n = len(x)
    if tasks < 1 or per_task < 1:
        raise MclnfError(f"{name}: tasks ({tasks}) and samples per task ({per_task}) must be positive")
    if not 0 < train_pool < n:
        raise MclnfError(f"{name}: a training pool of {train_pool} digits leaves no test digits of the {n} in {images}")
    if per_task > train_pool:
        raise MclnfError(f"{name}: {per_task} training samples per task exceed the pool of {train_pool} digits")
    stream = []
    for t in range(tasks):
        perm = _permutation(seed, t)
        pick = torch.randperm(train_pool, generator=_generator(seed, "mnist-subset", t))[:per_task]
        stream.append(ClassTask(t, x[pick][:, perm], y[pick], x[train_pool:][:, perm], y[train_pool:]))
    which = "test" if split == "t10k" else "training"
    deviation = (f"MNIST {which} set only: each task's training samples drawn from its first {train_pool:,} digits, "
                 f"tested on the last {n - train_pool:,} (the paper: the 60,000-digit training set and the 10,000-digit test set)")  # fmt: skip
    return Benchmark(name, stream, (784,), 10, False, deviation)


def _permutation(seed: int, task: int) -> Tensor:
    """Task ``task``'s permutation of the 784 pixels."""
    return torch.randperm(784, generator=_generator(seed, "mnist-permutation", task))


def mnist_permutations(root: str | os.PathLike, tasks: int = 20, per_task: int = 1000, seed: int = 0, train_pool: int = 8000) -> Benchmark:
    """MNIST Permutations of La-MAML/GEM: 20 tasks of 1,000 digits."""
    return _permuted_mnist("mnist-permutations", root, tasks, per_task, seed, train_pool)


def many_permutations(root: str | os.PathLike, tasks: int = 100, per_task: int = 200, seed: int = 0, train_pool: int = 8000) -> Benchmark:
    """Many Permutations of La-MAML: 100 tasks of 200 digits (their test sets alone take 100 × 2,000 × 784 floats, 630 MB)."""
    return _permuted_mnist("many-permutations", root, tasks, per_task, seed, train_pool)


# ------------------------------------------------------------------------------------------- pickles

_PICKLE_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}  # fmt: skip


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only, so a dataset file cannot run code."""

    def find_class(self, module: str, name: str):
        if module.startswith("numpy.core"):  # pickled by numpy 1.x, as the published files are
            module = "numpy._core" + module.removeprefix("numpy.core")
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: only numpy arrays and plain containers are allowed")
        return super().find_class(module, name)


def _load_pickle(path: Path, keys: tuple[str, ...]) -> dict:
    """The dict pickled in ``path``, with str keys (Python 2 pickles have bytes keys); it must hold ``keys``."""
    data = _read_bytes(path)
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # a corrupt pickle can raise almost anything
        reason = str(e).splitlines()[0] if str(e) else ""
        raise MclnfError(f"{path}: not a readable pickle ({type(e).__name__}{': ' + reason if reason else ''})") from None
    if not isinstance(obj, dict):
        raise MclnfError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    obj = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
    missing = [k for k in keys if k not in obj]
    if missing:
        raise MclnfError(f"{path}: no {' or '.join(missing)} in the pickled dict (keys: {', '.join(map(str, obj))})")
    return obj


# ---------------------------------------------------------------------------------- split benchmarks


def _class_tasks(x: Tensor, y: Tensor, is_test: Tensor, num_classes: int, tasks: int, seed: int, per_task: int | None, name: str) -> list[ClassTask]:
    """Tasks of ``num_classes / tasks`` classes each, in a seeded random class order, from uint8 images ``x``
    (N, C, H, W) with labels ``y``; a task's training samples are its classes' non-test images in a
    seeded random order (the first ``per_task`` of them if given), its test set their test images."""
    if tasks < 1 or num_classes % tasks:
        raise MclnfError(f"{name}: {num_classes} classes cannot be split into {tasks} tasks of equal size")
    order = torch.randperm(num_classes, generator=_generator(seed, "class-order")).view(tasks, -1)
    as_float = lambda idx: x[idx].to(torch.float32, memory_format=torch.contiguous_format).div_(255)  # noqa: E731
    stream = []
    for t in range(tasks):
        classes = order[t].sort().values
        in_task = torch.isin(y, classes)
        train = in_task.logical_and(~is_test).nonzero()[:, 0]
        train = train[torch.randperm(len(train), generator=_generator(seed, "class-stream", t))]
        if per_task is not None:
            if not 0 < per_task <= len(train):
                raise MclnfError(f"{name}: {per_task} training samples per task, but task {t} has {len(train)}")
            train = train[:per_task]
        test = in_task.logical_and(is_test).nonzero()[:, 0]
        stream.append(ClassTask(t, as_float(train), y[train], as_float(test), y[test], classes))
    return stream


def _read_cifar100_part(path: Path) -> tuple[Tensor, Tensor]:
    """One pickle of the CIFAR-100 python version: uint8 images (N, 3, 32, 32), int64 fine labels (N,)."""
    d = _load_pickle(path, ("data", "fine_labels"))
    data = np.asarray(d["data"])
    try:
        labels = np.asarray(d["fine_labels"], dtype=np.int64)
    except (TypeError, ValueError):
        raise MclnfError(f"{path}: fine_labels is not a list of integers") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise MclnfError(f"{path}: data must be uint8 of shape (N, 3072), got {data.dtype.name} of shape {data.shape}")
    if labels.shape != (len(data),):
        raise MclnfError(f"{path}: {labels.size} fine_labels for {len(data)} images")
    if len(labels) and not 0 <= labels.min() <= labels.max() < 100:
        raise MclnfError(f"{path}: fine_labels outside 0–99")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32)), torch.from_numpy(labels)


def _read_cifar100(path: str | os.PathLike) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The train and test pickles of the folder cifar-100-python (or of its parent): uint8 images, int64 labels."""
    p = _check_folder(path)
    folder = p / "cifar-100-python" if (p / "cifar-100-python").is_dir() else p
    return *_read_cifar100_part(folder / "train"), *_read_cifar100_part(folder / "test")


def load_cifar100(path: str | os.PathLike) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The CIFAR-100 python version (the folder cifar-100-python or its parent): train x (50000, 3, 32, 32)
    float32 in [0, 1], train y int64 fine labels, test x, test y."""
    train_x, train_y, test_x, test_y = _read_cifar100(path)
    return train_x.float().div_(255), train_y, test_x.float().div_(255), test_y


def split_cifar100(path: str | os.PathLike, tasks: int = 20, seed: int = 0, per_task: int | None = None) -> Benchmark:
    """Split CIFAR-100 (La-MAML, EMCL): the 100 classes in random order, ``tasks`` tasks of equal numbers of
    classes, each trained on all its classes' training images (or the first ``per_task``, e.g. La-MAML's
    2,500) and tested on their test images; multi-head."""
    train_x, train_y, test_x, test_y = _read_cifar100(path)
    is_test = torch.cat([torch.zeros(len(train_y), dtype=torch.bool), torch.ones(len(test_y), dtype=torch.bool)])
    x, y = torch.cat([train_x, test_x]), torch.cat([train_y, test_y])
    del train_x, test_x
    stream = _class_tasks(x, y, is_test, 100, tasks, seed, per_task, "split-cifar100")
    return Benchmark("split-cifar100", stream, (3, 32, 32), 100, True, None)


MINIIMAGENET_FILES = ("mini-imagenet-cache-train.pkl", "mini-imagenet-cache-val.pkl", "mini-imagenet-cache-test.pkl")


def load_miniimagenet(path: str | os.PathLike) -> tuple[Tensor, Tensor, list[str]]:
    """The miniImageNet pickles of the folder ``path`` (mini-imagenet-cache-{train,val,test}.pkl, each a dict
    of image_data uint8 (N, H, W, 3) and class_dict {wnid: [indices]}), all classes together: images
    uint8 (N, 3, H, W) — the full set is 1.3 GB as uint8, 5 GB as float32, so they stay uint8 —, int64
    labels (N,) and the wnid of each label (train classes first, then val, then test, each sorted)."""
    folder = _check_folder(path)
    images, labels, wnids = [], [], []
    for name in MINIIMAGENET_FILES:
        file = folder / name
        d = _load_pickle(file, ("image_data", "class_dict"))
        data, class_dict = np.asarray(d["image_data"]), d["class_dict"]
        if data.dtype != np.uint8 or data.ndim != 4 or data.shape[3] != 3 or (images and data.shape[1:3] != images[0].shape[1:3]):
            raise MclnfError(f"{file}: image_data must be uint8 (N, H, W, 3) of one size, got {data.dtype.name} of shape {data.shape}")
        if not isinstance(class_dict, dict):
            raise MclnfError(f"{file}: class_dict must be a dict {{wnid: [image indices]}}, got {type(class_dict).__name__}")
        y = np.full(len(data), -1, np.int64)
        for wnid in sorted(class_dict, key=str):
            label = str(wnid.decode() if isinstance(wnid, bytes) else wnid)
            if label in wnids:
                raise MclnfError(f"{file}: class {label} is also in an earlier file")
            try:
                idx = np.asarray(class_dict[wnid], dtype=np.int64).reshape(-1)
            except (TypeError, ValueError):
                raise MclnfError(f"{file}: class_dict[{label!r}] is not a list of image indices") from None
            if ((idx < 0) | (idx >= len(data))).any() or (y[idx] != -1).any() or len(np.unique(idx)) != len(idx):
                raise MclnfError(f"{file}: class_dict[{label!r}] lists image indices outside 0–{len(data) - 1} or of another class")
            y[idx] = len(wnids)
            wnids.append(label)
        if (y == -1).any():
            raise MclnfError(f"{file}: {(y == -1).sum()} of the {len(data)} images belong to no class of class_dict")
        images.append(data)
        labels.append(y)
        del d, data
    x = torch.from_numpy(np.concatenate(images) if len(images) > 1 else images[0]).permute(0, 3, 1, 2)
    return x, torch.from_numpy(np.concatenate(labels)), wnids


def split_miniimagenet(path: str | os.PathLike, tasks: int = 20, seed: int = 0, test_fraction: float = 0.2) -> Benchmark:
    """Split miniImageNet (A-GEM, EMCL): all classes of the three pickles, a seeded ``test_fraction`` of each
    class's images held out for testing (A-GEM: 120 of 600), the classes in random order split into
    ``tasks`` tasks of equal size; multi-head."""
    if not 0 < test_fraction < 1:
        raise MclnfError(f"split-miniimagenet: test fraction {test_fraction} must lie strictly between 0 and 1")
    x, y, wnids = load_miniimagenet(path)
    is_test = torch.zeros(len(y), dtype=torch.bool)
    g = _generator(seed, "miniimagenet-test")
    for c, wnid in enumerate(wnids):
        members = (y == c).nonzero()[:, 0]
        held = round(test_fraction * len(members))
        if not 0 < held < len(members):
            raise MclnfError(f"{path}: class {wnid} has {len(members)} images, too few to hold out a fraction {test_fraction} for testing")
        is_test[members[torch.randperm(len(members), generator=g)[:held]]] = True
    stream = _class_tasks(x, y, is_test, len(wnids), tasks, seed, None, "split-miniimagenet")
    return Benchmark("split-miniimagenet", stream, tuple(x.shape[1:]), len(wnids), True, None)


# ---------------------------------------------------------------------------------------- registry

BENCHMARKS: dict[str, Callable[..., Benchmark]] = {
    "mnist-permutations": mnist_permutations,
    "many-permutations": many_permutations,
    "split-cifar100": split_cifar100,
    "split-miniimagenet": split_miniimagenet,
}

_NEEDS_DATA = {
    "split-cifar100": "the folder of the CIFAR-100 python version (cifar-100-python with its train and test pickles)",
    "split-miniimagenet": "the folder of the miniImageNet pickles (" + ", ".join(MINIIMAGENET_FILES) + ")",
}


def load_benchmark(name: str, path: str | os.PathLike | None, seed: int) -> Benchmark:
    """The benchmark ``name`` from the data at ``path``; the MNIST ones default to $MCLNF_DATA/mnist (../shared/data/mnist)."""
    if name not in BENCHMARKS:
        raise MclnfError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    if path is None:
        if name in _NEEDS_DATA:
            raise MclnfError(f"{name} needs --data PATH: {_NEEDS_DATA[name]}; it is not downloaded")
        path = Path(os.environ.get("MCLNF_DATA", "../shared/data")) / "mnist"
    return BENCHMARKS[name](path, seed=seed)
