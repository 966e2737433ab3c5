"""``mclnf export RUN --mesh``: marching cubes of a scene's density or a mesh's occupancy, on tiny trained runs and on
synthetic fields whose surface is a known sphere; user errors in one line."""

import dataclasses
import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh
from conftest import DATA, cli, look_at_origin, one_line

from mclnf.commands.export import grid_points, occupancy_mesh, radiance_density, radiance_mesh
from mclnf.errors import MclnfError
from mclnf.runs import load_field
from mclnf.signals.occupancy import OccupancyLayout
from mclnf.signals.radiance import RadianceLayout

LEGO = DATA / "nerf" / "lego_100.npz"
TINY = ("--samples", "8", "--width", "32", "--depth", "3", "--quiet")


def median_density(run, n=12) -> float:
    """A threshold the run's density surely crosses on an n³ grid: its median there."""
    field, layout = load_field(run)
    return float(radiance_density(field, layout, grid_points(layout.center, layout.bound, n)).median())


def check_inside_box(vertices: np.ndarray, center, bound: float, n: int) -> None:
    step = 2 * bound / (n - 1)
    assert len(vertices) > 0 and np.abs(vertices - np.asarray(center)).max() <= bound + 1e-2 * step


def test_export_the_mesh_of_a_tiny_scene_run(tmp_path, capsys):
    run = tmp_path / "lego"
    assert cli("fit", LEGO, "--resize", "16", *TINY, "--steps", "5", "--out", run) == 0
    capsys.readouterr()
    level = median_density(run)
    assert cli("export", run, "--mesh", "--resolution", "20", "--threshold", level) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{run / 'mesh.ply'}: ") and "vertices" in printed
    mesh = trimesh.load(run / "mesh.ply", force="mesh", process=False)
    layout = json.loads((run / "metrics.json").read_text())["layout"]
    check_inside_box(np.asarray(mesh.vertices), layout["center"], layout["bound"], 20)
    assert np.asarray(mesh.visual.vertex_colors).shape == (len(mesh.vertices), 4)  # coloured by the field


def test_a_nerfstudio_scene_trains_and_exports(tmp_path, capsys):
    """A tiny transforms.json scene (fl_x ≠ fl_y, off-centre principal point, distortion, aabb_scale) through fit and export."""
    scene = tmp_path / "scene"
    (scene / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    frames = []
    for k in range(4):
        a = 2 * math.pi * k / 4
        m = look_at_origin([3 * math.cos(a), 3 * math.sin(a), 0.5])
        iio.imwrite(scene / "images" / f"{k}.jpg", rng.integers(0, 256, (8, 10, 3), dtype=np.uint8))
        frames.append({"file_path": f"images/{k}", "transform_matrix": m})
    meta = {"fl_x": 9.0, "fl_y": 8.0, "cx": 4.5, "cy": 4.2, "w": 10, "h": 8, "k1": -0.05, "p2": 0.01, "aabb_scale": 1, "frames": frames}
    (scene / "transforms.json").write_text(json.dumps(meta))
    run = tmp_path / "run"
    assert cli("fit", scene, *TINY, "--holdout", "2", "--steps", "3", "--out", run) == 0
    record = json.loads((run / "metrics.json").read_text())
    assert record["layout"]["bound"] == pytest.approx(0.5 / 0.33) and len(record["layout"]["cameras"]) == 2 * 10
    assert iio.imread(run / "reconstruction.png").shape == (8, 2 * 10, 3)
    # the held-out views render through their own cameras again from field.safetensors, and at twice the size
    assert cli("render", run) == 0 and (iio.imread(run / "render.png") == iio.imread(run / "reconstruction.png")).all()
    assert cli("render", run, "--resolution", "16", "20", "--out", tmp_path / "x2.png") == 0 and iio.imread(tmp_path / "x2.png").shape == (16, 2 * 20, 3)
    capsys.readouterr()
    assert cli("export", run, "--mesh", "--resolution", "10", "--threshold", median_density(run, 10), "--out", tmp_path / "scene.ply") == 0
    check_inside_box(np.asarray(trimesh.load(tmp_path / "scene.ply", force="mesh").vertices), record["layout"]["center"], record["layout"]["bound"], 10)


def test_export_an_occupancy_run_at_half_occupancy(tmp_path, capsys):
    sphere = tmp_path / "sphere.ply"
    trimesh.creation.icosphere(subdivisions=3, radius=1.0).export(sphere)
    run = tmp_path / "sphere"
    assert cli("fit", sphere, "--points", "4000", "--eval-points", "2000", "--resolution", "16", "--width", "32", "--depth", "3",
               "--steps", "150", "--lr", "1e-3", "--quiet", "--out", run) == 0  # fmt: skip
    capsys.readouterr()
    assert cli("export", run, "--mesh") == 0  # the run's grid (16), threshold 0.5
    mesh = trimesh.load(run / "mesh.ply", force="mesh", process=False)
    radius = np.linalg.norm(mesh.vertices, axis=1)
    assert abs(np.median(radius) - 1.0) < 0.25  # a sphere after 150 steps, roughly
    # at occupancy 0.5 the export is the run's own reconstruction (logit 0) on the same grid
    recon = trimesh.load(run / "reconstruction.ply", force="mesh", process=False)
    assert abs(np.linalg.norm(recon.vertices, axis=1).mean() - radius.mean()) < 1e-3


# ---- synthetic fields: the sphere of known radius -------------------------------------------------------
def test_a_density_sphere_meshes_at_its_radius():
    center, bound, n = (0.3, -0.2, 0.1), 2.0, 33
    layout = RadianceLayout(height=4, width=4, focal=4.0, near=0.1, far=10.0, center=center, bound=bound, up=(0.0, 0.0, 1.0), views=tuple(np.eye(4).reshape(-1).tolist()))
    rgb = torch.logit(torch.tensor([0.2, 0.4, 0.6]))

    def field(inputs):  # σ = softplus(40 (0.5 − |x|)) of the normalized position: ln 2 on the sphere of radius 0.5·bound = 1
        o0 = 40 * (0.5 - inputs[:, :3].norm(dim=-1, keepdim=True))
        return torch.cat([o0, rgb.expand(len(inputs), 3)], -1)

    mesh = radiance_mesh(field, layout, n, threshold=math.log(2))
    r = np.linalg.norm(mesh.vertices - np.asarray(center), axis=1)
    voxel = 2 * bound / (n - 1)
    assert np.abs(r - 1.0).max() < voxel and np.abs(r - 1.0).mean() < 0.1 * voxel
    outward = np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles_center - np.asarray(center))
    assert mesh.is_watertight and (outward[mesh.area_faces > 1e-12] > 0).all()  # normals point out (marching cubes leaves a few zero-area faces)
    assert np.abs(np.asarray(mesh.visual.vertex_colors)[:, :3].astype(int) - [51, 102, 153]).max() <= 1
    # the default threshold is instant-ngp's 2.5 per side of the box
    assert radiance_mesh(field, layout, 9).vertices.shape[1] == 3
    with pytest.raises(MclnfError, match=r"lies in \[.*, 20\] on the 9³ grid and never crosses 1000"):
        radiance_mesh(field, layout, 9, threshold=1e3)
    with pytest.raises(MclnfError, match="normalized device coordinates"):
        radiance_mesh(field, dataclasses.replace(layout, ndc=True), 9)


