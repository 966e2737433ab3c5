"""Benchmark streams: IDX and pickle readers on hand-written files, permuted MNIST on the real MNIST test set,
split CIFAR-100 and split miniImageNet on tiny files in the official formats, and their errors."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from conftest import DATA, write_cifar

from mclnf.errors import MclnfError
from mclnf.signals.classification import (
    MINIIMAGENET_FILES,
    _permutation,
    load_benchmark,
    load_cifar100,
    load_miniimagenet,
    load_mnist,
    many_permutations,
    mnist_permutations,
    read_idx,
    split_cifar100,
    split_miniimagenet,
)

MNIST = DATA / "mnist"


def idx_bytes(arr: np.ndarray, code: int) -> bytes:
    return struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def rows(x: torch.Tensor) -> list[bytes]:
    """Each row of ``x`` as bytes, to compare rows as set members."""
    return [r.tobytes() for r in x.reshape(len(x), -1).numpy()]


# ------------------------------------------------------------------------------------------------ IDX


@pytest.mark.parametrize("code, dtype", [(0x08, ">u1"), (0x0B, ">i2"), (0x0D, ">f4"), (0x0E, ">f8")])
@pytest.mark.parametrize("zipped", [False, True])
def test_read_idx_round_trip(tmp_path, code, dtype, zipped):
    arr = (np.arange(2 * 3 * 5).reshape(2, 3, 5) * 7 - 20).astype(dtype) if dtype != ">u1" else np.arange(30, dtype=">u1").reshape(2, 3, 5)
    data = idx_bytes(arr, code)
    path = tmp_path / "a.idx"
    path.write_bytes(gzip.compress(data) if zipped else data)
    out = read_idx(path)
    assert out.shape == (2, 3, 5) and out.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize(
    "content, message",
    [(idx_bytes(np.zeros((4, 3), np.uint8), 0x08)[:-1], "bytes"),  # truncated payload
     (idx_bytes(np.zeros((4, 3), np.uint8), 0x08) + b"\0", "bytes"),  # trailing garbage
     (idx_bytes(np.zeros((4, 3), np.uint8), 0x08)[:7], "truncated IDX header"),
     (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "bad magic number"),
     (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "bad magic number"),  # unknown dtype code
     (gzip.compress(idx_bytes(np.zeros(9, np.uint8), 0x08))[:-6], "corrupt gzip"),
     (b"", "bad magic number")],
    ids=["truncated", "trailing", "short-header", "magic", "dtype", "gzip", "empty"],
)  # fmt: skip
def test_read_idx_errors(tmp_path, content, message):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(MclnfError, match=message) as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_read_idx_missing(tmp_path):
    with pytest.raises(MclnfError, match="no such file"):
        read_idx(tmp_path / "nothing.gz")


# ---------------------------------------------------------------------------------------------- MNIST


@pytest.fixture(scope="module")
def mnist():
    return load_mnist(MNIST)


@pytest.fixture(scope="module")
def permutations():
    return mnist_permutations(MNIST)


def test_load_mnist(mnist):
    x, y = mnist
    assert x.shape == (10_000, 784) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() == 0 and x.max() == 1
    assert y[:5].tolist() == [7, 2, 1, 0, 4]  # the MNIST test set's first digits
    counts = torch.bincount(y, minlength=10)
    assert len(counts) == 10 and counts.sum() == 10_000 and counts.min() > 800
    assert (x * 255 - (x * 255).round()).abs().max() < 1e-4  # bytes / 255


def test_load_mnist_train_names_and_errors(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(images, 0x08))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.array([3, 1, 4], np.uint8), 0x08)))
    x, y = load_mnist(tmp_path)
    assert y.tolist() == [3, 1, 4] and x.shape == (3, 784) and x[1, 0] == (784 % 256) / 255
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(images, 0x08))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([3, 1], np.uint8), 0x08))
    with pytest.raises(MclnfError, match=r"t10k-labels-idx1-ubyte: 2 labels for the 3 images"):  # t10k preferred
        load_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([3, 1, 12], np.uint8), 0x08))
    with pytest.raises(MclnfError, match="labels 0–9"):
        load_mnist(tmp_path)
    with pytest.raises(MclnfError, match="no MNIST files"):
        load_mnist(tmp_path / "..")
    with pytest.raises(MclnfError, match="no such folder"):
        load_mnist(tmp_path / "absent")


def test_mnist_permutations(mnist, permutations):
    x, y = mnist
    b = permutations
    assert b.name == "mnist-permutations" and len(b.tasks) == 20 and not b.multi_head and b.heads() is None
    assert b.input_shape == (784,) and b.num_classes == 10
    assert "8,000" in b.deviation and "2,000" in b.deviation
    pool = {r: i for i, r in enumerate(rows(x[:8000]))}
    for t, task in enumerate(b.tasks):
        assert task.index == t and len(task) == 1000 and task.x.shape == (1000, 784) and task.test_x.shape == (2000, 784)
        assert task.coords is task.x and task.classes is None
        assert task.values.shape == (1000, 2) and task.values.dtype == torch.int64
        assert (task.values[:, 0] == task.y).all() and (task.values[:, 1] == t).all()
        inverse = torch.argsort(_permutation(0, t))
        picked = [pool.get(r) for r in rows(task.x[:, inverse])]
        assert None not in picked and len(set(picked)) == 1000  # distinct digits of the pool
        assert picked != sorted(picked)  # in shuffled order
        assert torch.equal(task.y, y[picked])
        assert torch.equal(task.test_x[:, inverse], x[8000:]) and torch.equal(task.test_y, y[8000:])
    perms = [_permutation(0, t) for t in range(20)]
    assert not torch.equal(perms[0], torch.arange(784))  # the first task is permuted too
    assert len({tuple(p.tolist()) for p in perms}) == 20


def test_mnist_permutations_seeding(permutations):
    again = mnist_permutations(MNIST, tasks=3)
    other = mnist_permutations(MNIST, tasks=3, seed=1)
    for t in range(3):
        assert torch.equal(again.tasks[t].x, permutations.tasks[t].x) and torch.equal(again.tasks[t].y, permutations.tasks[t].y)
        assert not torch.equal(other.tasks[t].test_x, permutations.tasks[t].test_x)
        assert not torch.equal(other.tasks[t].y, permutations.tasks[t].y)


def test_many_permutations_and_options():
    b = many_permutations(MNIST, tasks=3, train_pool=9000)
    assert b.name == "many-permutations" and [len(t) for t in b.tasks] == [200] * 3
    assert b.tasks[0].test_x.shape == (1000, 784) and "9,000" in b.deviation and "1,000" in b.deviation
    with pytest.raises(MclnfError, match="exceed the pool"):
        mnist_permutations(MNIST, per_task=5000, train_pool=4000)
    with pytest.raises(MclnfError, match="no test digits"):
        mnist_permutations(MNIST, train_pool=10_000)


# ------------------------------------------------------------------------------------------ CIFAR-100


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    return root, write_cifar(root / "cifar-100-python")


def test_load_cifar100(cifar):
    root, parts = cifar
    train_x, train_y, test_x, test_y = load_cifar100(root)
    data, labels = parts["train"]
    assert train_x.shape == (200, 3, 32, 32) and test_x.shape == (100, 3, 32, 32) and train_x.dtype == torch.float32
    assert train_y.tolist() == labels.tolist() and test_y.tolist() == parts["test"][1].tolist()
    as_bytes = (train_x * 255).round().to(torch.uint8)
    i = 17
    assert as_bytes[i, 0, 0, 0] == data[i, 0] and as_bytes[i, 1, 0, 0] == data[i, 1024] and as_bytes[i, 2, 0, 0] == data[i, 2048]
    assert as_bytes[i, 0, 0, 1] == data[i, 1] and as_bytes[i, 0, 1, 0] == data[i, 32] and as_bytes[i, 2, 31, 31] == data[i, 3071]
    assert torch.equal(load_cifar100(root / "cifar-100-python")[3], test_y)  # the folder itself works too


def test_split_cifar100(cifar):
    root, parts = cifar
    b = split_cifar100(root)
    assert b.name == "split-cifar100" and b.multi_head and b.deviation is None and b.input_shape == (3, 32, 32)
    assert len(b.tasks) == 20 and b.num_classes == 100
    train = dict(zip(rows(torch.from_numpy(parts["train"][0])), parts["train"][1]))
    test = dict(zip(rows(torch.from_numpy(parts["test"][0])), parts["test"][1]))
    seen = []
    for t, task in enumerate(b.tasks):
        classes = task.classes.tolist()
        assert len(classes) == 5 and classes == sorted(classes) and task.classes.dtype == torch.int64
        seen += classes
        assert len(task) == 10 and task.x.shape == (10, 3, 32, 32) and task.test_x.shape == (5, 3, 32, 32)
        assert set(task.y.tolist()) == set(classes) and sorted(task.test_y.tolist()) == classes
        assert (task.values[:, 1] == t).all()
        train_rows = rows((task.x * 255).round().to(torch.uint8))
        assert [train[r] for r in train_rows] == task.y.tolist() and len(set(train_rows)) == 10
        assert [test[r] for r in rows((task.test_x * 255).round().to(torch.uint8))] == task.test_y.tolist()
    assert sorted(seen) == list(range(100)) and seen != sorted(seen)  # classes in random order
    heads = b.heads()
    assert heads.shape == (20, 100) and heads.dtype == torch.bool and (heads.sum(0) == 1).all()
    assert all(heads[t].nonzero()[:, 0].tolist() == task.classes.tolist() for t, task in enumerate(b.tasks))

    again, other = split_cifar100(root), split_cifar100(root, seed=1)
    assert all(torch.equal(a.x, c.x) and torch.equal(a.classes, c.classes) for a, c in zip(again.tasks, b.tasks))
    assert not torch.equal(other.heads(), heads)


def test_split_cifar100_options(cifar):
    root, _ = cifar
    b = split_cifar100(root, tasks=10, per_task=4)
    assert len(b.tasks) == 10 and all(len(t.classes) == 10 and len(t) == 4 and len(t.test_y) == 10 for t in b.tasks)
    full = split_cifar100(root, tasks=10)
    assert torch.equal(full.tasks[3].x[:4], b.tasks[3].x)  # the first per_task of the same stream
    with pytest.raises(MclnfError, match="cannot be split into 7 tasks"):
        split_cifar100(root, tasks=7)
    with pytest.raises(MclnfError, match="30 training samples per task, but task 0 has 20"):
        split_cifar100(root, tasks=10, per_task=30)


def test_cifar100_errors(tmp_path):
    with pytest.raises(MclnfError, match="no such folder"):
        load_cifar100(tmp_path / "absent")
    folder = tmp_path / "cifar-100-python"
    write_cifar(folder, 1, 1)
    (folder / "test").unlink()
    with pytest.raises(MclnfError, match=f"{folder / 'test'}: no such file"):
        split_cifar100(tmp_path)
    (folder / "test").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"coarse_labels": [0, 1]}))
    with pytest.raises(MclnfError, match=f"{folder / 'test'}: no fine_labels"):
        load_cifar100(folder)
    (folder / "test").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 1, 2]}))
    with pytest.raises(MclnfError, match="3 fine_labels for 2 images"):
        load_cifar100(folder)
    (folder / "test").write_bytes(pickle.dumps({b"data": np.zeros((2, 1024), np.uint8), b"fine_labels": [0, 1]}))
    with pytest.raises(MclnfError, match=r"shape \(N, 3072\)"):
        load_cifar100(folder)
    (folder / "test").write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(MclnfError, match=f"{folder / 'test'}: not a readable pickle"):
        load_cifar100(folder)
    (folder / "test").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 1]})[:-30])
    with pytest.raises(MclnfError, match="not a readable pickle"):
        load_cifar100(folder)


class Exploit:
    def __reduce__(self):
        return (print, ("this pickle ran code",))


def test_pickles_cannot_run_code(tmp_path, capsys):
    folder = tmp_path / "cifar-100-python"
    write_cifar(folder, 1, 1)
    (folder / "train").write_bytes(pickle.dumps({b"data": Exploit(), b"fine_labels": []}))
    with pytest.raises(MclnfError, match="refused to load builtins.print"):
        load_cifar100(folder)
    assert "ran code" not in capsys.readouterr().out


# -------------------------------------------------------------------------------------- miniImageNet


def write_miniimagenet(folder, classes=(8, 6, 6), per_class=5, seed=0):
    """The mini-imagenet-cache-*.pkl files in miniature: each class's images scattered over the file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files, wnid = [], 0
    for name, k in zip(MINIIMAGENET_FILES, classes):
        data = rng.integers(0, 256, (k * per_class, 84, 84, 3), dtype=np.uint8)
        slots = rng.permutation(k * per_class).reshape(k, per_class)
        class_dict = {f"n{wnid + c:08d}": slots[c].tolist() for c in range(k)}
        wnid += k
        (folder / name).write_bytes(pickle.dumps({"image_data": data, "class_dict": class_dict}))
        files.append((data, class_dict))
    return files


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mini")
    return folder, write_miniimagenet(folder)


