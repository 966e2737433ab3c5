"""The logs of every command that trains (:mod:`mclnf.tracking`): ``log.jsonl`` always, TensorBoard on request,
what they hold, that a resumed run continues them exactly, ``--log-every`` and ``--eval-every``."""

import json

import pytest
import torch
from conftest import DATA, cli

import mclnf.commands.continual
import mclnf.commands.fit
import mclnf.commands.meta_train
import mclnf.train
from mclnf.sampling import EpochSampler
from mclnf.signals import load_signal
from mclnf.tracking import Tracker, default_log_every, previews, read_log
from mclnf.train import evaluation_steps, log_spaced_steps, train

SMALL = ("--width", "16", "--depth", "3", "--quiet")
FIT = ("fit", "camera", "--resize", "16", *SMALL)


def events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "audio": 0})
    acc.Reload()
    return acc


def same_log(a: list[dict], b: list[dict]) -> bool:
    """Two logs alike but for the training seconds (a resumed run's clock differs)."""
    strip = lambda log: [{k: v for k, v in r.items() if k != "time_s"} for r in log]  # noqa: E731
    return strip(a) == strip(b)


def interrupt_at_call(monkeypatch, module, name, n):
    """Make ``module.name`` raise KeyboardInterrupt on its ``n``-th call (counting from 1)."""
    real, calls = getattr(module, name), []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


# --------------------------------------------------------------------------- the rules


def test_default_log_every_thins_the_log_by_decade():
    assert [default_log_every(s) for s in (1, 999, 1000, 9999, 10_000, 123_456)] == [1, 1, 10, 10, 100, 1000]
    logged = [s for s in range(1, 20_001) if Tracker([]).logs(s)]
    assert logged[:999] == list(range(1, 1000)) and 1001 not in logged and 1010 in logged and 10_050 not in logged
    assert len(logged) == 999 + 900 + 101  # ≈ 900 lines a decade: 1 … 999, 1000, 1010 … 9990, 10000, 10100 … 20000
    assert [s for s in range(1, 31) if Tracker([], log_every=7).logs(s)] == [7, 14, 21, 28]
    assert Tracker([], log_every=5).at(10).logs(5) and not Tracker([], log_every=5).at(10).logs(4)  # a continual task's steps count over the stream


def test_evaluation_steps():
    assert evaluation_steps(20) == log_spaced_steps(20) == [1, 2, 4, 8, 16, 20]
    assert evaluation_steps(20, 6) == [6, 12, 18, 20]
    assert evaluation_steps(18, 6) == [6, 12, 18]
    assert evaluation_steps(4, 10) == [4]


