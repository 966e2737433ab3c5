"""``--device`` on every command that computes, checked once (:func:`mclnf.runtime.check_device`): a device this
machine lacks is one line naming the option, exit status 2, nothing written. Every command runs on each test device
(the ``device`` fixture: ``cpu``; ``cuda`` where there is one) and resumes there exactly; a meta-train checkpoint
moves from the CPU to the device and back; runs recorded on a GPU are read on a machine without one.
``benchmarks/gpu_check.py`` runs this file with ``MCLNF_TEST_DEVICE=cuda``."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import DATA, cli, one_line
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mclnf.errors import MclnfError
from mclnf.runtime import check_device

COMMANDS = {
    "fit": ("fit", "camera"),
    "meta-train": ("meta-train", "lfw_subset"),
    "meta-test": ("meta-test", "runs/none", "lfw_subset"),
    "cl-bench": ("cl-bench", "mnist-permutations"),
    "render": ("render", "runs/none"),
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("device, message", [("cuda", "CUDA is not available"), ("cuda:99", "not available"), ("mps", "not supported"), ("gpu", "not a device name")])
def test_an_absent_device_is_one_line(command, device, message, tmp_path, capsys):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "out"
    assert cli(*COMMANDS[command], "--device", device, *(() if command == "render" else ("--out", out))) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith(f"mclnf {command}: error: --device {device}: ") and message in err
    assert not out.exists()


def test_the_check():
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(MclnfError, match=r"^--device cuda:x: not a device name \(cpu, cuda or cuda:N\)$"):
        check_device("cuda:x")
    if not torch.cuda.is_available():
        with pytest.raises(MclnfError, match=r"^--device cuda: CUDA is not available \(this torch \(.*\) is built without CUDA\); use --device cpu$"):
            check_device("cuda")


def same_tensors(a, b) -> bool:
    a, b = load_file(a), load_file(b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fit_runs_and_resumes_exactly_on_the_device(device, tmp_path):
    args = ("fit", "camera", "--resize", 16, "--width", 16, "--depth", 3, "--batch-size", 64, "--quiet", "--device", device)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert cli(*args, "--steps", 6, "--out", whole) == 0
    assert cli(*args, "--steps", 3, "--out", cut) == 0
    assert cli(*args, "--steps", 6, "--out", cut, "--resume") == 0
    assert same_tensors(whole / "field.safetensors", cut / "field.safetensors")
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (whole, cut))
    assert a["final"] == b["final"] and a["config"]["device"] == device and 5 < a["final"]["psnr"] < 60
    assert cli("render", whole, "--out", tmp_path / "r.png") == 0  # rendered on the CPU
    assert iio.imread(tmp_path / "r.png").shape == (16, 16)


def test_a_fit_moves_to_the_device_and_back_on_resume(device, tmp_path):
    """3 steps on the CPU, 3 more on ``device``, 3 more on the CPU: the fit of 9 uninterrupted CPU steps (exactly on the
    CPU; on a GPU up to its float32 rounding), and the run records the device it ended on."""
    args = ("fit", "camera", "--resize", 16, "--width", 16, "--depth", 3, "--batch-size", 64, "--quiet")
    whole, moved = tmp_path / "whole", tmp_path / "moved"
    assert cli(*args, "--steps", 9, "--out", whole) == 0
    for steps, where in ((3, "cpu"), (6, device), (9, "cpu")):
        assert cli(*args, "--steps", steps, "--device", where, "--out", moved, *(("--resume",) if steps > 3 else ())) == 0
    a, b = (load_file(d / "field.safetensors") for d in (whole, moved))
    tol = {} if device == "cpu" else {"rtol": 1e-4, "atol": 1e-5}
    for k in a:
        torch.testing.assert_close(b[k], a[k], **(tol or {"rtol": 0, "atol": 0}))
    assert json.loads((moved / "run.json").read_text())["config"]["device"] == "cpu"


def test_a_fit_recorded_on_a_gpu_loads_and_trains_on_any_machine(tmp_path):
    """``mclnf.load`` of a fit run recorded with ``--device cuda`` (its record edited, so the test runs on every machine)
    on a machine without that device: evaluated and trained further on the CPU, exactly as an uninterrupted run."""
    import mclnf

    args = dict(resize=16, width=16, depth=3, batch_size=64, quiet=True)
    whole = mclnf.fit("camera", steps=6, out=tmp_path / "whole", **args)
    run = tmp_path / "gpu"
    mclnf.fit("camera", steps=3, out=run, **args)
    record = json.loads((run / "run.json").read_text())
    record["config"]["device"] = "cuda:7"
    (run / "run.json").write_text(json.dumps(record))
    field = mclnf.load(run)
    assert field.config.device == ("cuda:7" if torch.cuda.device_count() > 7 else "cpu")
    if field.config.device == "cpu":
        assert field.train(3).metrics == whole.metrics and field.steps == 6


def test_nerf_fits_renders_and_exports_on_the_device(device, tmp_path):
    run = tmp_path / "lego"
    assert cli("fit", DATA / "nerf" / "lego_100.npz", "--resize", 16, "--samples", 8, "--width", 32, "--depth", 3, "--steps", 3, "--quiet",
               "--device", device, "--out", run) == 0  # fmt: skip
    assert np.isfinite(json.loads((run / "metrics.json").read_text())["final"]["psnr"])
    assert cli("render", run, "--camera-path", "orbit", "--frames", 2, "--resolution", 8, 8, "--device", device, "--out", tmp_path / "orbit.mp4") == 0
    assert (tmp_path / "orbit.mp4").stat().st_size > 0
    from mclnf.commands.export import grid_points, radiance_density
    from mclnf.runs import load_field

    field, layout = load_field(run)
    level = float(radiance_density(field, layout, grid_points(layout.center, layout.bound, 12)).median())  # a level the density surely crosses
    assert cli("export", run, "--mesh", "--resolution", 12, "--threshold", level, "--device", device) == 0
    assert (run / "mesh.ply").stat().st_size > 0


META = ("meta-train", "lfw_subset", "--method", "mcl-nf", "--meta-grad", "emcl", "--width", 16, "--depth", 3, "--inner-steps", 1, "--meta-batch", 2,
        "--resize", 12, "--checkpoint-every", 1, "--quiet")  # fmt: skip  # emcl: the importance is resumed too


def test_meta_train_resumes_exactly_and_meta_tests_on_the_device(device, tmp_path, capsys):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert cli(*META, "--outer-steps", 3, "--device", device, "--out", whole) == 0
    assert cli(*META, "--outer-steps", 1, "--device", device, "--out", cut) == 0
    assert cli(*META, "--outer-steps", 3, "--device", device, "--out", cut, "--resume") == 0
    assert same_tensors(whole / "init.safetensors", cut / "init.safetensors")
    a, b = (json.loads((d / "meta_train.json").read_text())["curve"] for d in (whole, cut))
    assert [c["loss"] for c in a] == [c["loss"] for c in b]
    capsys.readouterr()
    out = tmp_path / "test"
    assert cli("meta-test", whole, "lfw_subset", "--steps", 1, 2, "--signals", 1, "--baselines", "er", "--quiet", "--device", device, "--out", out) == 0
    psnr = {m["name"]: m["curve"]["2"]["psnr"] for m in json.loads((out / "metrics.json").read_text())["methods"]}
    assert len(psnr) == 2 and all(5 < v < 60 for v in psnr.values()), psnr


def test_a_meta_train_checkpoint_moves_to_the_device_and_back(device, tmp_path):
    """Outer step 1 on the CPU, step 2 on ``device`` from its checkpoint, step 3 on the CPU again: the uninterrupted CPU
    run's θ₀ — exactly where ``device`` is the CPU, to float32 rounding on CUDA."""
    whole, moved = tmp_path / "whole", tmp_path / "moved"
    assert cli(*META, "--outer-steps", 3, "--out", whole) == 0
    for step, on in enumerate(("cpu", device, "cpu"), 1):
        assert cli(*META, "--outer-steps", step, "--device", on, "--out", moved, *(("--resume",) if step > 1 else ())) == 0
        assert torch.load(moved / "checkpoint.pt", weights_only=True)["step"] == step
        assert json.loads((moved / "run.json").read_text())["config"]["device"] == on
    a, b = load_file(whole / "init.safetensors"), load_file(moved / "init.safetensors")
    assert a.keys() == b.keys()
    if device == "cpu":
        assert all(torch.equal(a[k], b[k]) for k in a)
    for k in a:  # Adam's steps move θ₀ by about --outer-lr 1e-4 each
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


