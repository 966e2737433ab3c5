"""Shared test helpers: the real-data pack beside the repository (../shared/data, or $MCLNF_DATA)."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mclnf.cli import main

DATA = Path(os.environ.get("MCLNF_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
TEST_DEVICES = [d.strip() for d in os.environ.get("MCLNF_TEST_DEVICE", "cpu,cuda").split(",") if d.strip()]  # benchmarks/gpu_check.py: cuda alone


def pytest_configure(config):
    if not (DATA / "README.md").is_file():
        raise pytest.UsageError(f"the test data pack is missing: {DATA} (put ../shared beside the repository or set MCLNF_DATA)")


@pytest.fixture(params=TEST_DEVICES)
def device(request) -> str:
    """The ``--device`` a device-parametrized test runs on: ``cpu`` always, ``cuda`` only where ``torch.cuda.is_available()``
    (skipped elsewhere: no test needs a GPU to pass). ``$MCLNF_TEST_DEVICE`` (comma-separated) picks the devices."""
    if request.param.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip(f"--device {request.param}: this machine has no CUDA device")
    return request.param


def cli(*args) -> int:
    """``mclnf ARGS`` in this process; its exit status."""
    try:
        return main([str(a) for a in args])
    except SystemExit as e:
        return e.code


def tiny_meta_run(out, method: str):
    """A meta-train run of ``method`` on 12 × 12 lfw_subset faces, small enough for a test (3 × 16 field, 1 inner step); its folder."""
    assert cli("meta-train", "lfw_subset", "--method", method, "--width", 16, "--depth", 3, "--inner-steps", 1, "--meta-batch", 2, "--outer-steps", 3,
               "--resize", 12, "--quiet", "--out", out) == 0  # fmt: skip
    return out


def one_line(err: str) -> str:
    """The single line a user error prints (no traceback)."""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    return lines[0]


def write_cifar(folder, train_per_class=2, test_per_class=1, seed=0):
    """The CIFAR-100 python version in miniature: bytes keys, pickled by numpy 1.x with protocol 2 as the real files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    parts = {}
    for part, k in (("train", train_per_class), ("test", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(100), k))
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        d = {b"filenames": [b"x.png"] * len(labels), b"batch_label": b"training batch 1 of 1",
             b"fine_labels": labels.tolist(), b"coarse_labels": (labels // 5).tolist(), b"data": data}  # fmt: skip
        (folder / part).write_bytes(pickle.dumps(d, protocol=2).replace(b"numpy._core", b"numpy.core"))
        parts[part] = data, labels
    return parts


def look_at_origin(eye) -> list[list[float]]:
    """The camera-to-world pose (OpenGL: the camera looks down −z) of a camera at ``eye`` looking at the origin, z up."""
    eye = np.asarray(eye, dtype=float)
    back = eye / np.linalg.norm(eye)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    m = np.eye(4)
    m[:3, :3] = np.stack([right, np.cross(back, right), back], 1)
    m[:3, 3] = eye
    return m.tolist()