def test_load_miniimagenet(mini):
    folder, files = mini
    x, y, wnids = load_miniimagenet(folder)
    assert x.shape == (100, 3, 84, 84) and x.dtype == torch.uint8 and y.shape == (100,)
    assert wnids == [f"n{c:08d}" for c in range(20)]
    offset = 0
    for data, class_dict in files:
        for wnid, idx in class_dict.items():
            assert (y[offset + torch.tensor(idx)] == wnids.index(wnid)).all()
        assert torch.equal(x[offset + 3], torch.from_numpy(data[3]).permute(2, 0, 1))  # HWC → CHW
        offset += len(data)


def test_split_miniimagenet(mini):
    folder, _ = mini
    x, y, _ = load_miniimagenet(folder)
    owner = dict(zip(rows(x), y.tolist()))
    b = split_miniimagenet(folder, tasks=4)
    assert b.name == "split-miniimagenet" and b.multi_head and b.input_shape == (3, 84, 84) and b.num_classes == 20
    assert sorted(c for t in b.tasks for c in t.classes.tolist()) == list(range(20))
    assert b.heads().shape == (4, 20)
    for task in b.tasks:
        assert len(task.classes) == 5 and task.x.shape == (20, 3, 84, 84) and task.x.dtype == torch.float32
        assert task.test_x.shape == (5, 3, 84, 84) and sorted(task.test_y.tolist()) == task.classes.tolist()
        train = rows((task.x * 255).round().to(torch.uint8))
        test = rows((task.test_x * 255).round().to(torch.uint8))
        assert [owner[r] for r in train] == task.y.tolist() and [owner[r] for r in test] == task.test_y.tolist()
        assert not set(train) & set(test) and len(set(train) | set(test)) == 25  # each class: 4 train, 1 test, all used
    again, other = split_miniimagenet(folder, tasks=4), split_miniimagenet(folder, tasks=4, seed=3)
    assert all(torch.equal(a.test_x, c.test_x) for a, c in zip(again.tasks, b.tasks))
    assert not all(torch.equal(a.test_x, c.test_x) for a, c in zip(other.tasks, b.tasks))
    with pytest.raises(MclnfError, match="20 classes cannot be split into 3 tasks"):
        split_miniimagenet(folder, tasks=3)
    with pytest.raises(MclnfError, match="too few to hold out"):
        split_miniimagenet(folder, tasks=4, test_fraction=0.05)
    with pytest.raises(MclnfError, match="strictly between 0 and 1"):
        split_miniimagenet(folder, test_fraction=1.0)