def test_cl_bench_on_the_device(device, tmp_path):
    out = tmp_path / "bench"
    assert cli("cl-bench", "mnist-permutations", "--tasks", 2, "--seeds", 1, "--method", "emcl", "er", "--data", DATA / "mnist", "--glances", 1,
               "--quiet", "--device", device, "--out", out) == 0  # fmt: skip
    for method in ("emcl", "er"):
        record = json.loads((out / "runs" / f"{method}-seed0.json").read_text())
        assert 15 < record["acc"] <= 100 and len(record["R"]) == 2, (method, record["acc"])  # ACC in %; chance: 10 %


def test_runs_recorded_on_a_gpu_are_read_on_any_machine(tmp_path, capsys):
    """A θ₀ meta-trained and a continual run learned with ``--device cuda`` meta-test and render on the CPU: the
    recorded device is where they were trained, not a requirement on the reader (recorded as CUDA runs here by editing
    their records, so the test runs on every machine)."""
    meta = tmp_path / "meta"
    assert cli(*META, "--outer-steps", 1, "--out", meta) == 0
    init = meta / "init.safetensors"
    with safe_open(str(init), "pt") as f:
        described = json.loads(f.metadata()["mclnf"])
    described["config"]["device"] = "cuda"
    save_file(load_file(init), str(init), metadata={"mclnf": json.dumps(described, sort_keys=True)})
    assert cli("meta-test", meta, "lfw_subset", "--steps", 1, "--signals", 1, "--baselines", "cl", "--quiet", "--out", tmp_path / "test") == 0
    assert cli("render", meta, "--out", tmp_path / "theta0.png") == 0
    continual = tmp_path / "continual"
    assert cli("continual", "camera", "--resize", 16, "--width", 16, "--depth", 3, "--steps", 2, "--learner", "er", "--quiet", "--out", continual) == 0
    ck = torch.load(continual / "checkpoint.pt", weights_only=True)
    ck["config"]["device"] = "cuda"
    torch.save(ck, continual / "checkpoint.pt")
    capsys.readouterr()
    assert cli("render", continual, "--out", tmp_path / "continual.png") == 0, capsys.readouterr().err
    assert iio.imread(tmp_path / "continual.png").shape == (16, 16)
