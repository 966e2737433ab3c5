"""``mclnf meta-train`` / ``meta-test`` end to end on images, audio and video; resume after a kill; user errors (exit 2,
one line) and divergence. Under torch.distributed (``torchrun``): test_meta_distributed.py."""

import json
import signal
import subprocess
import sys
import time

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import DATA, cli, one_line
from safetensors.torch import load_file

from mclnf.learners import META_METHODS

METHODS = tuple(META_METHODS)

TINY = ("--width", "16", "--depth", "3", "--inner-steps", "1", "--meta-batch", "2", "--quiet")


@pytest.fixture(scope="module")
def image_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("meta")
    for method in METHODS:
        assert cli("meta-train", "lfw_subset", "--method", method, *TINY, "--outer-steps", 3, "--resize", 12, "--out", root / method) == 0
    return root


def test_every_method_meta_trains_and_meta_tests_on_images(image_runs, capsys):
    capsys.readouterr()
    runs = [image_runs / m for m in METHODS]
    out = image_runs / "table"
    assert cli("meta-test", *runs, "lfw_subset", "--steps", 1, 2, "--signals", 2, "--baselines", "cl", "er", "--quiet", "--out", out) == 0
    printed = capsys.readouterr().out
    for m in METHODS:
        record = json.loads((image_runs / m / "meta_train.json").read_text())
        assert record["method"] == m and record["signals"] == {"train": 140, "test": 60} and len(record["curve"]) == 3
    table = (out / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    names = [n for m in METHODS for n in ((m, f"{m} (full batch)") if m == "mol" else (m,))] + ["cl", "er"]  # mol under both step accountings
    assert [r.split(" | ")[0][2:] for r in rows[: len(names)]] == names
    assert "| Step 1 | Best (step) | Final (step 2) |" in table and "### SSIM" in table
    assert table.split("### SSIM")[0] in printed
    compute = (out / "compute.md").read_text()
    assert "| mcl-nf | 420 |" in compute and "| mol | 337 |" in compute  # 4 modules of width 16/√4 = 8, 105 parameters each
    for name in ("psnr_vs_step.png", "grid_step1.png", "grid_step2.png", "metrics.json"):
        assert (out / name).stat().st_size > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["signals"]) == 2 and metrics["steps"] == [1, 2]
    psnr = {m["name"]: m["curve"]["2"]["psnr"] for m in metrics["methods"]}
    assert all(5 < v < 60 for v in psnr.values()), psnr


def test_meta_training_lowers_the_loss_after_adaptation(tmp_path):
    out = tmp_path / "run"
    assert cli("meta-train", "lfw_subset", "--method", "mcl-nf", "--width", "32", "--depth", "3", "--outer-steps", 40, "--outer-lr", "1e-3",
               "--resize", 12, "--quiet", "--out", out) == 0  # fmt: skip
    curve = json.loads((out / "meta_train.json").read_text())["curve"]
    first, last = np.mean([c["loss"] for c in curve[:5]]), np.mean([c["loss"] for c in curve[-5:]])
    assert last < 0.5 * first


def test_audio_and_video_datasets(tmp_path, capsys):
    speech = tmp_path / "speech"
    assert cli("meta-train", DATA / "librispeech" / "*.wav", "--clip", 0.05, "--method", "mcl-nf-fim", "--meta-grad", "emcl", *TINY, "--outer-steps", 2, "--out", speech) == 0
    assert cli("meta-test", speech, DATA / "librispeech" / "*.wav", "--steps", 1, "--signals", 1, "--baselines", "ewc", "--quiet") == 0
    table = (speech / "meta-test" / "table.md").read_text()
    assert "### PESQ" in table and "| mcl-nf-fim (emcl) |" in table and (speech / "meta-test" / "mcl-nf-fim-emcl_step1.wav").is_file()
    video = tmp_path / "video"
    bikes = DATA / "video" / "bikes.mp4"
    args = ("--frames", 24, "--resize", 16, "--clip", 4)
    assert cli("meta-train", bikes, *args, "--method", "oml", "--meta-grad", "first-order", *TINY, "--outer-steps", 2, "--out", video) == 0
    record = json.loads((video / "meta_train.json").read_text())
    assert record["kind"] == "video" and record["signals"] == {"train": 4, "test": 2} and record["layout"]["frames"] == 4
    assert cli("meta-test", video, bikes, "--steps", 1, "--baselines", "mer", "--quiet") == 0
    assert (video / "meta-test" / "oml-first-order_step1.mp4").stat().st_size > 0