def test_progress_bar_shows_the_loss_of_every_step(monkeypatch):
    shown = []

    class Bar:
        def __init__(self, *args, **kwargs):
            pass

        def update(self):
            pass

        def set_postfix(self, refresh=True, **values):
            shown.append(values)

        def close(self):
            pass

    monkeypatch.setattr(mclnf.train, "tqdm", Bar)
    torch.manual_seed(0)
    model, x = torch.nn.Linear(2, 1), torch.randn(64, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    loss_fn = lambda a, b: (lambda v: losses.append(v.item()) or v)((model(a) - b).square().mean())  # noqa: E731
    train(opt, loss_fn, EpochSampler(x, x.sum(1, keepdim=True), 8, 0), 12, eval_steps=(4, 12), on_eval=lambda s, loss, t: {"psnr": float(s)}, progress=True)
    assert [s["loss"] for s in shown] == [f"{v:.3g}" for v in losses]  # every step, not only at evaluations
    assert "psnr" not in shown[2] and shown[4]["psnr"] == "4" and shown[11]["psnr"] == "4"  # an evaluation's metric stays until the next


# --------------------------------------------------------------------------- fit


def test_fit_log_holds_every_step_and_every_evaluation(tmp_path):
    out = tmp_path / "run"
    assert cli(*FIT, "--steps", 30, "--out", out) == 0
    log, record = read_log(out), json.loads((out / "metrics.json").read_text())
    train_lines = [r for r in log if r["event"] == "train"]
    assert [r["step"] for r in train_lines] == list(range(1, 31))
    assert all(r["lr"] == pytest.approx(1e-4) and r["grad_norm"] > 0 and r["update_norm"] > 0 and r["loss"] > 0 for r in train_lines)
    times = [r["time_s"] for r in train_lines]
    assert times == sorted(times) and times[-1] == pytest.approx(record["wall_time_s"])
    evals = [r for r in log if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [c["step"] for c in record["curve"]] == [1, 2, 4, 8, 16, 30]
    assert [r["psnr"] for r in evals] == [c["psnr"] for c in record["curve"]]
    assert [r["loss"] for r in train_lines if r["step"] in (1, 2, 4, 8, 16, 30)] == [c["loss"] for c in record["curve"]]
    assert "log.jsonl" in json.loads((out / "run.json").read_text())["files"]


def test_log_every_and_eval_every(tmp_path):
    out = tmp_path / "run"
    assert cli(*FIT, "--steps", 20, "--log-every", 5, "--eval-every", 6, "--out", out) == 0
    log = read_log(out)
    assert [r["step"] for r in log if r["event"] == "train"] == [5, 10, 15, 20]
    assert [r["step"] for r in log if r["event"] == "eval"] == [6, 12, 18, 20]
    record = json.loads((out / "metrics.json").read_text())
    assert [c["step"] for c in record["curve"]] == [6, 12, 18, 20]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 20
    assert cli(*FIT, "--steps", 20, "--eval-every", 0, "--out", tmp_path / "bad") == 2
    assert cli(*FIT, "--steps", 20, "--log-every", -1, "--out", tmp_path / "bad") == 2


def test_a_resumed_fit_continues_its_log_and_tensorboard_exactly(tmp_path, monkeypatch):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = (*FIT, "--steps", 40, "--eval-every", 8, "--tensorboard")
    assert cli(*args, "--out", whole) == 0
    interrupt_at_call(monkeypatch, mclnf.commands.fit, "evaluate", 3)  # at step 24: the checkpoint is step 16's
    assert cli(*args, "--out", cut) == 130
    assert max(r["step"] for r in read_log(cut)) == 24  # logged on past the checkpoint …
    monkeypatch.undo()
    assert cli(*args, "--out", cut, "--resume") == 0
    a, b = read_log(whole), read_log(cut)
    assert [(r["event"], r["step"]) for r in b] == [(r["event"], r["step"]) for r in a]  # … and those lines were dropped: no step twice
    assert len(b) == 40 + 5 and same_log(a, b)  # 40 training steps, evaluations at 8, 16, 24, 32, 40: the same numbers
    tb_whole, tb_cut = events(whole / "tensorboard"), events(cut / "tensorboard")
    assert len(list((cut / "tensorboard").iterdir())) == 2  # one event file per session
    for tag in ("train/loss", "train/update_norm", "eval/psnr"):
        steps = [e.step for e in tb_cut.Scalars(tag)]
        assert steps == [e.step for e in tb_whole.Scalars(tag)], tag  # the interrupted session's events after step 16 are purged
        assert [e.value for e in tb_cut.Scalars(tag)] == [e.value for e in tb_whole.Scalars(tag)], tag
    assert [e.step for e in tb_cut.Images("reconstruction")] == [8, 16, 24, 32, 40]
    files = set(json.loads((cut / "run.json").read_text())["files"])
    assert {f"tensorboard/{p.name}" for p in (cut / "tensorboard").iterdir()} <= files


def test_tensorboard_holds_scalars_and_images(tmp_path):
    out = tmp_path / "run"
    assert cli(*FIT, "--steps", 8, "--tensorboard", "--out", out) == 0
    acc = events(out / "tensorboard")
    tags = acc.Tags()
    assert {"train/loss", "train/lr", "train/grad_norm", "train/update_norm", "eval/psnr", "eval/ssim"} <= set(tags["scalars"])
    assert {"reconstruction", "truth"} <= set(tags["images"])
    curve = json.loads((out / "metrics.json").read_text())["curve"]
    assert [e.step for e in acc.Scalars("eval/psnr")] == [c["step"] for c in curve] == [1, 2, 4, 8]
    assert [e.value for e in acc.Scalars("eval/psnr")] == pytest.approx([c["psnr"] for c in curve], rel=1e-6)
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 9))
    image = acc.Images("reconstruction")[-1]
    assert (image.height, image.width) == (16, 16) and [e.step for e in acc.Images("truth")] == [1]


def test_tensorboard_takes_audio(tmp_path):
    out = tmp_path / "run"
    assert cli("fit", DATA / "librispeech/198-209-0000.wav", "--duration", "0.1", *SMALL, "--steps", 4, "--tensorboard", "--out", out) == 0
    acc = events(out / "tensorboard")
    assert {"reconstruction", "truth"} <= set(acc.Tags()["audio"])
    assert [e.step for e in acc.Audio("reconstruction")] == [1, 2, 4] and acc.Audio("reconstruction")[0].sample_rate == 16000


def test_overwrite_removes_the_logs(tmp_path):
    out = tmp_path / "run"
    assert cli(*FIT, "--steps", 4, "--tensorboard", "--out", out) == 0
    assert cli(*FIT, "--steps", 4, "--out", out, "--overwrite") == 0
    assert not (out / "tensorboard").exists() and len(read_log(out)) == 4 + 3


