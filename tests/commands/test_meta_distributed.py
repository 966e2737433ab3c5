"""Meta-training split over processes is the same meta-training: for every meta-gradient rule, N processes with B/N
signals each compute the meta-gradient one process computes on all B (float64, a tiny field) — the sum the processes'
all-reduce relies on, checked in one process, then :func:`mclnf.train.meta_step` itself under ``torchrun`` with two
gloo processes — and ``mclnf meta-train`` itself under ``torchrun``: two processes reach one process's θ₀, and
``--resume`` continues exactly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import cli
from meta_step_worker import METHODS, RULES, STEPS, make, problem, run
from safetensors.torch import load_file

from mclnf.learners import META_METHODS
from mclnf.runs import load_init

WORKER = Path(__file__).with_name("meta_step_worker.py")


def torchrun(*args, processes: int = 2) -> None:
    """``torchrun --standalone --nproc_per_node=PROCESSES ARGS`` (one thread a process); fails the test with its stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={processes}", *map(str, args)]
    r = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.fixture(scope="module")
def faces():
    return problem()


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("method", list(META_METHODS))
def test_shards_of_a_meta_batch_add_up_to_the_whole(faces, method, rule):
    """The meta-objective of each process's slice, divided by the global task count, has gradients, losses and Taylor
    importances that add up to the whole meta-batch's: what summing them over processes (all-reduce) needs."""
    layout, values = faces
    m, theta = make(layout, method, rule)
    h = {k: torch.rand_like(theta[k], generator=torch.Generator().manual_seed(1)) + 0.5 for k in m.fast}  # emcl's pull: not uniform
    count = values.shape[0] * (m.opts.tasks if m.modular else 1)

    def parts(v):
        obj, loss, omega = m.objective(theta, v, count, h if rule == "emcl" else None)
        return torch.autograd.grad(obj, list(theta.values()), allow_unused=True), loss, omega

    whole = parts(values)
    for shards in ((values[:2], values[2:]), (values[:1], values[1:3], values[3:])):
        got = [parts(v) for v in shards]
        for k, g in enumerate(whole[0]):
            if g is None:
                assert all(p[0][k] is None for p in got)
                continue
            assert float(g.abs().max()) > 0
            torch.testing.assert_close(sum(p[0][k] for p in got), g, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(sum(p[1] for p in got), whole[1], rtol=1e-12, atol=0)
        for k in m.fast:
            torch.testing.assert_close(sum(p[2][k] for p in got), whole[2][k], rtol=1e-10, atol=1e-14)


def test_two_processes_take_the_meta_steps_of_one(faces, tmp_path):
    """``meta_step`` in two gloo processes on half a meta-batch each: the meta-gradient, loss, norm, θ₀ and importance of
    one process on the whole, for every rule; and the processes agree bit for bit."""
    torchrun(WORKER, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    layout, values = faces
    for method in METHODS:
        for rule in RULES:
            key = f"{method}/{rule}"
            one, two = run(layout, values, method, rule, 0, len(values)), ranks[0][key]
            assert len(two["grads"]) == STEPS
            for a, b in zip(one["grads"], two["grads"]):
                assert a.keys() == b.keys()
                for k in a:
                    torch.testing.assert_close(b[k], a[k], rtol=1e-10, atol=1e-14, msg=lambda s: f"{key} meta-gradient of {k}: {s}")  # noqa: B023
            assert two["loss"] == pytest.approx(one["loss"], rel=1e-12) and two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-10), key
            for k in one["theta"]:
                torch.testing.assert_close(two["theta"][k], one["theta"][k], rtol=1e-9, atol=1e-12)
            if rule == "emcl":
                for a, b in zip(one["h"], two["h"]):
                    torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-14)
            other = ranks[1][key]
            assert all(torch.equal(other["theta"][k], two["theta"][k]) for k in one["theta"]) and other["loss"] == two["loss"]


def test_two_processes_match_one_and_resume_exactly(tmp_path):
    """``mclnf meta-train`` (emcl: the importance is all-reduced and checkpointed too) in two processes reaches one
    process's θ₀ (float32: to rounding); two processes stopped after outer step 1 and resumed to step 3 reach the
    uninterrupted two-process run's θ₀ and curve bit for bit."""
    args = ("meta-train", "lfw_subset", "--method", "mcl-nf", "--meta-grad", "emcl", "--width", 16, "--depth", 3, "--inner-steps", 2, "--meta-batch", 4,
            "--resize", 12, "--checkpoint-every", 1, "--quiet")  # fmt: skip
    one, two, cut = tmp_path / "one", tmp_path / "two", tmp_path / "cut"
    assert cli(*args, "--outer-steps", 3, "--out", one) == 0
    torchrun("-m", "mclnf", *args, "--outer-steps", 3, "--out", two)
    a, b = load_file(one / "init.safetensors"), load_file(two / "init.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    meta = load_init(one)
    start = meta.method.init_params(meta.config.seed)  # θ₀ before the outer steps
    assert all(float((a[k] - start[k]).abs().max()) > 5e-5 for k in a)  # every parameter moved (3 Adam steps of --outer-lr 1e-4)
    r1, r2 = (json.loads((d / "meta_train.json").read_text()) for d in (one, two))
    assert r2["processes"] == 2 and [c["loss"] for c in r2["curve"]] == pytest.approx([c["loss"] for c in r1["curve"]], rel=1e-5)

    torchrun("-m", "mclnf", *args, "--outer-steps", 1, "--out", cut)
    assert torch.load(cut / "checkpoint.pt", weights_only=True)["step"] == 1
    torchrun("-m", "mclnf", *args, "--outer-steps", 3, "--out", cut, "--resume")
    c = load_file(cut / "init.safetensors")
    assert c.keys() == b.keys() and all(torch.equal(c[k], b[k]) for k in b)
    rc = json.loads((cut / "meta_train.json").read_text())
    assert rc["processes"] == 2 and [(x["step"], x["loss"], x["grad_norm"]) for x in rc["curve"]] == [(x["step"], x["loss"], x["grad_norm"]) for x in r2["curve"]]
