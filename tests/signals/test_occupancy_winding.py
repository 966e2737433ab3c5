"""Inside/outside of imperfect meshes: solid angles, generalized winding numbers against trimesh's ray tests,
trimesh's repair of a box with an open face, and a mesh with a non-manifold edge accepted with a message."""

import json
import math

import numpy as np
import pytest
import torch
import trimesh
from conftest import DATA, cli

from mclnf.signals.occupancy import WATERTIGHT, inside_test, load_occupancy, read_mesh, solid_angles, winding_numbers

BUNNY = DATA / "meshes" / "bunny_cr.obj"


def open_box() -> trimesh.Trimesh:
    """The unit box [-0.5, 0.5]³ without its two triangles on one side."""
    box = trimesh.creation.box()
    return trimesh.Trimesh(box.vertices, box.faces[:-2], process=False)


def finned_box() -> trimesh.Trimesh:
    """The unit box with a third triangle on one of its edges: a non-manifold edge (and two open ones) that no repair closes."""
    box = trimesh.creation.box()
    a, b = box.edges_unique[0]
    tip = (box.vertices[a] + box.vertices[b]) / 2 + 0.4 * np.sign(box.vertices[a] + box.vertices[b])
    vertices = np.vstack([box.vertices, tip])
    return trimesh.Trimesh(vertices, np.vstack([box.faces, [[a, b, len(box.vertices)]]]), process=False)


def test_solid_angle_of_an_octant_and_of_a_degenerate_triangle():
    octant = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [0, 0, 1]]], dtype=torch.float64)
    origin = torch.zeros(1, 3, dtype=torch.float64)
    assert solid_angles(octant, origin).item() == pytest.approx(math.pi / 2, abs=1e-12)  # an eighth of the sphere, seen from behind
    assert solid_angles(octant.flip(1), origin).item() == pytest.approx(-math.pi / 2, abs=1e-12)  # seen from the front
    assert solid_angles(torch.ones(1, 3, 3), torch.zeros(1, 3)).item() == 0.0


@pytest.mark.parametrize("mesh", [trimesh.creation.icosphere(subdivisions=3), trimesh.creation.box(), trimesh.creation.capsule(height=1.0, radius=0.3)],
                         ids=["icosphere", "box", "capsule"])  # fmt: skip
def test_winding_number_equals_ray_tests_on_watertight_meshes(mesh):
    rng = np.random.default_rng(0)
    surface, _ = trimesh.sample.sample_surface(mesh, 2000, seed=rng)
    points = np.concatenate([rng.uniform(-1.5, 1.5, (3000, 3)), surface + 0.01 * rng.standard_normal(surface.shape)])
    w = winding_numbers(mesh.vertices, mesh.faces, points)
    inside = mesh.contains(points)
    assert 0.1 < inside.mean() < 0.9
    assert np.array_equal(w > 0.5, inside)
    assert np.abs(w - inside).max() < 0.1  # 1 inside, 0 outside, up to the far field's first-order error


def test_winding_number_equals_ray_tests_on_a_real_mesh():
    """The bunny (69,630 triangles): the tree's far-field expansions at work, near-surface points included."""
    mesh = read_mesh(BUNNY)
    rng = np.random.default_rng(1)
    lo, hi = mesh.bounds
    surface, _ = trimesh.sample.sample_surface(mesh, 1500, seed=rng)
    points = np.concatenate([rng.uniform(lo, hi, (1500, 3)), surface + 0.002 * (hi - lo).max() * rng.standard_normal(surface.shape)])
    w = winding_numbers(mesh.vertices, mesh.faces, points)
    assert np.array_equal(w > 0.5, mesh.contains(points))
    inverted = winding_numbers(mesh.vertices, mesh.faces[:, ::-1], points[:100])  # inside out: −1 inside
    assert np.allclose(inverted, -w[:100], atol=1e-4)


def test_winding_numbers_of_a_box_with_an_open_face():
    mesh = open_box()
    assert not mesh.is_watertight
    rng = np.random.default_rng(2)
    points = rng.uniform(-1.5, 1.5, (20000, 3))
    depth = np.abs(points).max(1)
    well_inside, well_outside = points[depth < 0.3], points[depth > 0.8]  # at least 0.2 from every face, or 0.3 from the box
    assert np.all(winding_numbers(mesh.vertices, mesh.faces, well_inside) > 0.5)
    assert np.all(np.abs(winding_numbers(mesh.vertices, mesh.faces, well_outside)) < 0.5)
    # at the centre the missing face subtends a sixth of the sphere: w = 5/6
    assert winding_numbers(mesh.vertices, mesh.faces, np.zeros((1, 3)))[0] == pytest.approx(5 / 6, abs=1e-5)


def test_a_box_with_an_open_face_is_repaired_by_trimesh(tmp_path, capsys):
    path = tmp_path / "open.obj"
    open_box().export(path)
    signal = load_occupancy(path, points=3000, eval_points=1000)
    how = signal.layout.inside_test
    assert how.startswith("ray tests after trimesh repair") and "2 faces filled its holes" in how
    assert capsys.readouterr().err == f"{path}: inside/outside by {how}\n"
    box = trimesh.creation.box(extents=(2 * 0.9,) * 3)  # the box in field coordinates
    assert np.array_equal(signal.values[:, 0].numpy() > 0.5, box.contains(signal.coords.double().numpy()))


def test_a_mesh_with_a_non_manifold_edge_is_labelled_by_winding_numbers(tmp_path, capsys):
    mesh = finned_box()
    assert not mesh.is_watertight
    inside, how = inside_test(mesh)
    assert how == "generalized winding numbers (not watertight: 3 open or non-manifold edges)"
    rng = np.random.default_rng(3)
    points = rng.uniform(-1.0, 1.0, (20000, 3))
    far_from_fin = np.abs(points).max(1) < 0.45  # inside, away from the box's surface and the fin
    far_from_fin |= np.abs(points).max(1) > 1.0  # outside the fin's reach
    points = np.concatenate([points[far_from_fin], rng.uniform(-0.45, 0.45, (2000, 3))])
    assert np.array_equal(inside(points), trimesh.creation.box().contains(points))
    assert inside_test(trimesh.creation.box())[1] == WATERTIGHT


def test_fit_accepts_a_mesh_with_a_non_manifold_edge_and_says_how(tmp_path, capsys):
    path = tmp_path / "fin.ply"
    finned_box().export(path)
    out = tmp_path / "run"
    assert cli("fit", path, "--points", 3000, "--eval-points", 1000, "--resolution", 16, "--width", 16, "--depth", 2, "--steps", 4, "--quiet", "--out", out) == 0
    err = capsys.readouterr().err
    assert f"{path}: inside/outside by generalized winding numbers (not watertight: 3 open or non-manifold edges)" in err
    record = json.loads((out / "metrics.json").read_text())
    assert record["layout"]["inside_test"].startswith("generalized winding numbers")
