"""Learners on real task streams: modular forgets nothing by construction, fine-tuning forgets,
replay forgets less, every learner runs on every kind through the API, resume is bit-exact."""

import pytest
import torch
from conftest import DATA

import mclnf.commands.continual
from mclnf.commands.continual import continual
from mclnf.config import ContinualConfig
from mclnf.eval.metrics import backward_transfer
from mclnf.fields import FieldConfig
from mclnf.learners import CONTINUAL_LEARNERS, LearnerOptions
from mclnf.signals.image import load_image
from mclnf.signals.tasks import split_signal
from mclnf.train import learn_task

FACE = DATA / "celeba_align" / "000001.jpg"


def stream_config(tmp_path, learner, **kw):
    base = dict(signal=str(FACE), crop=(178, 178), resize=48, out=tmp_path / learner, learner=learner, steps=150,
                width=64, depth=3, lr=1e-3, progress=False)  # fmt: skip
    return ContinualConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def face_runs(tmp_path_factory):
    """cl, er and modular on the same 4-strip stream of a real 48×48 face."""
    tmp = tmp_path_factory.mktemp("face")
    return {name: continual(stream_config(tmp, name))[0] for name in ("cl", "er", "modular")}


def test_modular_forgets_nothing(face_runs):
    r = face_runs["modular"]
    R = r["R"]
    for i in range(4):
        for j in range(i + 1):
            assert R[i][j] == R[j][j], f"task {j} changed while learning task {i}"  # bit-exact, not approximately
    assert r["bwt"] == 0.0
    assert r["params"] == 4 * (2 * 32 + 32 + 32 * 32 + 32 + 32 * 3 + 3)  # four modules of width 64/√4 = 32


def test_fine_tuning_forgets_and_replay_forgets_less(face_runs):
    cl, er = face_runs["cl"], face_runs["er"]
    assert cl["bwt"] < -10.0, cl["R"]  # earlier strips lose > 10 dB on average (measured: −25 dB)
    assert er["bwt"] > cl["bwt"] + 10.0, (er["R"], cl["R"])  # (measured: −1.9 dB)
    assert er["final"]["psnr"] > cl["final"]["psnr"] + 10.0
    for r in (cl, er):  # R's diagonal: each strip was learned when it was current
        assert all(r["R"][j][j] > 25.0 for j in range(4)), r["R"]


def test_backward_transfer_definition():
    R = [[30.0, 5.0, 1.0], [20.0, 31.0, 2.0], [10.0, 25.0, 32.0]]
    assert backward_transfer(R) == pytest.approx(((10 - 30) + (25 - 31)) / 2)
    assert backward_transfer([[30.0]]) is None


def test_resume_after_an_interrupted_task_is_bit_exact(tmp_path, monkeypatch):
    whole = continual(stream_config(tmp_path, "ewc", steps=40, out=tmp_path / "whole"))[0]

    def interrupted(learner, task, steps, progress=True, **kw):
        if task.index == 2:
            raise KeyboardInterrupt
        return learn_task(learner, task, steps, progress=progress, **kw)

    monkeypatch.setattr(mclnf.commands.continual, "learn_task", interrupted)
    with pytest.raises(KeyboardInterrupt):
        continual(stream_config(tmp_path, "ewc", steps=40, out=tmp_path / "cut"))
    monkeypatch.setattr(mclnf.commands.continual, "learn_task", learn_task)
    resumed = continual(stream_config(tmp_path, "ewc", steps=40, out=tmp_path / "cut", resume=True))[0]
    assert resumed["R"] == whole["R"] and resumed["R"][0] == whole["R"][0]


@pytest.mark.parametrize("source,options,metrics", [
    (DATA / "video" / "bikes.mp4", dict(frames=8, resize=16), {"psnr", "ssim"}),
    (DATA / "librispeech" / "198-209-0000.wav", dict(duration=0.5), {"psnr", "pesq"}),
    (DATA / "meshes" / "bunny_cr.obj", dict(points=4000, eval_points=2000, resolution=16), {"iou", "accuracy"}),
])  # fmt: skip
def test_every_learner_on_every_kind(tmp_path, source, options, metrics):
    """Each learner on a 4-task stream: R is 4×4 with the kind's metrics; modular keeps every task exactly."""
    for name in CONTINUAL_LEARNERS:
        cfg = ContinualConfig(signal=str(source), out=tmp_path / name, learner=name, steps=6, width=16, depth=3, batch_size=128,
                              progress=False, **options)  # fmt: skip
        r = continual(cfg)[0]
        assert len(r["R"]) == 4 and all(len(row) == 4 for row in r["R"])
        assert set(r["final"]) == metrics and set(r["rows"][-1]["tasks"][0]) == metrics
        if name == "modular":
            assert all(r["R"][i][j] == r["R"][j][j] for i in range(4) for j in range(i + 1))
        for i, row in enumerate(r["rows"]):  # a reconstruction after every task (a mesh only once there is a surface)
            want = f"after_task{i + 1}{source.suffix if source.suffix != '.obj' else '.ply'}"
            assert row["reconstruction"] == want and (tmp_path / name / want).is_file() or source.suffix == ".obj" and row["reconstruction"] is None


def test_modular_routes_k_modules_independent_of_tasks():
    """K = 2 modules for 4 strips: each module owns two strips; learning strip 3 leaves module 0 bit-exact."""
    s = load_image(FACE, crop=(178, 178), resize=32)
    tasks = split_signal(s, "patches", 4)
    learner = CONTINUAL_LEARNERS["modular"].for_signal(s, tasks, FieldConfig(2, 3, width=32, depth=3), LearnerOptions(modules=2, batch_size=64))
    assert learner.config.width == 23  # 32 / √2
    learn_task(learner, tasks[0], 5, progress=False)
    assert learner.model.num_modules == 1
    module0 = learner.model.module(0).state_dict()
    learn_task(learner, tasks[2], 5, progress=False)  # strip 3 lies in module 1's half
    assert learner.model.num_modules == 2
    for k, v in learner.model.module(0).state_dict().items():
        assert torch.equal(v, module0[k])
    learn_task(learner, tasks[1], 5, progress=False)  # strip 2 is module 0's again: it moves
    assert not torch.equal(learner.model.module(0).state_dict()["layers.0.weight"], module0["layers.0.weight"])


def test_resolution_stream_with_modules_by_pixel_parity(tmp_path):
    r = continual(stream_config(tmp_path, "modular", split="resolution", steps=30))[0]
    assert r["bwt"] == 0.0 and len(r["R"]) == 4
