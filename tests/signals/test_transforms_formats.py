"""Scene folders by format: nerfstudio / instant-ngp ``transforms.json`` (intrinsics, distortion, per-frame overrides,
extensions, downscaled folders, split, box), detection beside NeRF-synthetic and LLFF, one-line errors, and the real lego."""

import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import DATA, cli, look_at_origin, one_line

from mclnf.errors import MclnfError
from mclnf.signals import load_signal
from mclnf.signals.cameras import distort, general_camera_rays, undistort
from mclnf.signals.rays import camera_rays
from mclnf.signals.scenes import is_scene, load_posed_images

LEGO400 = DATA / "nerf" / "lego_synthetic_400"
CAM = {"fl_x": 10.0, "fl_y": 7.0, "cx": 3.2, "cy": 4.9, "w": 8, "h": 8}  # fl_x ≠ fl_y, principal point off the centre (4, 4)
DISTORTION = {"k1": -0.12, "k2": 0.03, "k3": -0.004, "k4": 0.001, "p1": 0.004, "p2": -0.003}


def on_circle(k: int, n: int) -> list[list[float]]:
    """A camera-to-world pose (OpenGL) on a circle of radius 4 about the origin, looking at it."""
    a = 2 * math.pi * k / n
    return look_at_origin([4 * math.cos(a), 4 * math.sin(a), 1.0 + 0.1 * k])


