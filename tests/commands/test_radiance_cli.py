"""``mclnf fit`` / ``continual`` / ``render`` on a real scene (lego): outputs, --resume, user errors."""

import json
import subprocess
import sys

import imageio.v3 as iio
import pytest
from conftest import DATA, cli, one_line

from mclnf.signals.tasks import split_signal

LEGO = DATA / "nerf" / "lego_100.npz"
SMALL = ("--resize", "16", "--samples", "8", "--width", "32", "--depth", "3", "--quiet")


def test_fit_a_scene_end_to_end(tmp_path, capsys):
    out = tmp_path / "lego"
    assert cli("fit", LEGO, *SMALL, "--steps", "40", "--lr", "3e-3", "--out", out) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["kind"] == "radiance" and record["activation"] == "relu-pe" and record["field"]["pe_frequencies"] == 8
    assert record["layout"]["bound"] == pytest.approx(1.3654, abs=1e-3)  # the ball every lego camera sees whole
    first, last = record["curve"][0], record["curve"][-1]
    assert last["psnr"] > first["psnr"] + 1  # held-out views
    assert record["outputs"] == ["views_vs_truth.png", "turntable.mp4"]
    # 13 held-out 16 × 16 views, 8 a band: truth, rendering and depth map per band, labelled (tests/eval/test_plots.py), larger than the views
    views = iio.imread(out / "views_vs_truth.png")
    assert views.shape[0] > 2 * 3 * 16 * 5 and views.shape[1] > 8 * 16 * 5
    assert iio.imread(out / "reconstruction.png").shape == (2 * 16, 8 * 16, 3)
    assert len(iio.imread(out / "turntable.mp4", plugin="pyav")) == 24
    render = subprocess.run([sys.executable, "-m", "mclnf", "render", str(out)], capture_output=True, text=True)  # a fresh process: the layout's kind must register itself
    assert render.returncode == 0, render.stderr
    assert (iio.imread(out / "render.png") == iio.imread(out / "reconstruction.png")).all()


def test_a_resumed_scene_fit_equals_an_uninterrupted_one(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("fit", LEGO, *SMALL, "--steps", "12", "--out", a) == 0
    assert cli("fit", LEGO, *SMALL, "--steps", "5", "--out", b) == 0
    assert cli("fit", LEGO, *SMALL, "--steps", "12", "--out", b, "--resume") == 0  # the jitter continues from the checkpoint's RNG
    ra, rb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    assert ra["final"] == rb["final"]


def test_continual_scene_blocks(tmp_path, capsys):
    out = tmp_path / "blocks"
    assert cli("continual", LEGO, *SMALL, "--holdout", "5", "--grid", "2", "2", "1", "--tasks", "4", "--steps", "3", "--learner", "modular", "--out", out) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert len(record["R"]) == 4 and all(len(row) == 4 for row in record["R"])
    assert record["config"]["split"] is None and record["config"]["grid"] == [2, 2, 1]
    assert (out / "after_task4.png").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (("--samples", "1"), "--samples 1: need at least 2 samples per ray"),
        (("--points", "100"), "--points: does not apply to radiance signals"),
        (("--scene-bound", "0"), "--scene-bound 0.0: must be a positive number"),
        (("--holdout", "1"), "holdout"),
    ],
)
def test_bad_scene_options(args, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli("fit", LEGO, *SMALL, *args, "--out", out) == 2
    assert message in one_line(capsys.readouterr().err)
    assert not out.exists()


def test_corrupt_scene_file(tmp_path, capsys):
    bad = tmp_path / "scene.npz"
    bad.write_bytes(b"not a zip archive")
    assert cli("fit", bad, "--out", tmp_path / "run") == 2
    assert str(bad) in one_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_views_split_keeps_whole_views_and_routes_rays_by_camera():
    from mclnf.signals import load_signal
    from mclnf.signals.tasks import route

    lego = load_signal(LEGO, resize=8)
    tasks = split_signal(lego, "views", 3)
    assert [len(t) // 64 for t in tasks] == [29, 29, 29]
    for k, t in enumerate(tasks):
        assert (route(lego.layout.locate(t.coords), tasks) == k).all()
        held = route(lego.layout.locate(t.eval_coords), tasks)
        assert (held == k).all()  # each held-out view went to the task of its nearest training camera
