"""Occupancy signals: normalization, point sampling, labels, reconstruction and errors on real meshes."""

import numpy as np
import pytest
import torch
import trimesh
from conftest import DATA

from mclnf.errors import MclnfError
from mclnf.signals import load_signal
from mclnf.signals.base import Layout
from mclnf.signals.occupancy import MARGIN, OccupancyLayout, load_occupancy, read_mesh

BUNNY = DATA / "meshes" / "bunny_cr.obj"
N = 3000  # training points: 1000 uniform, 1000 with σ=0.1, 1000 with σ=0.01


@pytest.fixture(scope="module")
def bunny():
    return load_occupancy(BUNNY, points=N, eval_points=1500, seed=0)


@pytest.fixture(scope="module")
def unit_bunny(bunny):
    """The bunny in field coordinates."""
    mesh = read_mesh(BUNNY)
    return trimesh.Trimesh(bunny.layout.normalize(mesh.vertices), mesh.faces, process=False)


def test_layout_and_shapes(bunny):
    layout = bunny.layout
    assert (layout.kind, layout.loss, layout.primary_metric, layout.suffix, layout.in_dim, layout.out_dim) == ("occupancy", "bce", "iou", ".ply", 3, 1)
    assert bunny.coords.shape == (N, 3) and bunny.values.shape == (N, 1) and bunny.eval_coords.shape == (1500, 3)
    assert bunny.coords.dtype == torch.float32 and set(bunny.values.unique().tolist()) == {0.0, 1.0}
    assert bunny.coords.abs().max() <= 1.0
    assert Layout.from_dict(layout.to_dict()) == layout  # center survives a JSON round trip (list → tuple)


def test_normalization_fits_mesh_into_box_with_margin(bunny, unit_bunny):
    lo, hi = unit_bunny.bounds
    assert np.allclose(lo, -hi, atol=1e-9)  # centred on the bounding box
    assert np.isclose(hi.max(), MARGIN) and np.all(hi <= MARGIN + 1e-9)  # longest side spans [-0.9, 0.9]
    mesh = read_mesh(BUNNY)
    assert np.allclose(bunny.layout.denormalize(unit_bunny.vertices), mesh.vertices)


def test_sampling_proportions(bunny, unit_bunny):
    uniform, coarse, fine = bunny.coords[:1000].numpy(), bunny.coords[1000:2000].numpy(), bunny.coords[2000:].numpy()
    # a third uniform over the whole box: reaches every face, about half of each axis within |x| < 0.5
    assert np.all(uniform.min(0) < -0.95) and np.all(uniform.max(0) > 0.95)
    assert np.all(np.abs((np.abs(uniform) < 0.5).mean(0) - 0.5) < 0.07)
    # two thirds near the surface: distance to the surface is at most the noise's norm (median 1.54 σ)
    dist = {name: np.median(np.abs(trimesh.proximity.signed_distance(unit_bunny, pts[::4]))) for name, pts in (("uniform", uniform), ("coarse", coarse), ("fine", fine))}
    assert dist["fine"] < 1.54 * 0.01 * 1.3
    assert 0.02 < dist["coarse"] < 1.54 * 0.1 * 1.3
    assert dist["uniform"] > 2 * dist["coarse"]


def test_labels_agree_with_signed_distance(bunny, unit_bunny):
    idx = np.random.default_rng(1).choice(N, 500, replace=False)
    sd = trimesh.proximity.signed_distance(unit_bunny, bunny.coords[idx].double().numpy())  # positive inside
    clear = np.abs(sd) > 1e-4
    assert clear.sum() > 450
    inside = bunny.values[idx, 0].numpy() > 0.5
    assert np.array_equal(inside[clear], sd[clear] > 0)
    assert 0.1 < inside.mean() < 0.9


def test_seeds():
    a = load_occupancy(BUNNY, points=300, eval_points=300, seed=0)
    b = load_occupancy(BUNNY, points=300, eval_points=300, seed=0)
    c = load_occupancy(BUNNY, points=300, eval_points=300, seed=1)
    assert torch.equal(a.coords, b.coords) and torch.equal(a.values, b.values) and torch.equal(a.eval_coords, b.eval_coords)
    assert not torch.allclose(a.coords, c.coords) and not torch.allclose(a.eval_coords, c.eval_coords)
    assert not torch.allclose(a.coords, a.eval_coords)  # held-out points come from another stream


