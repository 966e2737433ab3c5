"""kill -9 at a random moment, then --resume: the result of an uninterrupted run, for every command that resumes
(meta-train's is in tests/commands/test_meta_cli.py); and random option values: exit 0, or one line and exit 2
(1 for a run that diverges), never a traceback."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conftest import DATA, cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def killed_then_resumed(argv, out, ready, expected_exit=0) -> None:
    """Run ``argv`` into ``out`` as a process, SIGKILL it once ``ready(out)`` holds, then finish it with --resume."""
    p = subprocess.Popen([sys.executable, "-m", "mclnf", *map(str, argv), "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 120
    while not ready(out) and time.time() < deadline and p.poll() is None:
        time.sleep(0.01)
    assert p.poll() is None, "the run ended before it could be killed: make it longer"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert cli(*argv, "--out", out, "--resume") == expected_exit


def test_fit_killed_anywhere_resumes_to_the_same_bytes(tmp_path):
    argv = ("fit", "camera", "--resize", 48, "--width", 48, "--depth", 3, "--steps", 1500, "--quiet")
    assert cli(*argv, "--out", tmp_path / "full") == 0
    killed_then_resumed(argv, tmp_path / "cut", lambda out: (out / "checkpoint.pt").is_file())
    assert (tmp_path / "cut" / "field.safetensors").read_bytes() == (tmp_path / "full" / "field.safetensors").read_bytes()
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("full", "cut"))
    assert a["final"] == b["final"] and [c["loss"] for c in a["curve"]] == [c["loss"] for c in b["curve"]]


def test_continual_killed_between_tasks_resumes_to_the_same_matrix(tmp_path):
    argv = ("continual", "camera", "--resize", 48, "--width", 48, "--depth", 3, "--tasks", 4, "--steps", 300, "--learner", "er", "--quiet")
    assert cli(*argv, "--out", tmp_path / "full") == 0
    killed_then_resumed(argv, tmp_path / "cut", lambda out: (out / "after_task1.png").is_file())
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("full", "cut"))
    assert a["R"] == b["R"] and a["final"] == b["final"]


def test_cl_bench_killed_between_runs_resumes_to_the_same_table(tmp_path):
    argv = ("cl-bench", "mnist-permutations", "--tasks", 3, "--seeds", 2, "--method", "sgd", "er", "--data", DATA / "mnist", "--quiet")
    assert cli(*argv, "--out", tmp_path / "full") == 0
    killed_then_resumed(argv, tmp_path / "cut", lambda out: (out / "runs" / "sgd-seed0.json").is_file())
    strip = lambda text: [line.split("|")[1:3] for line in text.splitlines() if line.startswith("| ")]  # noqa: E731  (method, ACC)
    assert strip((tmp_path / "cut" / "table.md").read_text()) == strip((tmp_path / "full" / "table.md").read_text())


NUMBERS = st.one_of(st.integers(-3, 3), st.sampled_from([0, 10**12, 2**63, -(2**63)]), st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False, width=32))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(["--batch-size", "--lr", "--seed", "--width", "--depth", "--resize", "--omega0", "--first-omega0", "--pad"]),
       value=NUMBERS)  # fmt: skip
def test_any_number_for_any_option_exits_0_or_2_in_one_line(tmp_path, capsys, option, value):
    out = Path(tempfile.mkdtemp(dir=tmp_path)) / "out"  # a fresh folder for every example (hypothesis replays some)
    base = {"--steps": 2, "--resize": 8, "--width": 8, "--depth": 2}  # cheap when the value is valid (--steps is not fuzzed: a huge valid count is a long run)
    args = [a for k, v in base.items() if k != option for a in (k, v)]
    code = cli("fit", "camera", *args, option, value, "--quiet", "--out", out)
    err = capsys.readouterr().err
    assert "Traceback" not in err and code in (0, 1, 2), (option, value, code, err)
    if code == 1:  # a huge learning rate: a diverged run, said in one line, its last good checkpoint kept
        assert len(err.splitlines()) == 1 and "diverged" in err and "--lr" in err, err
    elif code == 2:
        assert len(err.splitlines()) == 1 and (option in err or "error:" in err), err
        assert not out.exists() or not any(out.iterdir())
    else:
        assert (out / "metrics.json").is_file()
