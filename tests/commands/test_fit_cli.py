"""``mclnf fit`` / ``mclnf render`` end to end on the real data pack: outputs, determinism, --resume,
output-folder rules, user errors (exit 2, one line, nothing written) and divergence (exit 1)."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import soundfile as sf
import tifffile
import torch
import trimesh
from conftest import DATA, cli, one_line
from safetensors.torch import load_file

from mclnf.fields import Field, FieldConfig

SMALL = ("--width", "32", "--depth", "3", "--quiet")
RECORD_KEYS = {"signal", "kind", "activation", "optimizer", "params", "steps", "wall_time_s", "final", "curve"}
OUTPUTS = ("metrics.json", "curve.png", "field.safetensors", "checkpoint.pt")


def fit(out, *args, steps=8) -> dict:
    """A small successful fit; its metrics.json."""
    assert cli("fit", *args, *SMALL, "--steps", steps, "--out", out) == 0
    return json.loads((out / "metrics.json").read_text())


def tensors(run) -> dict[str, torch.Tensor]:
    return load_file(str(run / "field.safetensors"))


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def check_run(out, record: dict, kind: str, steps: int, metrics: set[str]) -> None:
    """Everything every run writes, and what metrics.json says about it."""
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    assert RECORD_KEYS <= record.keys()
    assert record["kind"] == kind and record["steps"] == steps
    assert record["wall_time_s"] > 0
    assert metrics <= record["final"].keys()
    for name in metrics:
        assert isinstance(record["final"][name], float) and math.isfinite(record["final"][name]), name
    powers = [2**k for k in range(steps.bit_length())]  # 1, 2, 4, … ≤ steps
    assert [c["step"] for c in record["curve"]] == powers + ([steps] if powers[-1] != steps else [])
    # params: what the saved field really has, and what its config builds
    state = tensors(out)
    assert record["params"] == sum(t.numel() for t in state.values())
    assert record["params"] == Field(FieldConfig.from_dict(record["field"])).num_params
    curve_png = iio.imread(out / "curve.png")
    assert curve_png.ndim == 3 and min(curve_png.shape[:2]) > 100


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def camera_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("camera") / "run"
    assert cli("fit", "camera", "--resize", 32, *SMALL, "--steps", 20, "--out", out) == 0
    return out


def test_image_builtin_end_to_end(camera_run, capsys):
    record = json.loads((camera_run / "metrics.json").read_text())
    check_run(camera_run, record, "image", 20, {"psnr", "ssim"})
    assert [c["step"] for c in record["curve"]] == [1, 2, 4, 8, 16, 20]
    assert (record["signal"], record["activation"], record["optimizer"]) == ("camera", "sine", "adam")
    assert iio.imread(camera_run / "reconstruction.png").shape == (32, 32)  # camera is gray
    # outputs are ordinary files (umask), not mkstemp's private 0600
    mask = os.umask(0)
    os.umask(mask)
    for name in (*OUTPUTS, "reconstruction.png"):
        assert (camera_run / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_image_png_end_to_end(tmp_path):
    src = DATA / "div2k" / "00.png"
    record = fit(tmp_path / "run", src, "--resize", 32)
    check_run(tmp_path / "run", record, "image", 8, {"psnr", "ssim"})
    assert record["signal"] == str(src)
    assert iio.imread(tmp_path / "run" / "reconstruction.png").shape == (32, 32, 3)
    assert record["params"] == 2 * 32 + 32 + 32 * 32 + 32 + 32 * 3 + 3


@pytest.mark.parametrize(
    "path", [*sorted((DATA / "librispeech").glob("*.wav")), DATA / "audio" / "gt_counting.wav"], ids=lambda p: p.name
)
def test_audio_end_to_end(path, tmp_path):
    # from 1 s on: the first half second of 5703-47212-0000 is silence, where PESQ is undefined (None)
    record = fit(tmp_path / "run", path, "--start", 1, "--duration", 0.5, steps=4)
    check_run(tmp_path / "run", record, "audio", 4, {"psnr", "pesq"})
    rate = sf.info(path).samplerate
    rec = sf.info(tmp_path / "run" / "reconstruction.wav")
    assert (rec.samplerate, rec.channels, rec.frames) == (rate, 1, round(0.5 * rate))
    assert record["field"]["first_omega0"] == 3000.0  # SIREN's audio default


def test_video_end_to_end(tmp_path):
    record = fit(tmp_path / "run", DATA / "video" / "bikes.mp4", "--frames", 4, "--resize", 32, steps=4)
    check_run(tmp_path / "run", record, "video", 4, {"psnr", "ssim"})
    frames = iio.imread(tmp_path / "run" / "reconstruction.mp4", plugin="pyav")
    assert frames.shape == (4, 14, 32, 3)  # 640×272 → 32×13.6 → 32×14


def test_matroska_video_cropped_end_to_end(tmp_path):
    """A real .mkv capture (asl_gestures, 640 × 480), every frame's centred 480² window at 16²."""
    record = fit(tmp_path / "run", DATA / "video" / "asl_gestures" / "again.mkv", "--frames", 2, "--crop", 480, 480, "--resize", 16, steps=2)
    check_run(tmp_path / "run", record, "video", 2, {"psnr", "ssim"})
    assert (record["layout"]["frames"], record["layout"]["height"], record["layout"]["width"]) == (2, 16, 16)


