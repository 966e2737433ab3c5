"""Signal files and options as a hostile user meets them: every input either fits or is refused in one line
(exit 2, nothing written to --out) — tiny images and strips, truncated audio, damaged LLFF poses and
NeRF-synthetic file paths that lead out of the scene folder."""

import json
import os

import imageio.v3 as iio
import numpy as np
from conftest import DATA, cli, one_line

SMALL = ("--width", 16, "--depth", 3, "--quiet")


def refused(out) -> bool:
    """Nothing was written: the out folder does not exist or is empty."""
    return not out.exists() or not any(out.iterdir())


def final(out) -> dict:
    return json.loads((out / "metrics.json").read_text())["final"]


def test_images_and_videos_of_any_size_have_metrics_ssim_null_under_six_pixels(tmp_path, capsys):
    """SSIM is undefined (null) when a side is under 6 pixels; such runs finish, larger ones keep a number."""
    pixel = tmp_path / "pixel.png"
    iio.imwrite(pixel, np.full((1, 1, 3), 128, np.uint8))
    for name, argv in {
        "camera5": ("fit", "camera", "--resize", 5, "--steps", 2),
        "pixel": ("fit", pixel, "--resize", 0, "--steps", 2),
        "video": ("fit", DATA / "video" / "bikes.mp4", "--resize", 8, "--frames", 2, "--steps", 2),
    }.items():
        assert cli(*argv, *SMALL, "--out", tmp_path / name) == 0, name
        assert final(tmp_path / name)["ssim"] is None, name
    assert cli("fit", "camera", "--resize", 6, "--steps", 2, *SMALL, "--out", tmp_path / "camera6") == 0
    assert isinstance(final(tmp_path / "camera6")["ssim"], float)  # 6 px: torchmetrics' own value, as before
    out = tmp_path / "strips"  # 32 strips 2 px wide: each task's SSIM is null, the whole image's a number
    assert cli("continual", "camera", "--resize", 64, "--tasks", 32, "--steps", 1, *SMALL, "--out", out) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert all(task["ssim"] is None for row in record["rows"] for task in row["tasks"])
    assert isinstance(record["final"]["ssim"], float)
    capsys.readouterr()
    out = tmp_path / "zero"  # a side of 0 pixels is an option error
    assert cli("fit", "camera", "--crop", 0, 5, *SMALL, "--out", out) == 2
    assert "--crop 0 5" in one_line(capsys.readouterr().err) and refused(out)


def test_truncated_wav_is_refused_with_declared_and_readable_frames(tmp_path, capsys):
    wav = tmp_path / "t.wav"
    wav.write_bytes((DATA / "audio" / "gt_counting.wav").read_bytes()[:5000])
    out = tmp_path / "o"
    assert cli("fit", wav, "--steps", 2, *SMALL, "--out", out) == 2
    line = one_line(capsys.readouterr().err)
    assert str(wav) in line and "truncated" in line and "537,936" in line and "1,235" in line, line
    assert refused(out)


def test_random_bytes_poses_bounds_is_refused_without_numpy_hint(tmp_path, capsys):
    scene = tmp_path / "llff"
    (scene / "images").mkdir(parents=True)
    iio.imwrite(scene / "images" / "a.png", np.zeros((8, 8, 3), np.uint8))
    (scene / "poses_bounds.npy").write_bytes(np.random.default_rng(0).bytes(2000))
    out = tmp_path / "o"
    assert cli("fit", scene, "--steps", 2, *SMALL, "--out", out) == 2
    line = one_line(capsys.readouterr().err)
    assert str(scene / "poses_bounds.npy") in line and "not a valid poses_bounds.npy" in line and "N × 17" in line, line
    assert "pickle" not in line
    assert refused(out)


def test_transforms_file_path_leading_outside_the_scene_is_refused(tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    iio.imwrite(outside / "secret.png", np.zeros((8, 8, 4), np.uint8))
    scene = tmp_path / "scene"
    (scene / "test").mkdir(parents=True)
    iio.imwrite(scene / "test" / "r_0.png", np.zeros((8, 8, 4), np.uint8))
    os.symlink(outside / "secret.png", scene / "test" / "link.png")  # inside by name, outside once resolved
    eye = np.eye(4).tolist()
    meta = lambda *paths: json.dumps({"camera_angle_x": 0.7, "frames": [{"file_path": f, "transform_matrix": eye} for f in paths]})  # noqa: E731
    (scene / "transforms_test.json").write_text(meta("./test/r_0"))
    for bad in ("../outside/secret", "./test/link", str(outside / "secret")):
        (scene / "transforms_train.json").write_text(meta("./test/r_0", bad))
        out = tmp_path / "o"
        assert cli("fit", scene, "--steps", 2, "--samples", 4, *SMALL, "--out", out) == 2, bad
        line = one_line(capsys.readouterr().err)
        assert str(scene / "transforms_train.json") in line and repr(bad) in line and "outside the scene folder" in line, line
        assert refused(out)