def test_previews_of_every_kind():
    image = load_signal("camera", resize=16)
    (m,) = previews(image.layout, image.values, "truth")
    assert m.data.shape == (16, 16, 1) and m.sample_rate is None
    video = load_signal(DATA / "video/bikes.mp4", frames=5, resize=16)
    (m,) = previews(video.layout, video.values, "truth")
    H, W = video.layout.grid_shape[1:]
    assert m.data.shape == (H, 3 * W, 3)  # first, middle and last frames
    assert (m.data[:, :W] == video.layout.to_array(video.values)[0].numpy()).all()
    audio = load_signal(DATA / "librispeech/198-209-0000.wav", duration=0.05)
    (m,) = previews(audio.layout, audio.values, "truth")
    assert m.sample_rate == audio.layout.sample_rate and m.data.shape == (len(audio.values),)
    scene = load_signal(DATA / "nerf/lego_100.npz", resize=8)
    (m,) = previews(scene.layout, scene.eval_values, "truth")
    assert m.data.shape == (8, 4 * 8, 3)
    mesh = load_signal(DATA / "meshes/bunny_cr.obj", points=1000, eval_points=1000)
    assert previews(mesh.layout, torch.zeros(len(mesh.eval_values), 1), "truth") == []


# --------------------------------------------------------------------------- continual and meta-train


def test_continual_logs_the_stream_and_resumes_it_exactly(tmp_path, monkeypatch):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = ("continual", "camera", "--resize", "16", *SMALL, "--tasks", 2, "--steps", 10, "--eval-every", 4, "--learner", "er")
    assert cli(*args, "--out", whole) == 0
    log = read_log(whole)
    assert [r["step"] for r in log if r["event"] == "train"] == list(range(1, 21))  # steps over the stream
    assert [(r["step"], r["task"]) for r in log if r["event"] == "eval"] == [(4, 1), (8, 1), (10, 1), (14, 2), (18, 2), (20, 2)]
    record = json.loads((whole / "metrics.json").read_text())
    after_tasks = [r for r in log if r["event"] == "eval" and r["step"] in (10, 20)]
    assert [r["psnr"] for r in after_tasks] == record["whole_after_task"]
    assert [[r["task1_psnr"], r["task2_psnr"]] for r in after_tasks] == record["R"]
    interrupt_at_call(monkeypatch, mclnf.commands.continual, "evaluate_stream", 4)  # at step 4 of task 2: the checkpoint is task 1's
    assert cli(*args, "--out", cut) == 130
    assert max(r["step"] for r in read_log(cut)) == 14
    monkeypatch.undo()
    assert cli(*args, "--out", cut, "--resume") == 0
    assert same_log(read_log(cut), log) and json.loads((cut / "metrics.json").read_text())["R"] == record["R"]


def test_continual_all_logs_each_learner_with_tensorboard(tmp_path):
    out = tmp_path / "run"
    assert cli("continual", "camera", "--resize", "16", *SMALL, "--tasks", 2, "--steps", 3, "--learner", "all", "--tensorboard", "--out", out) == 0
    for learner in ("ol", "cl", "modular"):
        assert [r["step"] for r in read_log(out / learner) if r["event"] == "eval"] == [3, 6]
        assert "eval/task2_psnr" in events(out / learner / "tensorboard").Tags()["scalars"]


def test_meta_train_logs_every_outer_step_and_resumes_exactly(tmp_path, monkeypatch):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = ("meta-train", "lfw_subset", "--method", "mcl-nf", "--width", "16", "--depth", "3", "--inner-steps", "1", "--meta-batch", "2",
            "--resize", "12", "--outer-steps", 6, "--checkpoint-every", 2, "--quiet", "--tensorboard")  # fmt: skip
    assert cli(*args, "--out", whole) == 0
    log = read_log(whole)
    curve = json.loads((whole / "meta_train.json").read_text())["curve"]
    assert [r["step"] for r in log] == list(range(1, 7)) and [r["loss"] for r in log] == [c["loss"] for c in curve]
    assert all(r["event"] == "train" and r["grad_norm"] == c["grad_norm"] and r["update_norm"] > 0 and r["lr"] == 1e-4 for r, c in zip(log, curve))
    assert {"train/loss", "train/grad_norm", "train/update_norm"} <= set(events(whole / "tensorboard").Tags()["scalars"])
    interrupt_at_call(monkeypatch, mclnf.commands.meta_train, "meta_step", 6)  # at step 6: the checkpoint is step 4's
    assert cli(*args, "--out", cut) == 130
    assert [r["step"] for r in read_log(cut)] == [1, 2, 3, 4, 5]
    monkeypatch.undo()
    assert cli(*args, "--out", cut, "--resume") == 0
    assert same_log(read_log(cut), log)
    assert [e.step for e in events(cut / "tensorboard").Scalars("train/loss")] == list(range(1, 7))