def test_mesh_end_to_end(tmp_path):
    src = DATA / "meshes" / "bunny_cr.obj"
    record = fit(tmp_path / "run", src, "--points", 3000, "--eval-points", 3000, "--resolution", 24)
    check_run(tmp_path / "run", record, "occupancy", 8, {"iou"})
    assert 0 <= record["final"]["iou"] <= 1
    mesh = trimesh.load(tmp_path / "run" / "reconstruction.ply", force="mesh")
    assert len(mesh.faces) > 0
    center, scale = np.array(record["layout"]["center"]), record["layout"]["scale"]
    assert np.all(np.abs(mesh.vertices - center) <= scale * 1.01)  # inside the field's box, in mesh units
    assert record["layout"]["resolution"] == 24


def test_default_size_and_default_out(tmp_path, monkeypatch, capsys):
    """5 × 256 on a gray image: 198,401 parameters (one step on an 8×8 image keeps it cheap)."""
    assert Field(FieldConfig(in_dim=2, out_dim=1)).num_params == 198_401
    monkeypatch.chdir(tmp_path)
    assert cli("fit", "camera", "--resize", 8, "--steps", 1, "--quiet") == 0
    out = tmp_path / "runs" / "fit-camera-sine"
    record = json.loads((out / "metrics.json").read_text())
    assert record["params"] == 198_401 and record["field"]["width"] == 256 and record["field"]["depth"] == 5
    assert "198,401 parameters" in capsys.readouterr().out


# --------------------------------------------------------------------------- render, seeds


def test_render_recreates_reconstruction(camera_run, tmp_path, capsys):
    assert cli("render", camera_run) == 0
    assert capsys.readouterr().out.strip() == str(camera_run / "render.png")
    rendered, reconstructed = iio.imread(camera_run / "render.png"), iio.imread(camera_run / "reconstruction.png")
    assert rendered.shape == reconstructed.shape and np.array_equal(rendered, reconstructed)
    assert cli("render", camera_run / "field.safetensors", "--out", tmp_path / "r.png") == 0
    assert np.array_equal(iio.imread(tmp_path / "r.png"), reconstructed)
    capsys.readouterr()
    for run, extra, name in (
        (tmp_path / "nowhere", (), "nowhere"),  # no run there
        (camera_run, ("--out", tmp_path / "r.wav"), "--out"),  # an image field renders PNG only
        (camera_run, ("--out", tmp_path / "no" / "r.png"), "--out"),  # no such folder
        (camera_run, ("--resolution", 8), "--resolution"),  # occupancy only
    ):
        assert cli("render", run, *extra) == 2
        assert name in one_line(capsys.readouterr().err)
    assert not (tmp_path / "r.wav").exists() and not (tmp_path / "no").exists()


