"""``mclnf continual`` end to end: outputs, the --learner all comparison, resume, user errors
(exit 2, one line, nothing written) and divergence (exit 1, the last finished task's checkpoint kept)."""

import json
import re
import subprocess
import sys

import imageio.v3 as iio
import pytest
import torch
from conftest import DATA, cli, one_line

from mclnf.learners import CONTINUAL_LEARNERS

FACE = DATA / "celeba_align" / "000003.jpg"
SMALL = ("--crop", "178", "178", "--resize", "24", "--width", "16", "--depth", "3", "--batch-size", "64", "--quiet")


def test_all_learners_write_a_comparison(tmp_path, capsys):
    out = tmp_path / "all"
    assert cli("continual", FACE, *SMALL, "--steps", 5, "--learner", "all", "--out", out) == 0
    printed = capsys.readouterr().out
    table = (out / "comparison.md").read_text()
    assert table in printed and f"outputs in {out}" in printed
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| learner")]
    assert [r.split("|")[1].strip() for r in rows] == list(CONTINUAL_LEARNERS)
    assert iio.imread(out / "comparison.png").ndim == 3
    for name in CONTINUAL_LEARNERS:
        record = json.loads((out / name / "metrics.json").read_text())
        R = record["R"]
        assert record["learner"] == name and len(R) == 4 and record["metric"] == "psnr"
        assert record["bwt"] == pytest.approx(sum(R[3][j] - R[j][j] for j in range(3)) / 3)
        assert record["final"]["psnr"] == record["whole_after_task"][-1] and "ssim" in record["final"]
        assert f"| {name} | {record['final']['psnr']:.4g} | {record['bwt']:.4g} |" in table
        for i in range(1, 5):
            assert iio.imread(out / name / f"after_task{i}.png").shape == (24, 24, 3)
        assert iio.imread(out / name / "matrix.png").ndim == 3
    assert json.loads((out / "modular" / "metrics.json").read_text())["bwt"] == 0.0


def test_resume_a_finished_all_run_reuses_it_and_a_changed_option_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli("continual", FACE, *SMALL, "--steps", 3, "--learner", "er", "--out", out) == 0
    first = json.loads((out / "metrics.json").read_text())
    assert cli("continual", FACE, *SMALL, "--steps", 3, "--learner", "er", "--out", out, "--resume") == 0
    assert json.loads((out / "metrics.json").read_text())["R"] == first["R"]
    capsys.readouterr()
    assert cli("continual", FACE, *SMALL, "--steps", 3, "--learner", "er", "--buffer-size", 7, "--out", out, "--resume") == 2
    assert "--buffer-size 4096, not 7" in one_line(capsys.readouterr().err)
    assert cli("continual", FACE, *SMALL, "--steps", 3, "--learner", "er", "--lr", 0.5, "--out", out, "--resume") == 2
    assert "--lr 0.0001, not 0.5" in one_line(capsys.readouterr().err)
    assert cli("continual", FACE, *SMALL, "--steps", 3, "--learner", "er", "--out", out) == 2  # not empty, no --resume
    assert "--overwrite" in one_line(capsys.readouterr().err)


BAD = {  # id: (options, what the message must name)
    "split-time-on-image": (("--split", "time"), "--split time"),
    "grid-mismatch": (("--grid", "3", "3"), "--grid 3 3"),
    "resolution-not-square": (("--split", "resolution", "--tasks", "5"), "--tasks 5"),
    "too-many-strips": (("--tasks", "30"), "--tasks"),
    "mer-beta": (("--learner", "mer", "--mer-beta", "1.5"), "--mer-beta 1.5"),
    "ewc-lambda": (("--learner", "ewc", "--ewc-lambda", "-1"), "--ewc-lambda -1"),
    "tasks-0": (("--tasks", "0"), "--tasks"),
    "steps-0": (("--steps", "0"), "--steps"),
    "learner-foo": (("--learner", "foo"), "--learner"),
    "frames-on-image": (("--frames", "3"), "--frames"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_option(case, tmp_path, capsys):
    options, name = BAD[case]
    out = tmp_path / "out"
    assert cli("continual", FACE, *SMALL, "--steps", 2, *options, "--out", out) == 2
    assert name in one_line(capsys.readouterr().err)
    assert not out.exists()


def test_missing_signal_file(tmp_path, capsys):
    assert cli("continual", tmp_path / "nope.png", "--out", tmp_path / "out") == 2
    assert "nope.png: no such file" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_divergence_names_the_task_and_keeps_the_last_finished_one(tmp_path):
    """SGD at lr 30 with 4 steps per task: the first task finishes, a later one diverges (measured: task 3)."""
    out = tmp_path / "run"
    argv = ["continual", str(FACE), *SMALL, "--steps", "4", "--learner", "cl", "--optimizer", "sgd", "--lr", "30", "--out", str(out)]
    p = subprocess.run([sys.executable, "-m", "mclnf", *argv], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 1
    line = one_line(p.stderr)
    m = re.search(r"training diverged \(cl, task (\d) of 4\): (loss became (nan|inf)|parameters became non-finite)", line)
    assert m, line
    task = int(m.group(1))
    assert task > 1 and f"checkpoint after task {task - 1} is kept" in line
    assert not (out / "metrics.json").exists()
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert len(ck["rows"]) == task - 1 and all(torch.isfinite(t).all() for t in ck["learner"]["model"].values())
    assert cli(*argv, "--resume") == 1  # the kept run goes on, and diverges again at the same task
