import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import DATA

from mclnf.errors import MclnfError
from mclnf.signals import load_signal
from mclnf.signals.base import Layout
from mclnf.signals.video import VideoLayout, load_video

BIKES = DATA / "video" / "bikes.mp4"


@pytest.fixture(scope="module")
def bikes16():
    return load_video(BIKES, frames=16, resize=64)


def first_frames(n, start=0):
    out = []
    for i, f in enumerate(iio.imiter(BIKES, plugin="pyav")):
        if i >= start:
            out.append(f)
        if len(out) == n:
            return np.stack(out)


def test_shape_and_values(bikes16):
    s = bikes16
    assert s.layout == VideoLayout(frames=16, height=27, width=64, channels=3, fps=25.0)  # 640×272 → 64×27
    assert s.coords.shape == (16 * 27 * 64, 3) and s.values.shape == (16 * 27 * 64, 3)
    raw = torch.from_numpy(first_frames(16).astype(np.float32) / 255).permute(0, 3, 1, 2)
    expected = F.interpolate(raw, size=(27, 64), mode="bilinear", align_corners=False, antialias=False).permute(0, 2, 3, 1)
    assert torch.equal(s.layout.to_array(s.values), expected)
    assert 0 <= s.values.min() and s.values.max() <= 1


def test_start_frame_and_full_size():
    s = load_signal(BIKES, frames=2, start_frame=100)
    assert s.layout.grid_shape == (2, 272, 640)
    np.testing.assert_array_equal((s.layout.to_array(s.values) * 255).round().byte().numpy(), first_frames(2, start=100))


def test_coordinates_are_x_y_t(bikes16):
    c = bikes16.layout.coords().reshape(16, 27, 64, 3)
    assert torch.equal(c[0, 0, 1, 1:], c[0, 0, 0, 1:]) and c[0, 0, 1, 0] > c[0, 0, 0, 0]  # along width: only x
    assert torch.equal(c[0, 1, 0, [0, 2]], c[0, 0, 0, [0, 2]]) and c[0, 1, 0, 1] > c[0, 0, 0, 1]  # along height: only y
    assert torch.equal(c[1, 0, 0, :2], c[0, 0, 0, :2]) and c[1, 0, 0, 2] > c[0, 0, 0, 2]  # along time: only t
    assert torch.equal(c[0, 0, 0], torch.tensor([-1.0, -1.0, -1.0])) and torch.equal(c[-1, -1, -1], torch.ones(3))


def test_layout_serializes(bikes16):
    assert Layout.from_dict(bikes16.layout.to_dict()) == bikes16.layout
    assert bikes16.layout.in_dim == 3 and bikes16.layout.out_dim == 3


def test_metrics(bikes16):
    s = bikes16
    m = s.layout.metrics(s.values, s.values)
    assert m["psnr"] > 100 and m["ssim"] == pytest.approx(1.0)
    pred = s.values + 0.05 * torch.randn(s.values.shape, generator=torch.Generator().manual_seed(0))
    mse = ((pred.clamp(0, 1) - s.values) ** 2).mean().item()
    m = s.layout.metrics(pred, s.values)
    assert m["psnr"] == pytest.approx(10 * math.log10(1 / mse), abs=1e-3)
    assert 0 < m["ssim"] < 0.95


def test_save_round_trip_odd_size(bikes16, tmp_path):
    s = bikes16  # height 27 is odd: saved with one replicated row
    s.layout.save(s.layout.to_array(s.values), tmp_path / "out.mp4")
    again = iio.imread(tmp_path / "out.mp4", plugin="pyav")
    assert again.shape == (16, 28, 64, 3)
    assert iio.immeta(tmp_path / "out.mp4", plugin="pyav")["fps"] == 25.0
    back = load_video(tmp_path / "out.mp4")
    assert back.layout.frames == 16
    cropped = torch.from_numpy(again[:, :27].astype(np.float32) / 255)
    assert s.layout.metrics(cropped.reshape(-1, 3), s.values)["psnr"] > 30


def test_save_even_size_and_gray(tmp_path):
    layout = VideoLayout(frames=3, height=8, width=9, channels=1, fps=12.0)
    frames = torch.linspace(0, 1, 3 * 8 * 9).reshape(3, 8, 9, 1)
    layout.save(frames, tmp_path / "g.mp4")
    s = load_video(tmp_path / "g.mp4")
    assert s.layout.grid_shape == (3, 8, 10) and s.layout.fps == 12.0


def test_missing_file(tmp_path):
    with pytest.raises(MclnfError, match=r"nope\.mp4: no such file"):
        load_video(tmp_path / "nope.mp4")


def test_wrong_suffix(tmp_path):
    (tmp_path / "a.rmvb").write_bytes(b"\x2e\x52\x4d\x46")
    with pytest.raises(MclnfError, match=r"a\.rmvb: unsupported format \.rmvb"):
        load_video(tmp_path / "a.rmvb")


def test_matroska_centre_crop_then_resize():
    """A real Matroska capture (asl_gestures, 640 × 480): the centred 480 × 480 window of every frame, then 112 × 112."""
    path = DATA / "video" / "asl_gestures" / "again.mkv"
    raw = np.stack([f for _, f in zip(range(3), iio.imiter(path, plugin="pyav"))])
    assert raw.shape == (3, 480, 640, 3)
    s = load_signal(path, frames=3, crop=(480, 480), resize=112)
    assert s.layout.grid_shape == (3, 112, 112) and s.layout.fps == 30.0
    window = torch.from_numpy(raw[:, :, 80:560].astype(np.float32) / 255).permute(0, 3, 1, 2)
    expected = F.interpolate(window, size=(112, 112), mode="bilinear", align_corners=False, antialias=False).permute(0, 2, 3, 1)
    assert torch.equal(s.layout.to_array(s.values), expected)
    with pytest.raises(MclnfError, match=r"--crop 500 500: larger than the video \(480×640\)"):
        load_video(path, frames=1, crop=(500, 500))


def test_corrupt_file(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(MclnfError, match=r"bad\.mp4: cannot read video"):
        load_video(tmp_path / "bad.mp4")


def test_bad_frame_options(tmp_path):
    with pytest.raises(MclnfError, match="--frames 0: must be at least 1"):
        load_video(BIKES, frames=0)
    with pytest.raises(MclnfError, match="--start-frame -1: must not be negative"):
        load_video(BIKES, start_frame=-1)
    with pytest.raises(MclnfError, match="--resize 0: must be a positive"):
        load_video(BIKES, frames=1, resize=0)
    small = tmp_path / "small.mp4"
    VideoLayout(frames=5, height=8, width=8, channels=3).save(torch.rand(5, 8, 8, 3), small)
    with pytest.raises(MclnfError, match=r"--start-frame 7: beyond the end of .*small\.mp4 \(5 frames\)"):
        load_video(small, start_frame=7)
    with pytest.raises(MclnfError, match=r"--frames 10: .*small\.mp4 has only 5 frames"):
        load_video(small, frames=10)
    with pytest.raises(MclnfError, match=r"--frames 3: .*small\.mp4 has only 5 frames \(2 from frame 3\)"):
        load_video(small, frames=3, start_frame=3)
    assert load_video(small, start_frame=3).layout.frames == 2