def test_same_seed_same_field_other_seed_other_field(camera_run, tmp_path):
    args = ("camera", "--resize", 32)
    first = json.loads((camera_run / "metrics.json").read_text())
    again = fit(tmp_path / "again", *args, steps=20)
    other = fit(tmp_path / "other", *args, "--seed", 1, steps=20)
    assert again["final"] == first["final"]
    assert same_tensors(tensors(tmp_path / "again"), tensors(camera_run))
    assert other["final"] != first["final"]
    a, b = tensors(tmp_path / "other"), tensors(camera_run)
    assert a.keys() == b.keys() and not any(torch.equal(a[k], b[k]) for k in a if k.endswith("weight"))


# --------------------------------------------------------------------------- --resume


def test_resume_continues_exactly(tmp_path, capsys):
    args = ("camera", "--resize", 32)  # 1024 pixels in batches of 512: the batch order matters
    a = fit(tmp_path / "a", *args, steps=12)
    fit(tmp_path / "b", *args, steps=6)
    # --lr 1e-4 is Adam's default: the same run, so it may be spelt out on --resume
    assert cli("fit", *args, *SMALL, "--steps", 12, "--lr", 1e-4, "--out", tmp_path / "b", "--resume") == 0
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert same_tensors(tensors(tmp_path / "a"), tensors(tmp_path / "b"))
    assert [c["step"] for c in b["curve"]] == [1, 2, 4, 6, 8, 12]
    loss_a = {c["step"]: c["loss"] for c in a["curve"]}
    loss_b = {c["step"]: c["loss"] for c in b["curve"]}
    assert all(loss_b[s] == loss_a[s] for s in loss_a) and b["final"] == a["final"]
    capsys.readouterr()

    before = (tmp_path / "b" / "field.safetensors").read_bytes()
    assert cli("fit", *args, *SMALL, "--steps", 20, "--lr", 1e-3, "--out", tmp_path / "b", "--resume") == 2
    assert "--lr" in one_line(capsys.readouterr().err)
    assert cli("fit", *args, *SMALL, "--steps", 8, "--out", tmp_path / "b", "--resume") == 2  # the run is past step 8
    assert "--steps" in one_line(capsys.readouterr().err)
    (tmp_path / "b" / "metrics.json").unlink()  # as if killed after its last checkpoint, before its outputs
    assert cli("fit", *args, *SMALL, "--steps", 12, "--out", tmp_path / "b", "--resume") == 0  # finishes the outputs
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["final"] == b["final"]
    assert (tmp_path / "b" / "field.safetensors").read_bytes() == before

    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "missing"):
        assert cli("fit", *args, *SMALL, "--steps", 12, "--out", folder, "--resume") == 2
        assert "--resume" in one_line(capsys.readouterr().err)
    assert not any((tmp_path / "empty").iterdir()) and not (tmp_path / "missing").exists()


# --------------------------------------------------------------------------- output folder


def test_out_folder_rules(camera_run, tmp_path, capsys):
    args = ("fit", "camera", "--resize", 16, *SMALL, "--steps", 2)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    for extra in ((), ("--overwrite",)):  # --overwrite replaces runs, never other folders
        assert cli(*args, "--out", foreign, *extra) == 2
        assert "--out" in one_line(capsys.readouterr().err)
        assert [p.name for p in foreign.iterdir()] == ["keep.txt"] and (foreign / "keep.txt").read_text() == "mine"

    run = tmp_path / "run"
    shutil.copytree(camera_run, run)
    (run / "stale.txt").write_text("old")
    listing = sorted(p.name for p in run.iterdir())
    assert cli(*args, "--out", run) == 2
    assert "--out" in one_line(capsys.readouterr().err)
    assert sorted(p.name for p in run.iterdir()) == listing
    written = set(json.loads((run / "run.json").read_text())["files"])
    assert {"metrics.json", "checkpoint.pt", "field.safetensors", "reconstruction.png", "curve.png"} <= written and "stale.txt" not in written
    assert cli(*args, "--out", run, "--overwrite") == 0
    assert (run / "stale.txt").read_text() == "old"  # --overwrite deletes only what the run wrote
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out in (a_file, a_file / "sub"):
        assert cli(*args, "--out", out) == 2
        assert "--out" in one_line(capsys.readouterr().err)
    assert a_file.read_text() == "x"


