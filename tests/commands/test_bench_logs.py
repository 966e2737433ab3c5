"""The logs of ``mclnf cl-bench`` and ``mclnf meta-test`` (:mod:`mclnf.tracking`): a ``log.jsonl`` per (method, seed) or
method, TensorBoard with ``--tensorboard``, a fresh log when ``--resume`` runs a method again, ``--overwrite`` removes them."""

import json
import math

import pytest
from conftest import DATA, cli

from mclnf.commands import cl_bench, meta_test
from mclnf.tracking import Tracker, read_log

FAST = ("--glances", "1", "--quiet")
BENCH = ("cl-bench", "mnist-permutations", "--tasks", 2, "--seeds", 1, "--data", DATA / "mnist", *FAST)
TRAIN_TAGS = {"train/loss", "train/lr", "train/grad_norm", "train/update_norm"}


def events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def logged_steps(last: int, log_every: int | None = None) -> list[int]:
    """The training steps 1 … ``last`` a log holds."""
    return [s for s in range(1, last + 1) if Tracker([], log_every).logs(s)]


def without_time(log: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time_s"} for r in log]


def interrupt(monkeypatch, module, name, when):
    """Make ``module.name`` raise KeyboardInterrupt on the first call for which ``when(*args, **kwargs)`` holds."""
    real = getattr(module, name)

    def wrapped(*args, **kwargs):
        if when(*args, **kwargs):
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


# --------------------------------------------------------------------------- cl-bench


def check_bench_log(log: list[dict], record: dict) -> None:
    """One train line per logged step of each task (steps over the stream), finite losses, and each task's row of ``R``."""
    evals = [r for r in log if r["event"] == "eval"]
    assert [r["task"] for r in evals] == [1, 2]
    assert [[r["task1_acc"], r["task2_acc"]] for r in evals] == record["R"] and evals[-1]["acc"] == pytest.approx(record["acc"])
    train = [r for r in log if r["event"] == "train"]
    assert [r["step"] for r in train] == logged_steps(evals[-1]["step"])
    assert all(r["task"] == (1 if r["step"] <= evals[0]["step"] else 2) for r in train)
    assert all(math.isfinite(r["loss"]) and r["lr"] == pytest.approx(0.03) and r["grad_norm"] > 0 for r in train)
    times = [r["time_s"] for r in log]
    assert times == sorted(times)


def test_cl_bench_logs_each_method_and_seed_with_tensorboard(tmp_path):
    out = tmp_path / "bench"
    assert cli(*BENCH, "--method", "sgd", "er", "--tensorboard", "--out", out) == 0
    files = set(json.loads((out / "run.json").read_text())["files"])
    for method in ("sgd", "er"):
        log = read_log(out / "logs" / f"{method}-seed0.log.jsonl")
        check_bench_log(log, json.loads((out / "runs" / f"{method}-seed0.json").read_text()))
        acc = events(out / "tensorboard" / f"{method}-seed0")
        assert TRAIN_TAGS | {"eval/acc", "eval/task1_acc", "eval/task2_acc"} <= set(acc.Tags()["scalars"])
        assert [e.step for e in acc.Scalars("eval/acc")] == [r["step"] for r in log if r["event"] == "eval"]
        assert [e.step for e in acc.Scalars("train/loss")] == [r["step"] for r in log if r["event"] == "train"]
        assert f"logs/{method}-seed0.log.jsonl" in files
        assert {f"tensorboard/{method}-seed0/{p.name}" for p in (out / "tensorboard" / f"{method}-seed0").iterdir()} <= files

    assert cli(*BENCH, "--method", "sgd", "--log-every", 50, "--out", out, "--overwrite") == 0
    assert not (out / "tensorboard").exists() and not (out / "logs" / "er-seed0.log.jsonl").exists()
    log = read_log(out / "logs" / "sgd-seed0.log.jsonl")
    end = [r["step"] for r in log if r["event"] == "eval"][-1]
    assert [r["step"] for r in log if r["event"] == "train"] == logged_steps(end, 50)


def test_a_resumed_cl_bench_logs_the_rerun_method_afresh(tmp_path, monkeypatch):
    out = tmp_path / "bench"
    args = (*BENCH, "--method", "sgd", "er", "--out", out)
    calls = []
    interrupt(monkeypatch, cl_bench, "accuracy", lambda *a, **k: calls.append(1) or len(calls) == 7)  # er after training task 2: its log holds task 2's steps
    assert cli(*args) == 130
    sgd = out / "logs" / "sgd-seed0.log.jsonl"
    kept = sgd.read_bytes()
    cut = read_log(out / "logs" / "er-seed0.log.jsonl")
    assert [r["event"] for r in cut].count("eval") == 1 and any(r.get("task") == 2 for r in cut)
    monkeypatch.undo()
    assert cli(*args, "--resume", "--tensorboard") == 0  # the logging options may change on --resume
    assert sgd.read_bytes() == kept  # sgd was done: not run again, its log untouched
    log = read_log(out / "logs" / "er-seed0.log.jsonl")
    check_bench_log(log, json.loads((out / "runs" / "er-seed0.json").read_text()))  # no step twice
    assert (out / "tensorboard" / "er-seed0").is_dir() and not (out / "tensorboard" / "sgd-seed0").exists()


# --------------------------------------------------------------------------- meta-test

META = ("lfw_subset", "--steps", 1, 3, "--signals", 2, "--baselines", "cl", "--grid-signals", 1, "--quiet")


@pytest.fixture(scope="module")
def meta_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("meta") / "mcl-nf"
    assert cli("meta-train", "lfw_subset", "--method", "mcl-nf", "--width", 16, "--depth", 3, "--inner-steps", 1, "--meta-batch", 2, "--outer-steps", 2,
               "--tasks", 2, "--resize", 12, "--quiet", "--out", out) == 0  # fmt: skip
    return out


def check_meta_log(log: list[dict], record: dict, tasks: int = 2) -> None:
    """Per signal and step count s: s steps of each task (counted over the method's runs), then the run's metrics."""
    expected, step = [], 0
    for signal in (1, 2):
        for s in (1, 3):
            for task in range(1, tasks + 1):
                expected += [("train", step + k, signal, s, task) for k in range(1, s + 1)]
                step += s
            expected.append(("eval", step, signal, s, None))
    assert [(r["event"], r["step"], r["signal"], r["steps_per_task"], r.get("task")) for r in log] == expected
    assert all(math.isfinite(r["loss"]) and r["update_norm"] > 0 for r in log if r["event"] == "train")
    evals = [r for r in log if r["event"] == "eval"]
    for s in (1, 3):
        assert [r["psnr"] for r in evals if r["steps_per_task"] == s] == [m["psnr"] for m in record["per_signal"][str(s)]]
    times = [r["time_s"] for r in log]
    assert times == sorted(times) and times[-1] == pytest.approx(record["test_s"])


def test_meta_test_logs_each_method_with_tensorboard(meta_run, tmp_path):
    out = tmp_path / "mt"
    assert cli("meta-test", meta_run, *META, "--tensorboard", "--out", out) == 0
    files = set(json.loads((out / "run.json").read_text())["files"])
    for tag in ("01-mcl-nf", "02-cl"):
        log = read_log(out / "logs" / f"{tag}.log.jsonl")
        check_meta_log(log, json.loads((out / "methods" / f"{tag}.json").read_text()))
        acc = events(out / "tensorboard" / tag)
        assert TRAIN_TAGS | {"eval/psnr", "eval/ssim"} <= set(acc.Tags()["scalars"])
        evals = [r for r in log if r["event"] == "eval"]
        assert [e.step for e in acc.Scalars("eval/psnr")] == [r["step"] for r in evals]
        assert [e.step for e in acc.Images("reconstruction")] == [r["step"] for r in evals if r["signal"] == 1]  # --grid-signals 1
        assert f"logs/{tag}.log.jsonl" in files and {f"tensorboard/{tag}/{p.name}" for p in (out / "tensorboard" / tag).iterdir()} <= files
    assert cli("meta-test", meta_run, *META, "--out", out, "--overwrite") == 0
    assert not (out / "tensorboard").exists() and len(read_log(out / "logs" / "02-cl.log.jsonl")) == len(log)


def test_a_resumed_meta_test_logs_the_rescored_method_afresh(meta_run, tmp_path, monkeypatch):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert cli("meta-test", meta_run, *META, "--out", whole) == 0
    seen = []

    def in_cl(learner, task, steps, progress=True, tracker=None, **kwargs):  # the second method's second signal
        seen.append(tracker is not None and tracker.info == {"signal": 2, "steps_per_task": 1, "task": 1})
        return seen.count(True) == 2

    interrupt(monkeypatch, meta_test, "learn_task", in_cl)
    assert cli("meta-test", meta_run, *META, "--out", cut) == 130
    assert max(r["signal"] for r in read_log(cut / "logs" / "02-cl.log.jsonl")) == 1
    monkeypatch.undo()
    assert cli("meta-test", meta_run, *META, "--out", cut, "--resume") == 0
    for tag in ("01-mcl-nf", "02-cl"):
        a, b = (read_log(p / "logs" / f"{tag}.log.jsonl") for p in (whole, cut))
        assert without_time(b) == without_time(a), tag
