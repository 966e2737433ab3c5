"""Posed images for radiance fields: the three formats agree on the same views, resizing, splits and errors."""

import json
import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from mclnf.errors import MclnfError
from mclnf.signals.scenes import average_pose, is_scene, load_posed_images

DATA = Path(os.environ.get("MCLNF_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
LEGO = DATA / "nerf" / "lego_100.npz"


@pytest.fixture(scope="module")
def raw():
    with np.load(LEGO) as d:
        return {k: d[k] for k in d.files}


@pytest.fixture(scope="module")
def lego():
    return load_posed_images(LEGO)


def test_npz_composites_on_white_and_splits_every_eighth(raw, lego):
    rgba = raw["images_rgba"]
    assert lego.images.shape == (100, 100, 100, 3) and lego.images.dtype == torch.float32
    assert lego.images.min() >= 0 and lego.images.max() <= 1
    v, y, x = np.argwhere(rgba[..., 3] == 0)[0]
    assert torch.equal(lego.images[v, y, x], torch.ones(3))
    partial = np.argwhere((rgba[..., 3] > 0) & (rgba[..., 3] < 255))[:5]
    opaque = np.argwhere(rgba[..., 3] == 255)[:2]
    assert len(partial) == 5 and len(opaque) == 2
    for v, y, x in [*partial, *opaque]:
        a = rgba[v, y, x, 3] / 255
        expected = rgba[v, y, x, :3] / 255 * a + (1 - a)
        np.testing.assert_allclose(lego.images[v, y, x].numpy(), expected, rtol=0, atol=1e-6)
    assert lego.focal == pytest.approx(138.88889, rel=1e-6)
    assert (lego.near, lego.far) == (2.0, 6.0)
    assert torch.equal(lego.poses, torch.from_numpy(raw["poses"]))
    assert len(lego.train) == 87 and len(lego.test) == 13
    assert lego.test == list(range(0, 100, 8)) and not set(lego.train) & set(lego.test)
    assert sorted(lego.train + lego.test) == list(range(100))
    assert lego.name == str(LEGO)
    other = load_posed_images(LEGO, holdout=10)
    assert other.test == list(range(0, 100, 10)) and len(other.train) == 90


def test_npz_resize_scales_focal(lego):
    half = load_posed_images(str(LEGO), resize=50)
    assert half.images.shape == (100, 50, 50, 3)
    assert half.focal == pytest.approx(lego.focal / 2, rel=1e-6)
    # bilinear without antialiasing at exactly ½: the mean of each 2×2 block
    blocks = lego.images[:2].reshape(2, 50, 2, 50, 2, 3).mean((2, 4))
    torch.testing.assert_close(half.images[:2], blocks, rtol=0, atol=1e-6)
    assert torch.equal(load_posed_images(LEGO, resize=0).images, lego.images)


def test_npz_rgb_images_3x4_poses_and_default_bounds(tmp_path, raw):
    rgb = raw["images_rgba"][:10, ..., :3]
    np.savez(tmp_path / "tiny.npz", images=rgb.astype(np.float32) / 255, poses=raw["poses"][:10, :3], focal=np.float32(50.0))
    s = load_posed_images(tmp_path / "tiny.npz", holdout=4)
    assert (s.near, s.far, s.focal) == (2.0, 6.0, 50.0)
    assert torch.equal(s.poses, torch.from_numpy(raw["poses"][:10]))
    torch.testing.assert_close(s.images, torch.from_numpy(rgb / 255).float(), rtol=0, atol=1e-7)
    assert s.test == [0, 4, 8] and s.train == [1, 2, 3, 5, 6, 7, 9]
    # camera_angle_x stands in for a missing focal; near 0 is kept (only absent keys get defaults)
    np.savez(tmp_path / "angle.npz", images=rgb, poses=raw["poses"][:10], camera_angle_x=raw["camera_angle_x"], near=0.0, far=3.0)
    s = load_posed_images(tmp_path / "angle.npz")
    assert s.focal == pytest.approx(float(raw["focal"]), rel=1e-5) and (s.near, s.far) == (0.0, 3.0)


def write_blender(root: Path, raw, train=(0, 1, 2, 3), test=(4, 5), split="test") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, views in (("train", train), (split, test)):
        (root / name).mkdir(exist_ok=True)
        frames = []
        for v in views:
            iio.imwrite(root / name / f"r_{v}.png", raw["images_rgba"][v])
            frames.append({"file_path": f"./{name}/r_{v}", "transform_matrix": raw["poses"][v].tolist()})
        (root / f"transforms_{name}.json").write_text(json.dumps({"camera_angle_x": float(raw["camera_angle_x"]), "frames": frames}))
    return root


def test_blender_folder_matches_npz(tmp_path, raw, lego):
    root = write_blender(tmp_path / "lego", raw)
    assert is_scene(root)
    s = load_posed_images(root)
    views = [0, 1, 2, 3, 4, 5]
    assert s.train == [0, 1, 2, 3] and s.test == [4, 5]
    torch.testing.assert_close(s.poses, lego.poses[views], rtol=0, atol=1e-6)
    assert torch.equal(s.images, lego.images[views])
    assert s.focal == pytest.approx(lego.focal, rel=1e-5)
    assert (s.near, s.far) == (2.0, 6.0)
    small = load_posed_images(root, resize=25)
    assert small.images.shape == (6, 25, 25, 3) and small.focal == pytest.approx(lego.focal / 4, rel=1e-5)
    # without a test file the held-out views come from val
    val = load_posed_images(write_blender(tmp_path / "val", raw, test=(7,), split="val"))
    assert val.test == [4] and torch.equal(val.images[4], lego.images[7])


def write_llff(root: Path, raw, views=range(6), bounds=(2.5, 5.5)) -> Path:
    (root / "images").mkdir(parents=True)
    c2w = raw["poses"][list(views), :3].astype(np.float64)
    # inverse of [c1, -c0, c2]: LLFF columns [down, right, backwards] = [-up, right, backwards]
    llff = np.concatenate([-c2w[:, :, 1:2], c2w[:, :, 0:1], c2w[:, :, 2:4]], 2)
    hwf = np.broadcast_to(np.array([100.0, 100.0, float(raw["focal"])])[:, None], (len(llff), 3, 1))
    rows = np.concatenate([np.concatenate([llff, hwf], 2).reshape(len(llff), 15), np.tile(bounds, (len(llff), 1))], 1)
    rows[-1, 15:] = (bounds[0] + 1, bounds[1] - 1)
    np.save(root / "poses_bounds.npy", rows)
    rgb = (raw["images_rgba"][list(views)] / 255.0)
    rgb = np.round((rgb[..., :3] * rgb[..., 3:] + 1 - rgb[..., 3:]) * 255).astype(np.uint8)
    for i, image in enumerate(rgb):
        iio.imwrite(root / "images" / f"IMG_{i:04d}.png", image)
    return root


def test_llff_folder_poses_bounds_and_split(tmp_path, raw):
    root = write_llff(tmp_path / "fern", raw)
    assert is_scene(root)
    s = load_posed_images(root, holdout=3)
    # NeRF's load_llff_data: translations scaled by 1 / (0.75·min bound), then recentred on the average pose
    scaled = raw["poses"][:6].astype(np.float64).copy()
    scaled[:, :3, 3] /= 0.75 * 2.5
    expected = np.linalg.inv(average_pose(scaled)) @ scaled
    torch.testing.assert_close(s.poses, torch.from_numpy(expected).float(), rtol=0, atol=1e-5)
    assert s.near == pytest.approx(0.9 / 0.75) and s.far == pytest.approx(5.5 / (0.75 * 2.5))
    assert s.focal == pytest.approx(float(raw["focal"]), rel=1e-6)
    assert s.test == [0, 3] and s.train == [1, 2, 4, 5]
    assert s.images.shape == (6, 100, 100, 3) and s.forward_facing
    assert torch.equal(s.images[2], torch.from_numpy(iio.imread(root / "images" / "IMG_0002.png")).float() / 255)
    # images_2/: half the hwf's size, focal / 2
    (root / "images").rename(root / "images_2")
    for f in sorted((root / "images_2").iterdir()):
        iio.imwrite(f, iio.imread(f)[::2, ::2])
    assert load_posed_images(root).focal == pytest.approx(float(raw["focal"]) / 2, rel=1e-6)


def test_is_scene(tmp_path, raw):
    assert is_scene(LEGO) and is_scene(str(LEGO))
    (tmp_path / "x.png").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    assert not is_scene(tmp_path / "x.png")
    assert not is_scene(tmp_path / "empty")
    assert not is_scene(tmp_path / "missing.npz")
    assert not is_scene(DATA / "nerf")


def test_npz_errors(tmp_path, raw):
    def save(name, **arrays):
        np.savez(tmp_path / name, **arrays)
        return tmp_path / name

    imgs, poses = raw["images_rgba"][:4], raw["poses"][:4]
    cases = [
        (tmp_path / "nope.npz", "nope.npz: no such file"),
        (tmp_path / "scene.txt", "scene.txt: unsupported scene format"),
        (save("nokeys.npz", images=imgs), r"nokeys.npz: missing key\(s\) poses, focal"),
        (save("shape.npz", images=imgs[..., 0], poses=poses, focal=1.0), r"shape.npz: 'images' has shape \(4, 100, 100\)"),
        (save("poses.npz", images_rgba=imgs, poses=poses[:, :2], focal=1.0), r"poses.npz: poses have shape \(4, 2, 4\)"),
        (save("count.npz", images_rgba=imgs, poses=raw["poses"][:5], focal=1.0), "count.npz: 4 images but 5 poses"),
        (save("nan.npz", images_rgba=imgs, poses=np.where(np.eye(4) > 0, np.nan, poses), focal=1.0), "nan.npz: poses contain NaN"),
        (save("focal.npz", images_rgba=imgs, poses=poses, focal=0.0), "focal.npz: focal length 0.0 must be positive"),
        (save("far.npz", images_rgba=imgs, poses=poses, focal=1.0, near=6.0, far=2.0), "far.npz: near 6.0 and far 2.0"),
        (save("neg.npz", images_rgba=imgs, poses=poses, focal=1.0, near=-1.0), "neg.npz: near -1.0"),
        (save("float.npz", images=imgs[..., :3] * 2.0, poses=poses, focal=1.0), r"float.npz: floating-point 'images' must lie in \[0, 1\]"),
        (save("one.npz", images=imgs[:1], poses=poses[:1], focal=1.0), "one.npz: 1 view.* leave no training views"),
    ]
    (tmp_path / "scene.txt").write_text("x")
    for path, message in cases:
        with pytest.raises(MclnfError, match=message) as e:
            load_posed_images(path)
        assert "\n" not in str(e.value)
    (tmp_path / "notzip.npz").write_bytes(b"this is not a zip file")
    (tmp_path / "cut.npz").write_bytes(LEGO.read_bytes()[:300_000])
    flipped = bytearray(LEGO.read_bytes())
    flipped[1000:1200] = bytes(b ^ 0xFF for b in flipped[1000:1200])  # inside the compressed images
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    for name in ("notzip.npz", "cut.npz", "flipped.npz"):
        with pytest.raises(MclnfError, match=f"{name}: not a valid .npz file") as e:
            load_posed_images(tmp_path / name)
        assert "\n" not in str(e.value)
    with pytest.raises(MclnfError, match="lego_100.npz: holdout 1 must be at least 2"):
        load_posed_images(LEGO, holdout=1)
    with pytest.raises(MclnfError, match="lego_100.npz: resize -3"):
        load_posed_images(LEGO, resize=-3)
    with pytest.raises(MclnfError, match="empty: not a scene folder"):
        (tmp_path / "empty").mkdir()
        load_posed_images(tmp_path / "empty")


def test_blender_errors(tmp_path, raw):
    root = write_blender(tmp_path / "b", raw)
    (root / "train" / "r_2.png").unlink()
    with pytest.raises(MclnfError, match=r"b: image file .*r_2.png is missing"):
        load_posed_images(root)
    (root / "train" / "r_2.png").write_bytes(b"not a png")
    with pytest.raises(MclnfError, match=r"r_2.png: cannot read image"):
        load_posed_images(root)
    iio.imwrite(root / "train" / "r_2.png", raw["images_rgba"][2][:50])
    with pytest.raises(MclnfError, match=r"b: images of different sizes: r_0.png is \(100, 100, 4\), r_2.png is \(50, 100, 4\)"):
        load_posed_images(root)
    (root / "transforms_train.json").write_text('{"frames": [')
    with pytest.raises(MclnfError, match="transforms_train.json: malformed JSON"):
        load_posed_images(root)
    (root / "transforms_train.json").write_text('{"frames": []}')
    with pytest.raises(MclnfError, match="transforms_train.json: no frames"):
        load_posed_images(root)
    (root / "transforms_train.json").write_text('{"frames": [{"file_path": "./train/r_0", "transform_matrix": [[1, 0], [0, 1]]}], "camera_angle_x": 0.7}')
    with pytest.raises(MclnfError, match=r"transforms_train.json: frame 0: transform_matrix has shape \(2, 2\)"):
        load_posed_images(root)
    (root / "transforms_train.json").write_text('{"frames": [{"file_path": "./train/r_0", "transform_matrix": []}]}')
    with pytest.raises(MclnfError, match="transforms_train.json: missing key camera_angle_x"):
        load_posed_images(root)
    (root / "transforms_test.json").unlink()
    with pytest.raises(MclnfError, match="b: no held-out views"):
        load_posed_images(root)


def test_llff_errors(tmp_path, raw):
    root = write_llff(tmp_path / "f", raw)
    (root / "images" / "IMG_0005.png").unlink()
    with pytest.raises(MclnfError, match="images: 5 image.* but poses_bounds.npy has 6 views"):
        load_posed_images(root)
    rows = np.load(root / "poses_bounds.npy")
    np.save(root / "poses_bounds.npy", rows[:, :15])
    with pytest.raises(MclnfError, match=r"poses_bounds.npy: shape \(6, 15\); expected \(N, 17\)"):
        load_posed_images(root)
    bad = rows.copy()
    bad[0, 0] = np.inf
    np.save(root / "poses_bounds.npy", bad)
    with pytest.raises(MclnfError, match="poses_bounds.npy: contains NaN, infinite"):
        load_posed_images(root)
    (root / "poses_bounds.npy").write_bytes(b"garbage")
    with pytest.raises(MclnfError, match="poses_bounds.npy: not a valid poses_bounds.npy: not a NumPy .npy file"):
        load_posed_images(root)
    bad = rows[:5].copy()
    bad[:, 15:] = (-1.0, 3.0)
    np.save(root / "poses_bounds.npy", bad)
    with pytest.raises(MclnfError, match=r"poses_bounds.npy: depth bounds must satisfy 0 < near < far for every view, found near -1"):
        load_posed_images(root)
    for f in (root / "images").iterdir():
        f.unlink()
    (root / "images").rmdir()
    with pytest.raises(MclnfError, match="f: no images/ or images_N/ folder beside poses_bounds.npy"):
        load_posed_images(root)