def test_miniimagenet_errors(tmp_path):
    folder = tmp_path / "mini"
    files = write_miniimagenet(folder, classes=(2, 1, 1), per_class=2)
    (folder / MINIIMAGENET_FILES[1]).unlink()
    with pytest.raises(MclnfError, match=f"{folder / MINIIMAGENET_FILES[1]}: no such file"):
        load_miniimagenet(folder)
    data, class_dict = files[1]
    (folder / MINIIMAGENET_FILES[1]).write_bytes(pickle.dumps({"image_data": data}))
    with pytest.raises(MclnfError, match=f"{MINIIMAGENET_FILES[1]}: no class_dict"):
        load_miniimagenet(folder)
    (folder / MINIIMAGENET_FILES[1]).write_bytes(pickle.dumps({"image_data": data, "class_dict": {"n00000000": [0, 1]}}))
    with pytest.raises(MclnfError, match="class n00000000 is also in an earlier file"):
        load_miniimagenet(folder)
    (folder / MINIIMAGENET_FILES[1]).write_bytes(pickle.dumps({"image_data": data, "class_dict": {"n00000009": [0]}}))
    with pytest.raises(MclnfError, match="1 of the 2 images belong to no class"):
        load_miniimagenet(folder)
    (folder / MINIIMAGENET_FILES[1]).write_bytes(pickle.dumps({"image_data": data, "class_dict": {"n00000009": [0, 2]}}))
    with pytest.raises(MclnfError, match="outside 0–1"):
        load_miniimagenet(folder)
    (folder / MINIIMAGENET_FILES[1]).write_bytes(pickle.dumps({"image_data": data[..., 0], "class_dict": class_dict}))
    with pytest.raises(MclnfError, match=r"uint8 \(N, H, W, 3\)"):
        load_miniimagenet(folder)
    with pytest.raises(MclnfError, match="no such folder"):
        load_miniimagenet(tmp_path / "absent")


# ------------------------------------------------------------------------------------------ registry


def test_load_benchmark(monkeypatch, cifar, permutations):
    with pytest.raises(MclnfError, match="unknown benchmark 'mnist'; choose one of mnist-permutations, many-permutations, split-cifar100, split-miniimagenet"):
        load_benchmark("mnist", None, 0)
    with pytest.raises(MclnfError, match="split-cifar100 needs --data PATH: the folder of the CIFAR-100 python version .* it is not downloaded"):
        load_benchmark("split-cifar100", None, 0)
    with pytest.raises(MclnfError, match="split-miniimagenet needs --data PATH: .*mini-imagenet-cache-train.pkl"):
        load_benchmark("split-miniimagenet", None, 0)
    assert torch.equal(load_benchmark("split-cifar100", cifar[0], 1).heads(), split_cifar100(cifar[0], seed=1).heads())
    monkeypatch.setenv("MCLNF_DATA", str(DATA))
    b = load_benchmark("mnist-permutations", None, 0)  # $MCLNF_DATA/mnist
    assert all(torch.equal(a.x, c.x) and torch.equal(a.test_x, c.test_x) for a, c in zip(b.tasks, permutations.tasks))