def test_metrics(bunny):
    labels, logits = bunny.eval_values, bunny.eval_values * 4 - 2
    assert bunny.layout.metrics(logits, labels) == {"iou": 1.0, "accuracy": 1.0}
    assert bunny.layout.metrics(-logits, labels) == {"iou": 0.0, "accuracy": 0.0}
    half = logits.clone()
    inside = (labels[:, 0] > 0.5).nonzero()[:, 0]
    half[inside[: len(inside) // 2]] = -1.0  # miss half of the inside points
    m = bunny.layout.metrics(half, labels)
    assert m["iou"] == pytest.approx((len(inside) - len(inside) // 2) / len(inside))
    assert m["accuracy"] == pytest.approx(1 - (len(inside) // 2) / len(labels))


def test_reconstruct_sphere_round_trip(tmp_path):
    layout = OccupancyLayout(center=(1.0, -2.0, 3.0), scale=2.0, resolution=64)
    mesh = layout.reconstruct(lambda x: 0.5 - x.norm(dim=1, keepdim=True))  # radius 0.5 in the field = 1 in the mesh
    assert mesh.is_watertight and mesh.volume > 0  # outward normals
    assert mesh.volume == pytest.approx(4 / 3 * np.pi, rel=0.02)
    assert np.allclose(mesh.bounds, [[0, -3, 2], [2, -1, 4]], atol=0.01)
    layout.save(mesh, tmp_path / "sphere.ply")
    back = trimesh.load(tmp_path / "sphere.ply", force="mesh")
    assert len(back.faces) == len(mesh.faces) and np.isclose(back.volume, mesh.volume, rtol=1e-4)


def test_reconstruct_bunny_from_perfect_field(bunny, unit_bunny):
    layout = OccupancyLayout(bunny.layout.center, bunny.layout.scale, resolution=96)
    predict = lambda x: torch.from_numpy(unit_bunny.contains(x.double().numpy()) * 2.0 - 1.0).float()[:, None]  # noqa: E731
    mesh = layout.reconstruct(predict)
    original = read_mesh(BUNNY)
    assert mesh.volume == pytest.approx(original.volume, rel=0.05)
    voxel = 2 / 95 * layout.scale
    assert np.allclose(mesh.bounds, original.bounds, atol=voxel)


def test_reconstruct_closes_surface_at_box_boundary():
    layout = OccupancyLayout(center=(0.0, 0.0, 0.0), scale=1.0, resolution=16)
    mesh = layout.reconstruct(lambda x: 0.5 - x[:, :1])  # inside for x < 0.5: a slab cut by the box
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(1.5 * 2 * 2, rel=0.02)


@pytest.mark.parametrize("value,where", [(1.0, "inside"), (-1.0, "outside")])
def test_reconstruct_without_surface(value, where):
    layout = OccupancyLayout(center=(0.0, 0.0, 0.0), scale=1.0, resolution=8)
    with pytest.raises(MclnfError, match=f"everywhere {where}"):
        layout.reconstruct(lambda x: torch.full((len(x), 1), value))
    with pytest.raises(MclnfError, match="NaN"):
        layout.reconstruct(lambda x: torch.full((len(x), 1), float("nan")))


@pytest.mark.parametrize("suffix", [".ply", ".stl", ".off", ".obj"])
def test_formats_and_dispatch(tmp_path, suffix):
    path = tmp_path / f"ball{suffix}"
    trimesh.creation.icosphere(subdivisions=2, radius=3.0).apply_translation([5, 0, 0]).export(path)
    s = load_signal(path, points=300, eval_points=30)
    assert s.kind == "occupancy" and len(s) == 300 and len(s.eval_coords) == 30
    assert np.allclose(s.layout.center, [5, 0, 0], atol=1e-6) and s.layout.scale == pytest.approx(3 / MARGIN, rel=1e-3)


def test_scene_is_merged(tmp_path):
    """Two objects in one OBJ (a Scene for trimesh) are merged into one mesh."""
    path = tmp_path / "two.obj"
    a = trimesh.creation.box(extents=(1, 1, 1))
    b = trimesh.creation.box(extents=(1, 1, 1)).apply_translation([3, 0, 0])
    text = "o a\n" + "".join(f"v {x} {y} {z}\n" for x, y, z in a.vertices) + "".join(f"f {i + 1} {j + 1} {k + 1}\n" for i, j, k in a.faces)
    text += "o b\n" + "".join(f"v {x} {y} {z}\n" for x, y, z in b.vertices) + "".join(f"f {i + 9} {j + 9} {k + 9}\n" for i, j, k in b.faces)
    path.write_text(text)
    s = load_occupancy(path, points=300, eval_points=30)
    assert np.allclose(s.layout.center, [1.5, 0, 0]) and s.layout.scale == pytest.approx(2 / MARGIN)


def test_errors(tmp_path):
    with pytest.raises(MclnfError, match="no such file"):
        load_occupancy(tmp_path / "missing.obj")
    xyz = tmp_path / "cloud.xyz"
    xyz.write_text("0 0 0\n1 1 1\n")
    with pytest.raises(MclnfError, match=r"cloud\.xyz: unsupported format \.xyz"):
        load_occupancy(xyz)
    garbage = tmp_path / "garbage.obj"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(MclnfError, match=r"garbage\.obj: (cannot read mesh|the file has no triangle faces)"):
        load_occupancy(garbage)
    bad_ply = tmp_path / "bad.ply"
    bad_ply.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 100\n" + b"\x00" * 7)
    with pytest.raises(MclnfError, match=r"bad\.ply: (cannot read mesh|the file has no triangle faces)"):
        load_occupancy(bad_ply)
    cloud = tmp_path / "cloud.ply"
    trimesh.PointCloud(np.random.default_rng(0).normal(size=(50, 3))).export(cloud)
    with pytest.raises(MclnfError, match=r"cloud\.ply: the file has no triangle faces"):
        load_occupancy(cloud)
    with pytest.raises(MclnfError, match="--points 0: must be at least 1"):
        load_occupancy(BUNNY, points=0)
    with pytest.raises(MclnfError, match="--eval-points -1: must be at least 1"):
        load_occupancy(BUNNY, eval_points=-1)
