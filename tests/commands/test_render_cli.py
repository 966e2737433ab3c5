"""``mclnf render`` for every kind of run: fit (super-resolution of images and audio), continual (one learner and
``--learner all``), meta-train (θ₀ and θ₀ adapted to a signal), scenes along camera paths; every bad input is one
line, exit status 2, nothing written."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
import soundfile as sf
from conftest import DATA, cli, one_line

from mclnf.runs import load_field
from mclnf.signals.datasets import load_dataset

SMALL = ("--width", "32", "--depth", "3", "--quiet")
LEGO = DATA / "nerf" / "lego_100.npz"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(-10 * np.log10(((a.astype(float) - b.astype(float)) ** 2).mean() / 255**2))


@pytest.fixture(scope="module")
def camera_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("render") / "camera"
    assert cli("fit", "camera", "--resize", 32, *SMALL, "--steps", 200, "--lr", "1e-3", "--out", out) == 0
    return out


def test_super_resolution_evaluates_the_same_field_on_a_denser_grid(camera_run, tmp_path, capsys):
    assert cli("render", camera_run) == 0
    base = iio.imread(camera_run / "render.png")
    assert cli("render", camera_run, "--resolution", 63, 63, "--out", tmp_path / "r63.png") == 0
    dense = iio.imread(tmp_path / "r63.png")
    assert dense.shape == (63, 63)
    # linspace(-1, 1, 63) holds linspace(-1, 1, 32) at every other point: the same coordinates as in training
    assert np.abs(dense[::2, ::2].astype(int) - base.astype(int)).max() <= 1
    between = dense[1::2, 1::2].astype(int)  # new samples, not copies of their neighbours
    assert (between != dense[:-1:2, :-1:2][: between.shape[0], : between.shape[1]]).mean() > 0.5
    assert cli("render", camera_run, "--scale", 2, "--out", tmp_path / "x2.png") == 0
    x2 = iio.imread(tmp_path / "x2.png")
    assert x2.shape == (64, 64) and all(x2[i, j] == base[i * 31 // 63, j * 31 // 63] for i, j in ((0, 0), (63, 63), (0, 63)))  # the corners: ±1 on both grids
    assert capsys.readouterr().out.splitlines() == [str(camera_run / "render.png"), str(tmp_path / "r63.png"), str(tmp_path / "x2.png")]


def test_audio_super_resolution_raises_the_sample_rate(tmp_path):
    out = tmp_path / "speech"
    assert cli("fit", DATA / "audio" / "gt_counting.wav", "--duration", 0.05, *SMALL, "--steps", 4, "--out", out) == 0
    assert cli("render", out, "--scale", 2) == 0
    base, rate = sf.read(out / "reconstruction.wav")
    dense, dense_rate = sf.read(out / "render.wav")
    assert dense_rate == 2 * rate and len(dense) == 2 * len(base)
    assert abs(dense[0] - base[0]) < 1e-3 and abs(dense[-1] - base[-1]) < 1e-3  # t = ±1 on both grids


def test_continual_runs_render_their_final_field(tmp_path, capsys):
    every = tmp_path / "all"
    assert cli("continual", "camera", "--resize", 24, *SMALL, "--steps", 5, "--learner", "all", "--out", every) == 0
    capsys.readouterr()
    assert cli("render", every) == 0
    learners = ("ol", "cl", "er", "ewc", "mer", "modular")
    assert capsys.readouterr().out.splitlines() == [str(every / n / "render.png") for n in learners]
    for n in learners:  # the learner after the last task, rebuilt: exactly the run's own last reconstruction
        assert np.array_equal(iio.imread(every / n / "render.png"), iio.imread(every / n / "after_task4.png")), n
    assert cli("render", every, "--learner", "modular", "--scale", 2, "--out", tmp_path / "modular.png") == 0
    assert iio.imread(tmp_path / "modular.png").shape == (48, 48)
    assert cli("render", every / "er", "--out", tmp_path / "er.png") == 0  # a learner's folder on its own
    assert np.array_equal(iio.imread(tmp_path / "er.png"), iio.imread(every / "er" / "after_task4.png"))
    one = tmp_path / "modular-run"
    assert cli("continual", "camera", "--resize", 24, *SMALL, "--steps", 5, "--learner", "modular", "--split", "resolution", "--out", one) == 0
    assert cli("render", one) == 0
    assert np.array_equal(iio.imread(one / "render.png"), iio.imread(one / "after_task4.png"))
    capsys.readouterr()
    assert cli("render", every, "--out", tmp_path / "x.png") == 2
    assert "holds 6 learners' fields; choose one with --learner" in one_line(capsys.readouterr().err)
    assert cli("render", one, "--learner", "er") == 2
    assert "--learner: only for continual --learner all runs" in one_line(capsys.readouterr().err)


def test_meta_train_runs_render_theta0_and_theta0_adapted_to_a_signal(tmp_path, capsys):
    run = tmp_path / "meta"
    assert cli("meta-train", "lfw_subset", "--method", "mcl-nf", "--width", 16, "--depth", 3, "--inner-steps", 1, "--meta-batch", 2, "--outer-steps", 3,
               "--resize", 12, "--quiet", "--out", run) == 0  # fmt: skip
    face = load_dataset("lfw_subset", {"resize": 12}, 0.3, 0).test[0]
    pixels = (face.layout.to_array(face.values)[..., 0].numpy() * 255).round().astype(np.uint8)
    iio.imwrite(tmp_path / "face.png", pixels)
    capsys.readouterr()
    assert cli("render", run) == 0
    assert cli("render", run, tmp_path / "face.png", "--adapt-steps", 32) == 0
    assert capsys.readouterr().out.splitlines() == [str(run / "render.png"), str(run / "render_adapted32.png")]
    theta0, adapted = iio.imread(run / "render.png"), iio.imread(run / "render_adapted32.png")
    assert theta0.shape == adapted.shape == (12, 12)
    assert psnr(adapted, pixels) > psnr(theta0, pixels) + 5
    # the same adaptation meta-test scores (inner-loop SGD, 32 steps per task): the same quality, up to 8-bit rounding
    assert cli("meta-test", run, "lfw_subset", "--steps", 32, "--signals", 1, "--baselines", "--quiet", "--out", tmp_path / "test") == 0
    scored = json.loads((tmp_path / "test" / "metrics.json").read_text())["methods"][0]["per_signal"]["32"][0]["psnr"]
    assert psnr(adapted, pixels) == pytest.approx(scored, abs=0.5)
    assert cli("render", run, tmp_path / "face.png", "--adapt-steps", 32, "--scale", 2, "--out", tmp_path / "x2.png") == 0
    assert iio.imread(tmp_path / "x2.png").shape == (24, 24)
    capsys.readouterr()
    iio.imwrite(tmp_path / "wide.png", np.zeros((12, 20), np.uint8))
    assert cli("render", run, tmp_path / "wide.png", "--adapt-steps", 4) == 2
    assert "wide.png: its signal" in one_line(capsys.readouterr().err)
    assert not (run / "render_adapted4.png").exists()


@pytest.fixture(scope="module")
def lego_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("render") / "lego"
    assert cli("fit", LEGO, "--resize", 16, "--samples", 8, *SMALL, "--steps", 10, "--out", out) == 0
    return out


def test_scenes_render_along_camera_paths(lego_run, tmp_path, capsys):
    assert cli("render", lego_run, "--camera-path", "orbit", "--frames", 6) == 0
    orbit = iio.imread(lego_run / "render_orbit.mp4", plugin="pyav")
    assert orbit.shape == (6, 16, 16, 3)
    assert len({frame.tobytes() for frame in orbit}) == 6  # every frame from another camera
    _, layout = load_field(lego_run)
    poses = layout.poses[:3]
    (tmp_path / "poses.json").write_text(json.dumps(poses.tolist()))
    (tmp_path / "nerfstudio.json").write_text(json.dumps({"camera_path": [{"camera_to_world": p.reshape(-1).tolist(), "fov": 50} for p in poses]}))
    assert cli("render", lego_run, "--camera-path", tmp_path / "poses.json", "--out", tmp_path / "frames") == 0
    assert cli("render", lego_run, "--camera-path", tmp_path / "nerfstudio.json", "--out", tmp_path / "ns") == 0
    held_out = iio.imread(lego_run / "reconstruction.png")  # the held-out views rendered by fit, 8 a row
    for k in range(3):
        frame = iio.imread(tmp_path / "frames" / f"frame_{k:04d}.png")
        assert np.array_equal(frame, held_out[:16, 16 * k : 16 * (k + 1)])
        assert np.array_equal(frame, iio.imread(tmp_path / "ns" / f"frame_{k:04d}.png"))
    assert cli("render", lego_run, "--camera-path", tmp_path / "poses.json") == 0
    assert iio.imread(lego_run / "render_poses.mp4", plugin="pyav").shape == (3, 16, 16, 3)
    assert cli("render", lego_run, "--scale", 2, "--out", tmp_path / "x2.png") == 0
    assert iio.imread(tmp_path / "x2.png").shape == (2 * 32, 8 * 32, 3)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ("[[1, 2", "not JSON (Expecting"),
        ("[]", "no cameras in the file"),
        ('{"cameras": []}', "expected a list of 4×4 camera-to-world matrices or nerfstudio's"),
        ("[[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]]", "camera 0 is 3×4, not a 4×4 camera-to-world matrix"),
        ('{"camera_path": [{"camera_to_world": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0]}]}', "camera 0 has 12 numbers, not the 16 of a 4×4"),
        ('[[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], [[1, 0, 0, "x"], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]]', "camera 1 has entries that are not finite numbers"),
    ],
)
def test_bad_camera_paths(lego_run, tmp_path, capsys, content, message):
    path = tmp_path / "path.json"
    if content is not None:
        path.write_text(content)
    assert cli("render", lego_run, "--camera-path", path, "--out", tmp_path / "v.mp4") == 2
    assert one_line(capsys.readouterr().err).startswith(f"mclnf render: error: --camera-path {path}: {message}")
    assert not (tmp_path / "v.mp4").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (("--resolution", 40), "--resolution 40: image fields take two numbers H W"),
        (("--resolution", 40, 50, "--scale", 2), "--resolution and --scale: give one of them"),
        (("--resolution", 0, 8), "--resolution 0 8: sizes must be positive integers"),
        (("--scale", "nan"), "--scale nan: must be a positive finite number"),
        (("--camera-path", "orbit"), "--camera-path: only scenes (radiance fields) render along camera paths, not image fields"),
        (("--frames", 4), "--frames: only with --camera-path orbit"),
        (("--adapt-steps", 4), "--adapt-steps and SIGNAL: give both"),
        (("camera", "--adapt-steps", 4), "--adapt-steps: only meta-train runs adapt θ₀"),
        (("--learner", "er"), "--learner: only for continual --learner all runs"),
        (("--out", "render.wav"), "--out render.wav: image fields render to .png, not .wav"),
        (("--device", "cuda:7"), "--device cuda:7:"),
    ],
)
def test_bad_options(camera_run, capsys, args, message):
    capsys.readouterr()
    assert cli("render", camera_run, *args) == 2
    assert message in one_line(capsys.readouterr().err)


def test_not_a_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for path, message in ((tmp_path / "nowhere", "no such run folder or file"), (tmp_path / "empty", "no field to render")):
        assert cli("render", path) == 2
        assert message in one_line(capsys.readouterr().err)
    assert list((tmp_path / "empty").iterdir()) == []