def run_cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "mclnf", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


SLOW = ("lfw_subset", "--method", "mol", "--width", "64", "--depth", "4", "--meta-batch", "4", "--outer-steps", "60", "--checkpoint-every", "2", "--quiet")


def test_resume_after_a_kill_reaches_the_uninterrupted_result(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert run_cli("meta-train", *SLOW, "--out", full).wait() == 0
    p = run_cli("meta-train", *SLOW, "--out", cut)
    deadline = time.time() + 120
    while not (cut / "checkpoint.pt").is_file() and time.time() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    step = torch.load(cut / "checkpoint.pt", weights_only=True)["step"]
    assert 2 <= step < 60  # killed part-way
    assert cli("meta-train", *SLOW, "--out", cut, "--resume") == 0
    a, b = load_file(full / "init.safetensors"), load_file(cut / "init.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((cut / "meta_train.json").read_text())["curve"] == json.loads((full / "meta_train.json").read_text())["curve"][:0] + json.loads((cut / "meta_train.json").read_text())["curve"]


def test_user_errors(tmp_path, capsys):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    iio.imwrite(mixed / "a.png", np.zeros((8, 8, 3), np.uint8))
    iio.imwrite(mixed / "b.png", np.zeros((9, 8, 3), np.uint8))
    cases = [
        (("meta-train", tmp_path / "none"), "no such folder, not a glob pattern"),
        (("meta-train", mixed), "every signal of a dataset must have one size"),
        (("meta-train", "lfw_subset", "--meta-batch", "141"), "--meta-batch 141: larger than the 140 meta-train signals"),
        (("meta-train", "lfw_subset", "--inner-lr", "-1"), "--inner-lr -1.0: must be a positive finite number"),
        (("meta-train", "lfw_subset", "--method", "oml", "--oml-fast-layers", "5"), "--oml-fast-layers 5: must be fewer than --depth 5"),
        (("meta-train", DATA / "video" / "bikes.mp4"), "a single file is a dataset only as an audio or video file cut into clips"),
        (("meta-train", "lfw_subset", "--clip", "2"), "--clip: only audio and video files are cut into clips"),
        (("meta-train", "lfw_subset", "--train-list", tmp_path / "x"), "--train-list and --test-list: give both or neither"),
        (("meta-test", tmp_path, "lfw_subset"), "no init.safetensors"),
    ]
    for args, message in cases:
        out = tmp_path / "out"
        assert cli(*args, "--out", out, "--quiet") == 2, args
        assert message in one_line(capsys.readouterr().err), args
        assert not out.exists()


def test_meta_test_refuses_another_dataset_and_resume_refuses_changed_options(image_runs, tmp_path, capsys):
    capsys.readouterr()
    assert cli("meta-test", image_runs / "mol", DATA / "celeba_align", "--out", tmp_path / "t", "--quiet") == 2
    assert "its meta-test split differs from the one" in one_line(capsys.readouterr().err)
    assert cli("meta-train", "lfw_subset", "--method", "mol", *TINY, "--outer-steps", 5, "--resize", 12, "--inner-lr", 0.5, "--out", image_runs / "mol", "--resume") == 2
    assert "was run with --inner-lr 0.01, not 0.5" in one_line(capsys.readouterr().err)


def test_divergence_stops_and_keeps_the_last_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli("meta-train", "lfw_subset", "--method", "mol", *TINY, "--resize", 12, "--outer-steps", 30, "--checkpoint-every", 1,
               "--outer-lr", "1e30", "--out", out) == 1  # fmt: skip
    err = one_line(capsys.readouterr().err)
    assert "training diverged (meta-train mol): loss became nan at step 2; the checkpoint of step 1 is kept (--resume continues from it)" in err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 1 and torch.isfinite(load_file(out / "init.safetensors")["layers.0.weight"]).all()
