"""LLFF scenes read as NeRF's ``load_llff_data`` reads them: images_N/ with the focal length scaled, poses
rescaled and recentred, and rendered in normalized device coordinates (NeRF's ``ndc_rays``)."""

import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import DATA, cli, one_line

from mclnf.config import FitConfig, loader_options
from mclnf.errors import MclnfError
from mclnf.signals.radiance import load_radiance
from mclnf.signals.rays import ndc_rays
from mclnf.signals.scenes import load_posed_images

FERN = DATA / "nerf" / "fern_llff"
LEGO = DATA / "nerf" / "lego_100.npz"
GREY_PSNR = 12.20  # a constant 0.5 rendering of fern's held-out views at --resize 64 (mean training colour: 12.32)


def test_fern_reads_images_8_with_scaled_intrinsics_and_recentred_poses():
    arr = np.load(FERN / "poses_bounds.npy")
    full_h, full_w, full_f = arr[0, 4], arr[0, 9], arr[0, 14]
    s = load_posed_images(FERN)
    assert s.images.shape == (20, 378, 504, 3) and (full_h, full_w) == (3024, 4032)
    assert s.focal == pytest.approx(full_f / 8, rel=1e-12)
    assert s.forward_facing and s.test == [0, 8, 16]
    assert s.near == pytest.approx(0.9 / 0.75) and s.far == pytest.approx(arr[:, 16].max() / (arr[:, 15:].min() * 0.75))
    # the average pose (mean centre, summed back and up axes, as NeRF's poses_avg) is the identity
    p = s.poses.double()
    back = torch.nn.functional.normalize(p[:, :3, 2].sum(0), dim=0)
    right = torch.nn.functional.normalize(torch.linalg.cross(p[:, :3, 1].sum(0), back), dim=0)
    avg = torch.stack([right, torch.linalg.cross(back, right), back, p[:, :3, 3].mean(0)], 1)
    torch.testing.assert_close(avg, torch.eye(4, dtype=torch.float64)[:3], rtol=0, atol=1e-6)
    # rotations stay rotations; relative geometry is LLFF's up to the bd_factor scale
    torch.testing.assert_close(p[:, :3, :3].transpose(1, 2) @ p[:, :3, :3], torch.eye(3, dtype=torch.float64).expand(20, 3, 3), rtol=0, atol=1e-5)
    raw_t = arr[:, :15].reshape(-1, 3, 5)[:, :, 3]
    scale = 1 / (arr[:, 15:].min() * 0.75)
    assert float((p[1, :3, 3] - p[0, :3, 3]).norm()) == pytest.approx(np.linalg.norm(raw_t[1] - raw_t[0]) * scale, rel=1e-5)


def test_missing_factor_folder_is_one_line(capsys, tmp_path):
    assert cli("fit", FERN, "--factor", "4", "--steps", "1", "--quiet", "--out", tmp_path / "run") == 2
    line = one_line(capsys.readouterr().err)
    assert "images_4/" in line and "images_8/" in line, line
    assert not (tmp_path / "run").exists()


def write_scene(root, size, folder="images_2", views=3, hwf=(80.0, 60.0, 70.0)):
    """A tiny LLFF folder: cameras along x looking down −z, full-resolution H×W×f ``hwf``, images of ``size``."""
    (root / folder).mkdir(parents=True)
    rows = []
    for i in range(views):
        c2w = np.array([[1.0, 0, 0, 0.1 * i], [0, 1, 0, 0], [0, 0, 1, 0]])
        llff = np.concatenate([-c2w[:, 1:2], c2w[:, 0:1], c2w[:, 2:4], np.array(hwf)[:, None]], 1)
        rows.append(np.concatenate([llff.reshape(15), [2.0, 8.0]]))
        iio.imwrite(root / folder / f"{i:03d}.png", np.full((*size, 3), 40 * i, np.uint8))
    np.save(root / "poses_bounds.npy", np.array(rows))
    return root


