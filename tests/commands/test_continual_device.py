"""``mclnf continual --device``: the one device check (a device this machine lacks: one line, exit status 2, nothing
written), a run on each test device (``cpu``; ``cuda`` where there is one) that is stopped and resumed to an
uninterrupted run's result, checkpoints of CPU tensors that a run on another device resumes from (a CPU checkpoint
resumed on CUDA and back), and a log of plain floats."""

import json

import numpy as np
import pytest
import torch
from conftest import DATA, cli, one_line

from mclnf.commands import continual
from mclnf.tracking import read_log

FACE = DATA / "celeba_align" / "000003.jpg"
SMALL = ("--crop", "178", "178", "--resize", "24", "--width", "16", "--depth", "3", "--batch-size", "64", "--quiet", "--steps", "3")


@pytest.mark.parametrize("device, message", [("cuda", "CUDA is not available"), ("cuda:99", "not available"), ("mps", "not supported"), ("gpu", "not a device name")])
def test_an_absent_device_is_one_line(device, message, tmp_path, capsys):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "out"
    assert cli("continual", FACE, *SMALL, "--device", device, "--out", out) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith(f"mclnf continual: error: --device {device}: ") and message in err
    assert not out.exists()


def interrupt_after_tasks(monkeypatch, done: int) -> None:
    """Stop the run (Ctrl-C) when task ``done + 1`` starts."""
    real, calls = continual.learn_task, []

    def learn_task(*args, **kwargs):
        calls.append(1)
        if len(calls) > done:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(continual, "learn_task", learn_task)


@pytest.mark.parametrize("learner", ["er", "ewc", "mer"])  # learners with state beyond the model: a buffer, a penalty, Reptile's weights
def test_runs_stops_and_resumes_to_an_uninterrupted_run(learner, device, tmp_path, monkeypatch, capsys):
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert cli("continual", FACE, *SMALL, "--learner", learner, "--device", device, "--out", whole) == 0
    interrupt_after_tasks(monkeypatch, 2)
    assert cli("continual", FACE, *SMALL, "--learner", learner, "--device", device, "--out", stopped) == 130
    monkeypatch.undo()
    ck = torch.load(stopped / "checkpoint.pt", weights_only=True)
    assert len(ck["rows"]) == 2 and ck["config"]["device"] == device
    assert all(t.device.type == "cpu" for t in tensors(ck["learner"]))  # loads on any machine
    # a run started on another machine resumes here: --device may change on --resume
    record = json.loads((stopped / "run.json").read_text())
    record["config"]["device"] = "cuda" if device == "cpu" else "cpu"
    (stopped / "run.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert cli("continual", FACE, *SMALL, "--learner", learner, "--device", device, "--out", stopped, "--resume") == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (whole, stopped))
    assert a["R"] == b["R"] and a["final"] == b["final"] and len(a["R"]) == 4
    evals = [r for r in read_log(stopped) if r["event"] == "eval"]
    assert len(evals) == 4 and all(isinstance(v, float) or v is None for r in evals for k, v in r.items() if k not in ("event", "step", "task"))


def test_a_cpu_checkpoint_resumes_on_the_device_and_back(device, tmp_path, monkeypatch):
    """Task 1 on the CPU, task 2 on ``device`` from the CPU run's checkpoint, tasks 3–4 on the CPU again from the
    device's: the uninterrupted CPU run's result — exactly where ``device`` is the CPU, to float32 rounding on CUDA
    (the batches and replay draws come from CPU generators, so only the arithmetic differs)."""
    whole, moved = tmp_path / "whole", tmp_path / "moved"
    args = ("continual", FACE, *SMALL, "--learner", "er", "--lr", "3e-3", "--out")  # PSNR rises by 2–3 dB a task
    assert cli(*args, whole, "--device", "cpu") == 0
    for stage, (on, resume) in enumerate((("cpu", ()), (device, ("--resume",)))):
        interrupt_after_tasks(monkeypatch, 1)
        assert cli(*args, moved, "--device", on, *resume) == 130
        monkeypatch.undo()
        ck = torch.load(moved / "checkpoint.pt", weights_only=True)
        assert len(ck["rows"]) == stage + 1 and ck["config"]["device"] == on
    assert cli(*args, moved, "--device", "cpu", "--resume") == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (whole, moved))
    assert len(b["R"]) == 4 and json.loads((moved / "run.json").read_text())["config"]["device"] == "cpu"
    if device == "cpu":
        assert a["R"] == b["R"] and a["final"] == b["final"]
    else:
        assert np.allclose(np.array(a["R"], dtype=float), np.array(b["R"], dtype=float), rtol=0, atol=0.01), (a["R"], b["R"])  # dB


def tensors(state):
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict):
        for v in state.values():
            yield from tensors(v)
    elif isinstance(state, (list, tuple)):
        for v in state:
            yield from tensors(v)


def test_checkpoint_tensors_go_to_the_cpu_and_back_to_the_device_but_generator_states(tmp_path):
    state = {"model": {"w": torch.ones(2, 3)}, "buffer": {"x": torch.zeros(4, 2), "seen": 4}, "reptile": [torch.ones(1)],
             "generator": {"state": torch.Generator().get_state()}, "optimizer": None}  # fmt: skip
    moved = continual.to_device(state, torch.device("meta"))  # a device that is not the CPU, on every machine
    assert [t.device.type for t in tensors(moved)] == ["meta", "meta", "meta", "cpu"]  # the generator state stays on the CPU
    assert moved["buffer"]["seen"] == 4 and moved["optimizer"] is None and isinstance(moved["reptile"], list)
    back = continual.to_cpu(continual.to_device(state, torch.device("cpu")))
    assert all(t.device.type == "cpu" for t in tensors(back)) and torch.equal(back["model"]["w"], state["model"]["w"])