# --------------------------------------------------------------------------- user errors


def _corrupt(tmp_path, suffix):
    p = tmp_path / f"corrupt{suffix}"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    return p


def _nan_tiff(tmp_path):
    p = tmp_path / "nan.tif"
    pixels = np.full((8, 8), 0.5, np.float32)
    pixels[3, 4] = np.nan
    tifffile.imwrite(p, pixels)
    return p


def _empty_wav(tmp_path):
    p = tmp_path / "empty.wav"
    sf.write(p, np.zeros((0, 1), np.float32), 16000)
    assert sf.info(p).frames == 0
    return p


def _directory(tmp_path):
    p = tmp_path / "folder.png"
    p.mkdir()
    return p


def _xyz(tmp_path):
    p = tmp_path / "points.xyz"
    p.write_text("0 0 0\n")
    return p


BAD_FILES = {  # id: (make the file, what the message must name besides the file)
    "missing": (lambda t: t / "missing.png", "no such file"),
    "directory": (_directory, "not a regular file"),
    "corrupt-png": (lambda t: _corrupt(t, ".png"), "image"),
    "corrupt-wav": (lambda t: _corrupt(t, ".wav"), "audio"),
    "corrupt-mp4": (lambda t: _corrupt(t, ".mp4"), "video"),
    "corrupt-obj": (lambda t: _corrupt(t, ".obj"), "faces"),
    "unsupported-suffix": (_xyz, ".xyz"),
    "nan-image": (_nan_tiff, "NaN"),
    "empty-audio": (_empty_wav, ""),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_input_file(case, tmp_path, capsys):
    path = BAD_FILES[case][0](tmp_path)
    out = tmp_path / "out"
    assert cli("fit", path, *SMALL, "--steps", 2, "--out", out) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("mclnf fit: error: ") and str(path) in line and BAD_FILES[case][1] in line
    assert not out.exists()


def test_empty_audio_message_does_not_blame_start(tmp_path, capsys):
    assert cli("fit", _empty_wav(tmp_path), *SMALL, "--out", tmp_path / "out") == 2
    line = one_line(capsys.readouterr().err)
    assert "--start" not in line and "no audio samples" in line


def test_unreadable_file(tmp_path, capsys):
    """chmod 000 for an ordinary user; as root (who reads anything) a file without read permission
    cannot be made, so the check is exercised with a path whose parent is not a directory."""
    path = shutil.copy(DATA / "div2k" / "00.png", tmp_path / "locked.png")
    os.chmod(path, 0)
    if not os.access(path, os.R_OK):
        assert cli("fit", path, *SMALL, "--out", tmp_path / "out") == 2
        line = one_line(capsys.readouterr().err)
        assert str(path) in line and "not readable" in line
    else:
        bogus = Path(path) / "inside.png"  # ENOTDIR: exists() is False
        assert cli("fit", bogus, *SMALL, "--out", tmp_path / "out") == 2
        assert str(bogus) in one_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


BAD_OPTIONS = {  # id: (options, what the message must name)
    "lr-negative": (("--lr", "-1"), "--lr"),
    "lr-nan": (("--lr", "nan"), "--lr"),
    "lr-inf": (("--lr", "inf"), "--lr"),
    "steps-0": (("--steps", "0"), "--steps"),
    "batch-size-0": (("--batch-size", "0"), "--batch-size"),
    "width-0": (("--width", "0"), "--width"),
    "depth-1": (("--depth", "1"), "--depth"),
    "activation-foo": (("--activation", "foo"), "--activation"),
    "optimizer-foo": (("--optimizer", "foo"), "--optimizer"),
    "frames-on-image": (("--frames", "3"), "--frames"),
    "resolution-on-image": (("--resolution", "16"), "--resolution"),
    "crop-too-large": (("--crop", "9999", "9999"), "--crop"),
    "resize-negative": (("--resize", "-5"), "--resize"),
    "sigma-negative": (("--activation", "gaussian", "--sigma", "-1"), "--sigma"),
    "sigma-on-sine": (("--sigma", "0.1"), "--sigma"),
    "device-cuda": (("--device", "cuda:99"), "--device"),
    "device-bogus": (("--device", "tpu0"), "--device"),
}


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_bad_option(case, tmp_path, capsys):
    options, name = BAD_OPTIONS[case]
    out = tmp_path / "out"
    # the case's own options come last, so they override the small defaults
    assert cli("fit", "camera", "--resize", 16, *SMALL, "--steps", 2, *options, "--out", out) == 2
    assert name in one_line(capsys.readouterr().err)
    assert not out.exists()


def test_bad_input_as_a_real_process(tmp_path):
    path = _corrupt(tmp_path, ".png")
    p = subprocess.run(
        [sys.executable, "-m", "mclnf", "fit", str(path), "--quiet", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert p.returncode == 2 and p.stdout == ""
    assert str(path) in one_line(p.stderr)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- divergence


def test_divergence_keeps_last_good_checkpoint(tmp_path):
    """SGD at lr 1e6 on a 16×16 image: the first steps are finite, a later one is not."""
    out = tmp_path / "run"
    argv = ["fit", "camera", "--resize", "16", *SMALL, "--steps", "20", "--optimizer", "sgd", "--lr", "1e6", "--out", str(out)]
    p = subprocess.run([sys.executable, "-m", "mclnf", *argv], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 1
    line = one_line(p.stderr)
    m = re.search(r"loss became (nan|inf|-inf) at step (\d+)", line)
    assert m, line
    kept = re.search(r"last good checkpoint \(step (\d+)\) is kept", line)
    assert kept, line
    diverged, good = int(m.group(2)), int(kept.group(1))
    assert 1 <= good < diverged
    assert not (out / "metrics.json").exists() and not (out / "reconstruction.png").exists()
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["step"] == good and ck["curve"][-1]["step"] == good
    field = tensors(out)
    assert same_tensors(field, ck["field"])
    assert all(torch.isfinite(t).all() for t in field.values())
    # and the kept run continues: the same settings diverge at the same step again
    assert cli(*argv, "--resume") == 1


# --------------------------------------------------------------------------- help


def test_fit_help_mentions_every_option(capsys):
    assert cli("fit", "--help") == 0
    text = capsys.readouterr().out
    for option in ("--activation", "--optimizer", "--lr", "--steps", "--batch-size", "--width", "--depth", "--seed", "--out",
                   "--resume", "--overwrite", "--quiet", "--device", "--resize", "--duration", "--frames", "--points"):  # fmt: skip
        assert option in text, option
    assert cli("fit") == 2  # the signal is required


def test_tensorboard_log_holds_the_curve(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert cli("fit", "camera", "--resize", 16, *SMALL, "--steps", 8, "--tensorboard", "--out", out) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    psnr = events.Scalars("eval/psnr")
    curve = json.loads((out / "metrics.json").read_text())["curve"]
    assert [e.step for e in psnr] == [c["step"] for c in curve] == [1, 2, 4, 8]
    assert [e.value for e in psnr] == pytest.approx([c["psnr"] for c in curve], rel=1e-6)


@pytest.mark.parametrize(
    "signal, activation, chosen",
    [("camera", "sine", "adam (lr 0.0001)"), ("camera", "gaussian", "adam (lr 0.0001)"), ("camera", "relu-pe", "adam (lr 0.001)"),
     (DATA / "librispeech/198-209-0000.wav", "sine", "adam (lr 0.0001)")],
)  # fmt: skip
def test_optimizer_auto_follows_the_study_and_says_so(tmp_path, capsys, signal, activation, chosen):
    extra = ("--resize", 16) if signal == "camera" else ("--duration", 0.3)
    assert cli("fit", signal, *extra, *SMALL, "--steps", 2, "--activation", activation, "--optimizer", "auto", "--out", tmp_path / "r") == 0
    assert f"--optimizer auto: {chosen}" in capsys.readouterr().out
    record = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert record["optimizer"] == chosen.split()[0]
    assert cli("fit", signal, *extra, *SMALL, "--steps", 4, "--activation", activation, "--optimizer", "auto", "--out", tmp_path / "r", "--resume") == 0