def test_image_folder_must_match_its_factor(tmp_path):
    s = load_posed_images(write_scene(tmp_path / "ok", (40, 30)), holdout=2)
    assert s.images.shape == (3, 40, 30, 3) and s.focal == pytest.approx(35.0)
    assert s.near == pytest.approx(0.9 / 0.75) and s.far == pytest.approx(8 / (2 * 0.75))
    with pytest.raises(MclnfError, match=r"images_2: images are 44×30 pixels but poses_bounds.npy's 80×60 divided by 2 is 40×30") as e:
        load_posed_images(write_scene(tmp_path / "bad", (44, 30)), holdout=2)
    assert "\n" not in str(e.value)
    with pytest.raises(MclnfError, match=r"images: images are 40×30 pixels but .* divided by 1 is 80×60"):
        load_posed_images(write_scene(tmp_path / "full", (40, 30), folder="images"), holdout=2)
    # images/ wins over images_N/ without --factor; --factor picks the folder
    both = write_scene(tmp_path / "both", (80, 60), folder="images")
    (both / "images_2").mkdir()
    for f in sorted((both / "images").iterdir()):
        iio.imwrite(both / "images_2" / f.name, iio.imread(f)[::2, ::2])
    assert load_posed_images(both, holdout=2).height == 80
    assert load_posed_images(both, holdout=2, factor=2).focal == pytest.approx(35.0)
    with pytest.raises(MclnfError, match=r"--factor 0: must be a positive integer"):
        load_posed_images(both, factor=0)


def test_ndc_rays_match_the_closed_form():
    H, W, f, near = 40, 60, 50.0, 1.0
    o, d = torch.tensor([[0.3, -0.2, 0.5]], dtype=torch.float64), torch.tensor([[0.1, 0.2, -1.0]], dtype=torch.float64)
    on, dn = ndc_rays(H, W, f, near, o, d)
    assert on.dtype == dn.dtype == torch.float64
    # by hand: the origin moves to z = -1 at t = 1.5: (0.45, 0.1, -1); then NeRF's projection
    ax, ay = -2 * f / W, -2 * f / H
    expected_o = [ax * 0.45 / -1, ay * 0.1 / -1, 1 + 2 * near / -1]
    expected_d = [ax * (0.1 / -1 - 0.45 / -1), ay * (0.2 / -1 - 0.1 / -1), -2 * near / -1]
    torch.testing.assert_close(on[0], torch.tensor(expected_o, dtype=torch.float64), rtol=0, atol=1e-15)
    torch.testing.assert_close(dn[0], torch.tensor(expected_d, dtype=torch.float64), rtol=0, atol=1e-15)
    # t = 1/2 is the projection of the ray's world point at z = -near / (1 - 1/2) = -2: (0.55, 0.3, -2)
    torch.testing.assert_close(on[0] + 0.5 * dn[0], torch.tensor([ax * 0.55 / -2, ay * 0.3 / -2, 0.0], dtype=torch.float64), rtol=0, atol=1e-15)


def test_fern_renders_in_ndc_by_default_and_no_ndc_turns_it_off():
    sig = load_radiance(FERN, resize=32, samples=4)
    assert sig.layout.ndc and (sig.layout.near, sig.layout.far) == (0.0, 1.0) and (sig.layout.height, sig.layout.width) == (24, 32)
    off = load_radiance(FERN, resize=32, samples=4, ndc=False)
    assert not off.layout.ndc and off.layout.near == pytest.approx(1.2)
    assert loader_options(FitConfig(signal=str(FERN), ndc=False), "radiance")["ndc"] is False  # --no-ndc reaches the loader
    # NDC samples of the cameras' rays lie in about [-1, 1]³, the average camera's exactly
    field = lambda x: torch.zeros(len(x), 4)  # noqa: E731
    rendered = sig.layout.render(field, sig.coords[:100], jitter=False)
    assert torch.isfinite(rendered["rgb"]).all() and ((rendered["depth"] >= 0) & (rendered["depth"] <= 1)).all()


def test_fern_fit_through_the_cli(tmp_path, capsys):
    out = tmp_path / "fern"
    assert cli("fit", FERN, "--steps", 30, "--resize", 64, "--samples", 16, "--quiet", "--out", out) == 0
    psnr = json.loads((out / "metrics.json").read_text())["final"]["psnr"]
    assert math.isfinite(psnr) and psnr > GREY_PSNR + 0.5, psnr  # 14.19 when measured
    assert (out / "turntable.mp4").is_file() and (out / "views_vs_truth.png").is_file()


@pytest.mark.parametrize("flag", [("--ndc",), ("--factor", "2")])
def test_llff_options_are_refused_for_other_scenes(tmp_path, capsys, flag):
    assert cli("fit", LEGO, *flag, "--steps", "1", "--quiet", "--out", tmp_path / "run") == 2
    line = one_line(capsys.readouterr().err)
    assert f"error: {flag[0]}" in line and "LLFF" in line and "lego_100.npz" in line, line