def test_an_occupancy_sphere_meshes_at_its_radius_in_mesh_coordinates():
    layout = OccupancyLayout(center=(1.0, 2.0, 3.0), scale=2.0, resolution=8)
    field = lambda x: 30 * (0.6 - x.norm(dim=-1, keepdim=True))  # noqa: E731  logit 0 on |x| = 0.6 field units: 1.2 mesh units
    n = 41
    mesh = occupancy_mesh(field, layout, n)
    r = np.linalg.norm(mesh.vertices - np.array([1.0, 2.0, 3.0]), axis=1)
    assert np.abs(r - 1.2).max() < 2 * layout.scale / (n - 1)
    inner = occupancy_mesh(field, layout, n, threshold=0.9)  # a higher occupancy: a smaller sphere
    assert np.linalg.norm(inner.vertices - np.array([1.0, 2.0, 3.0]), axis=1).mean() < r.mean()


# ---- user errors ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("image") / "camera"
    assert cli("fit", "camera", "--resize", "8", "--width", "8", "--depth", "2", "--steps", "1", "--quiet", "--out", run) == 0
    return run


@pytest.mark.parametrize(
    "args, message",
    [
        (("--mesh",), "holds a field of image signals; only scene (radiance) and mesh (occupancy) fields have a surface"),
        ((), "say what to export: --mesh"),
        (("--mesh", "--resolution", "1"), "--resolution 1: the marching-cubes grid needs at least 2 points per axis"),
        (("--mesh", "--out", "mesh.obj"), "--out mesh.obj: meshes are written as .ply, not .obj"),
    ],
)
def test_user_errors_are_one_line(image_run, capsys, args, message):
    capsys.readouterr()
    assert cli("export", image_run, *args) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("mclnf export: error: ") and message in line
    assert not (image_run / "mesh.ply").exists()


def test_a_folder_without_a_field_is_one_line(tmp_path, capsys):
    assert cli("export", tmp_path, "--mesh") == 2
    assert "no field.safetensors; export reads fit runs" in one_line(capsys.readouterr().err)
    assert cli("export", tmp_path / "none", "--mesh") == 2
    assert "no such file" in one_line(capsys.readouterr().err)
