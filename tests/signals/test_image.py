"""Images: exact round trips, coordinates, options, metrics and errors."""

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import DATA

from mclnf.errors import MclnfError
from mclnf.signals import load_signal
from mclnf.signals.image import image_metrics, load_image


def test_png_round_trips_exactly(tmp_path):
    original = iio.imread(DATA / "div2k" / "03.png")
    s = load_image(DATA / "div2k" / "03.png", resize=0)
    assert s.values.shape == (512 * 512, 3) and s.coords.shape == (512 * 512, 2)
    assert np.array_equal(s.layout.quantize(s.layout.to_array(s.values)), original)
    s.layout.save(s.layout.to_array(s.values), tmp_path / "back.png")
    assert np.array_equal(iio.imread(tmp_path / "back.png"), original)


def test_jpeg_and_16_bit_round_trip(tmp_path):
    jpg = iio.imread(DATA / "celeba_align" / "000001.jpg")
    s = load_image(DATA / "celeba_align" / "000001.jpg", resize=0)
    assert (s.layout.height, s.layout.width) == (218, 178)
    assert np.array_equal(s.layout.quantize(s.layout.to_array(s.values)), jpg)
    deep = (np.arange(40 * 30, dtype=np.uint16).reshape(40, 30) * 53).astype(np.uint16)
    iio.imwrite(tmp_path / "deep.png", deep)
    s = load_image(tmp_path / "deep.png", resize=0)
    assert s.layout.bit_depth == 16 and np.array_equal(s.layout.quantize(s.layout.to_array(s.values)), deep)


def test_builtin_gray_image_and_resize():
    s = load_signal("camera", resize=256)
    assert (s.layout.height, s.layout.width, s.layout.channels) == (256, 256, 1)
    assert s.values.min() >= 0 and s.values.max() <= 1
    s = load_image("astronaut", resize=100, crop=(400, 200), gray=True)
    assert (s.layout.height, s.layout.width, s.layout.channels) == (100, 50, 1)


def test_coordinates_are_x_y_in_minus_one_one():
    s = load_image("camera", resize=64)
    assert s.coords.min() == -1 and s.coords.max() == 1
    assert torch.equal(s.coords[0], torch.tensor([-1.0, -1.0]))
    assert s.coords[1, 1] == -1 and s.coords[1, 0] > -1  # the next sample is one pixel to the right
    assert s.coords[64, 0] == -1 and s.coords[64, 1] > -1  # the next row


def test_alpha_is_composited_onto_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent
    iio.imwrite(tmp_path / "a.png", rgba)
    a = load_image(tmp_path / "a.png").layout
    img = load_image(tmp_path / "a.png")
    pixels = a.to_array(img.values)
    assert torch.equal(pixels[0, 0], torch.tensor([1.0, 0.0, 0.0])) and torch.equal(pixels[3, 0], torch.ones(3))


def test_metrics_against_known_noise():
    s = load_image("camera", resize=128)
    target = s.layout.to_array(s.values).permute(2, 0, 1)[None]
    noisy = (target + 0.05 * torch.randn(target.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    m = image_metrics(noisy, target)
    mse = (noisy - target).square().mean().item()
    assert m["psnr"] == pytest.approx(10 * np.log10(1 / mse), abs=1e-3)
    assert 0 < m["ssim"] < 0.9 and image_metrics(target, target)["ssim"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "make, kwargs, match",
    [
        (lambda p: None, {}, "no such file"),
        (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\nnot really"), {}, "cannot read image"),
        (lambda p: iio.imwrite(p, np.zeros((4, 4, 3), np.uint8)), {"crop": (9, 9)}, "--crop 9 9"),
        (lambda p: iio.imwrite(p, np.zeros((4, 4, 3), np.uint8)), {"resize": -3}, "--resize -3"),
    ],
)
def test_errors_name_the_file_or_option(tmp_path, make, kwargs, match):
    path = tmp_path / "x.png"
    make(path)
    with pytest.raises(MclnfError, match=match):
        load_image(path, **kwargs)


def test_unsupported_and_non_finite_inputs(tmp_path):
    (tmp_path / "x.xyz").write_text("1 2 3")
    with pytest.raises(MclnfError, match=r"x\.xyz: unsupported format \.xyz"):
        load_signal(tmp_path / "x.xyz")
    bad = np.full((4, 4), 0.5, np.float32)
    bad[1, 1] = np.nan
    iio.imwrite(tmp_path / "nan.tif", bad)
    with pytest.raises(MclnfError, match=r"nan\.tif: the image contains NaN"):
        load_image(tmp_path / "nan.tif")
    iio.imwrite(tmp_path / "big.tif", np.full((4, 4), 3.0, np.float32))
    with pytest.raises(MclnfError, match=r"must lie in \[0, 1\]"):
        load_image(tmp_path / "big.tif")