def write_scene(folder, n=3, size=(8, 8), meta=None, frames=None, ext=".png", names=None):
    """A tiny nerfstudio folder: ``n`` random size[1] × size[0] (W × H) images and a transforms.json of ``meta`` (default CAM)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        name = names[k] if names else f"images/frame_{k:05d}{ext}"
        target = folder / name if "." in name.rsplit("/", 1)[-1] else folder / (name + ".png")
        iio.imwrite(target, rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        out.append({"file_path": name, "transform_matrix": on_circle(k, n), **((frames or {}).get(k, {}))})
    (folder / "transforms.json").write_text(json.dumps({**(CAM if meta is None else meta), "frames": out}))
    return folder


def hand_rays(fx, fy, cx, cy, pose, h=8, w=8):
    """Pinhole rays through the pixel centres, written out: camera direction ((i + ½ − cx)/fx, −(j + ½ − cy)/fy, −1)."""
    pose = torch.tensor(pose, dtype=torch.float64)
    dirs = [[(i + 0.5 - cx) / fx, -(j + 0.5 - cy) / fy, -1.0] for j in range(h) for i in range(w)]
    return torch.tensor(dirs, dtype=torch.float64) @ pose[:3, :3].T, pose[:3, 3]


# ---- detection ------------------------------------------------------------------------------------
def test_the_folder_tells_the_format(tmp_path):
    studio = write_scene(tmp_path / "studio")
    assert is_scene(studio)
    s = load_posed_images(studio, holdout=2)
    assert s.cameras is not None and not s.forward_facing and s.images.shape == (3, 8, 8, 3)
    # transforms_train.json wins over transforms.json: NeRF-synthetic (one focal length, no per-view cameras)
    blender = write_scene(tmp_path / "blender")
    meta = json.loads((blender / "transforms.json").read_text())
    for split, frames in (("train", meta["frames"][:2]), ("test", meta["frames"][2:])):
        (blender / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": frames}))
    b = load_posed_images(blender)
    assert b.cameras is None and (b.train, b.test) == ([0, 1], [2]) and (b.near, b.far) == (2.0, 6.0)
    # poses_bounds.npy alone: LLFF (forward-facing)
    llff = tmp_path / "llff"
    (llff / "images").mkdir(parents=True)
    rows = []
    for k in range(3):
        iio.imwrite(llff / "images" / f"{k}.png", np.full((8, 8, 3), 40 * k, dtype=np.uint8))
        m = np.zeros((3, 5))
        m[:, :3] = np.eye(3)[:, [1, 0, 2]] * [1, -1, 1]
        m[:, 3] = [0.1 * k, 0, 0]
        m[:, 4] = [8, 8, 10]
        rows.append(np.concatenate([m.reshape(-1), [1.0, 5.0]]))
    np.save(llff / "poses_bounds.npy", np.array(rows))
    assert is_scene(llff) and load_posed_images(llff, holdout=2).forward_facing


# ---- rays ---------------------------------------------------------------------------------------------
def test_pinhole_rays_with_their_own_focal_lengths_and_principal_point(tmp_path):
    folder = write_scene(tmp_path / "s", n=3)
    scene = load_posed_images(folder, holdout=2)
    poses = [f["transform_matrix"] for f in json.loads((folder / "transforms.json").read_text())["frames"]]
    for k in range(3):
        want_d, want_o = hand_rays(CAM["fl_x"], CAM["fl_y"], CAM["cx"], CAM["cy"], poses[k])
        rays = scene.view_rays(k).double()
        assert torch.allclose(rays[:, 3:], want_d, atol=1e-6) and torch.allclose(rays[:, :3], want_o.expand(64, 3), atol=1e-6)
    # the radiance signal trains on exactly these rays (holdout 2: view 1) and is judged on the held-out views' (0 and 2)
    signal = load_signal(folder, holdout=2)
    assert torch.equal(signal.coords, scene.view_rays(1))
    assert torch.equal(signal.eval_coords, torch.cat([scene.view_rays(0), scene.view_rays(2)]))
    # the layout renders its held-out views through their own cameras too
    layout = signal.layout
    assert torch.allclose(torch.cat(layout.view_rays(layout.poses, layout.cameras)), signal.eval_coords, atol=1e-5)


def test_a_centred_square_pinhole_is_the_nerf_camera(tmp_path):
    pose = torch.tensor(on_circle(1, 3), dtype=torch.float32)
    o1, d1 = general_camera_rays(6, 8, torch.tensor([9.0, 9.0, 4.0, 3.0, 0, 0, 0, 0, 0, 0]), pose)
    o2, d2 = camera_rays(6, 8, 9.0, pose)
    assert torch.allclose(d1, d2, atol=1e-6) and torch.equal(o1, o2)


def test_distorted_rays_land_on_the_pixel_centres(tmp_path):
    folder = write_scene(tmp_path / "s", n=2, meta={**CAM, **DISTORTION})
    scene = load_posed_images(folder, holdout=2)
    assert scene.cameras[0, 4:].tolist() == pytest.approx(list(DISTORTION.values()))
    for k in range(2):
        rays = scene.view_rays(k).double()
        cam = rays[:, 3:] @ scene.poses[k, :3, :3].double()  # back into the camera frame (OpenGL: x right, y up, −z forward)
        x, y = cam[:, 0] / -cam[:, 2], cam[:, 1] / cam[:, 2]  # normalized coordinates, y down (OpenCV)
        xd, yd = distort(x, y, torch.tensor(list(DISTORTION.values()), dtype=torch.float64))
        u, v = CAM["fl_x"] * xd + CAM["cx"], CAM["fl_y"] * yd + CAM["cy"]
        j, i = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
        assert (u - (i.reshape(-1) + 0.5)).abs().max() < 1e-5 and (v - (j.reshape(-1) + 0.5)).abs().max() < 1e-5
        undistorted = hand_rays(CAM["fl_x"], CAM["fl_y"], CAM["cx"], CAM["cy"], json.loads((folder / "transforms.json").read_text())["frames"][k]["transform_matrix"])[0]
        assert (rays[:, 3:] - undistorted).abs().max() > 1e-3  # the distortion moved them


def test_newton_undistortion_inverts_the_model_in_float64():
    k = torch.tensor(list(DISTORTION.values()), dtype=torch.float64)
    x, y = torch.meshgrid(torch.linspace(-0.6, 0.6, 25, dtype=torch.float64), torch.linspace(-0.5, 0.5, 21, dtype=torch.float64), indexing="ij")
    ux, uy = undistort(*distort(x, y, k), k)
    assert torch.allclose(ux, x, atol=1e-12) and torch.allclose(uy, y, atol=1e-12)
    with pytest.raises(MclnfError, match="cannot be inverted"):
        undistort(torch.tensor([3.0]), torch.tensor([3.0]), torch.tensor([-1.0, 0, 0, 0, 0, 0], dtype=torch.float64), "lens.json")


def test_a_frames_own_intrinsics_override_the_files(tmp_path):
    own = {"fl_x": 20.0, "fl_y": 15.0, "cx": 2.0, "cy": 6.5, "k1": 0.05}
    folder = write_scene(tmp_path / "s", n=3, frames={1: own})
    scene = load_posed_images(folder, holdout=2)
    assert scene.cameras[1].tolist() == [20.0, 15.0, 2.0, 6.5, 0.05, 0, 0, 0, 0, 0]
    assert scene.cameras[0].tolist() == [10.0, 7.0, 3.2, 4.9, 0, 0, 0, 0, 0, 0]
    # a frame's camera_angle_x replaces the file's focal lengths (both axes), keeping the file's principal point
    folder = write_scene(tmp_path / "angle", n=2, frames={0: {"camera_angle_x": 2 * math.atan(0.5)}})
    cam = load_posed_images(folder, holdout=2).cameras[0].tolist()
    assert cam[:4] == pytest.approx([8.0, 8.0, 3.2, 4.9])


def test_focal_from_the_field_of_view_and_defaults_from_the_image(tmp_path):
    folder = write_scene(tmp_path / "s", n=2, size=(8, 6), meta={"camera_angle_x": 2 * math.atan(0.5), "camera_angle_y": 2 * math.atan(0.25)})
    cam = load_posed_images(folder, holdout=2).cameras[0].tolist()
    assert cam[:4] == pytest.approx([8.0, 12.0, 4.0, 3.0])  # 0.5·W / tan(½ angle_x), 0.5·H / tan(½ angle_y); centre of an 8 × 6 image


def test_file_paths_with_and_without_extensions(tmp_path):
    folder = write_scene(tmp_path / "s", n=3, names=["images/a", "images/b.jpg", "images/c"])
    (folder / "images" / "c.png").rename(folder / "images" / "c.jpeg")
    meta = json.loads((folder / "transforms.json").read_text())
    meta["frames"][1]["file_path"] = "images/b"  # written without its .jpg
    meta["frames"][0]["file_path"] = "images\\a"  # a Windows path, as instant-ngp reads it
    (folder / "transforms.json").write_text(json.dumps(meta))
    assert load_posed_images(folder, holdout=2).images.shape == (3, 8, 8, 3)


def test_held_out_views_every_8th_or_the_files_split(tmp_path):
    folder = write_scene(tmp_path / "s", n=10)
    s = load_posed_images(folder)
    assert s.test == [0, 8] and s.train == [1, 2, 3, 4, 5, 6, 7, 9]
    meta = json.loads((folder / "transforms.json").read_text())
    meta["test_filenames"] = ["images/frame_00003.png", "images/frame_00005.png"]
    (folder / "transforms.json").write_text(json.dumps(meta))
    s = load_posed_images(folder)
    assert s.test == [3, 5] and len(s.train) == 8


def test_aabb_scale_gives_instant_ngps_scene_box(tmp_path):
    folder = write_scene(tmp_path / "s", n=3, meta={**CAM, "aabb_scale": 2})
    layout = load_signal(folder, holdout=2).layout
    assert layout.bound == pytest.approx(0.5 * 2 / 0.33) and layout.center == (0.0, 0.0, 0.0)
    folder = write_scene(tmp_path / "o", n=3, meta={**CAM, "aabb_scale": 1, "scale": 0.5, "offset": [0.5, 0.0, 1.0]})
    layout = load_signal(folder, holdout=2).layout
    assert layout.bound == pytest.approx(1.0) and layout.center == pytest.approx((0.0, 1.0, -1.0))
    assert load_signal(folder, holdout=2, scene_bound=0.7).layout.bound == 0.7  # --scene-bound overrides the file
    # without aabb_scale (a nerfstudio file): the default box of every scene; near/far from the cameras
    s = load_posed_images(write_scene(tmp_path / "n", n=3), holdout=2)
    assert s.center is None and 0 < s.near < 1 < s.far


def test_downscaled_images_folder(tmp_path):
    folder = write_scene(tmp_path / "s", n=2, size=(16, 12), meta={**CAM, "w": 16, "h": 12, **DISTORTION})
    (folder / "images_2").mkdir()
    for q in sorted((folder / "images").iterdir()):
        iio.imwrite(folder / "images_2" / q.name, iio.imread(q)[::2, ::2])
    full, half = load_posed_images(folder, holdout=2), load_posed_images(folder, holdout=2, factor=2)
    assert full.images.shape[1:3] == (12, 16) and half.images.shape[1:3] == (6, 8)
    assert torch.allclose(half.cameras[:, :4], full.cameras[:, :4] / 2)
    assert torch.equal(half.cameras[:, 4:], full.cameras[:, 4:])
    with pytest.raises(MclnfError, match="--factor 4: no images_4/ folder"):
        load_posed_images(folder, factor=4)


def test_resize_scales_each_views_camera(tmp_path):
    folder = write_scene(tmp_path / "s", n=2, size=(16, 12), meta={**CAM, "w": 16, "h": 12})
    s = load_posed_images(folder, holdout=2, resize=8)
    assert s.images.shape[1:3] == (6, 8) and s.cameras[0, :4].tolist() == pytest.approx([5.0, 3.5, 1.6, 2.45])


# ---- malformed files: one line naming the file and the field, exit 2 -----------------------------------------
def _break(folder, case):
    meta = json.loads((folder / "transforms.json").read_text())
    if case == "intrinsics":
        meta.pop("fl_x"), meta.pop("fl_y")
    elif case == "matrix":
        meta["frames"][1]["transform_matrix"] = np.eye(3).tolist()
    elif case == "image":
        (folder / "images" / "frame_00002.png").unlink()
    elif case == "size":
        meta["w"] = 10
    if case == "json":
        (folder / "transforms.json").write_text('{"fl_x": 10, "frames": [')
    else:
        (folder / "transforms.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "case, message",
    [
        ("intrinsics", r"transforms.json: frame 0 \(images/frame_00000.png\): missing intrinsics: no fl_x/fl_y \(or camera_angle_x/camera_angle_y\)"),
        ("matrix", r"transforms.json: frame 1 \(images/frame_00001.png\): transform_matrix has shape \(3, 3\); expected 4×4 or 3×4"),
        ("image", r"transforms.json: frame 2: image file .*images/frame_00002.png is missing"),
        ("json", r"transforms.json: malformed JSON"),
        ("size", r"frame_00000.png: image is 8 × 8 pixels but .*transforms.json's w, h = 10, 8 for frame 0"),
    ],
)
def test_each_malformed_file_is_one_line(tmp_path, capsys, case, message):
    folder = write_scene(tmp_path / "s", n=3)
    _break(folder, case)
    with pytest.raises(MclnfError, match=message):
        load_posed_images(folder)
    out = tmp_path / "run"
    assert cli("fit", folder, "--steps", "1", "--out", out, "--quiet") == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("mclnf fit: error: ") and str(folder) in line
    assert not out.exists()


def test_unsupported_lenses_are_refused(tmp_path):
    folder = write_scene(tmp_path / "s", n=2, meta={**CAM, "camera_model": "OPENCV_FISHEYE"})
    with pytest.raises(MclnfError, match="camera_model 'OPENCV_FISHEYE' is not supported"):
        load_posed_images(folder)


# ---- the real NeRF-synthetic lego -------------------------------------------------------------------------
@pytest.mark.skipif(not (LEGO400 / "transforms_train.json").is_file(), reason="lego_synthetic_400 not in the data pack")
def test_lego_synthetic_400_loads_its_100_train_and_25_test_views():
    s = load_posed_images(LEGO400)
    assert (len(s.train), len(s.test)) == (100, 25)
    assert s.images.shape == (125, 400, 400, 3) and s.cameras is None
    assert s.focal == pytest.approx(0.5 * 400 / math.tan(0.5 * 0.6911112070083618), rel=1e-6)
