"""``--precision`` (mixed precision, :class:`mclnf.runtime.Precision`): bf16 fits on the CPU, fp32 is the loop as it was
(no autocast at all), curvature steps stay float32, fp16's loss scaling skips an overflowing step, the option's
errors (exit 2, one line) and the precision in the run record across ``--resume``."""

import json

import pytest
import torch
from conftest import DATA, cli, one_line

from mclnf.optim import build_optimizer, curvature_step
from mclnf.optim.esgd import ESGD
from mclnf.optim.kfac import KFAC
from mclnf.runtime import Precision
from mclnf.sampling import EpochSampler
from mclnf.train import train

IMAGE = DATA / "kodak" / "kodim23.png"
TINY = ("--resize", 32, "--width", 64, "--depth", 3, "--batch-size", 1024, "--lr", "1e-3", "--quiet")  # 32 × 21 pixels, one batch


def _field_problem(seed=0):
    """A small sine field and a real image's pixels (kodim23 at 32 px): coordinates → colours."""
    from mclnf.config import FitConfig, load_configured_signal
    from mclnf.fields import Field, FieldConfig

    signal = load_configured_signal(FitConfig(signal=str(IMAGE), resize=32))
    torch.manual_seed(seed)
    return Field(FieldConfig(2, 3, width=32, depth=3)), signal.coords, signal.values


def test_bf16_fit_on_cpu_reaches_a_sane_psnr_and_records_its_precision(tmp_path):
    assert cli("fit", IMAGE, *TINY, "--steps", 300, "--precision", "fp32", "--out", tmp_path / "fp32") == 0
    assert cli("fit", IMAGE, *TINY, "--steps", 300, "--precision", "bf16", "--out", tmp_path / "bf16") == 0
    fp32, bf16 = (json.loads((tmp_path / p / "metrics.json").read_text()) for p in ("fp32", "bf16"))
    assert fp32["precision"] == "fp32" and bf16["precision"] == "bf16"
    assert json.loads((tmp_path / "bf16" / "run.json").read_text())["config"]["precision"] == "bf16"
    assert "precision: bf16" in (tmp_path / "bf16" / "config.yaml").read_text()  # --config repeats it
    # measured: fp32 52.6 dB, bf16 38.6 dB — bf16's 8-bit mantissa (relative rounding 2⁻⁹) bounds what a
    # nearly exact fit can reach; both are far above the 30 dB of a recognisable image
    assert bf16["final"]["psnr"] > 33 and fp32["final"]["psnr"] > 45
    assert bf16["final"]["psnr"] < fp32["final"]["psnr"]


def test_fp32_is_the_plain_float32_loop_bit_for_bit():
    """``precision=Precision("fp32")`` takes exactly the steps of the loop without it — and of the loop written out by
    hand (zero_grad, loss, backward, step) — with no autocast context: the parameters agree bit for bit."""
    results = []
    for how in ("none", "fp32", "by hand", "bf16"):
        field, x, y = _field_problem()
        opt = build_optimizer("adam", field, 1e-3)
        sampler = EpochSampler(x, y, 256, seed=0)
        autocast_seen = []

        def loss_fn(a, b):
            autocast_seen.append(torch.is_autocast_enabled("cpu"))
            return (field(a) - b).square().mean()

        if how == "by hand":
            for step in range(1, 21):
                opt.zero_grad(set_to_none=True)
                loss_fn(*sampler(step)).backward()
                opt.step()
        else:
            train(opt, loss_fn, sampler, 20, progress=False, precision=None if how == "none" else Precision(how))
        assert autocast_seen == [how == "bf16"] * 20
        results.append([p.detach().clone() for p in field.parameters()])
    none, fp32, by_hand, bf16 = results
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(none, fp32, by_hand))
    assert not all(torch.equal(a, b) for a, b in zip(fp32, bf16))  # bf16 did run in bfloat16
    assert all(p.dtype == torch.float32 for p in bf16)


def test_bf16_keeps_loss_gradients_and_optimizer_state_float32():
    field, x, y = _field_problem()
    opt = build_optimizer("adam", field, 1e-3)
    losses = []

    def loss_fn(a, b):
        pred = field(a)
        assert pred.dtype == torch.bfloat16  # the GEMMs ran in bf16
        loss = (pred - b).square().mean()
        losses.append(loss.dtype)
        return loss

    train(opt, loss_fn, EpochSampler(x, y, 256, seed=0), 3, progress=False, precision=Precision("bf16"))
    assert losses == [torch.float32] * 3
    assert all(p.grad is None and p.dtype == torch.float32 for p in field.parameters())
    assert all(v.dtype == torch.float32 for s in opt.state.values() for k, v in s.items() if k != "step")


@pytest.mark.parametrize("name", ["esgd", "kfac"])
def test_curvature_steps_run_in_float32(name):
    """The steps whose optimizer estimates curvature from the step's own passes (ESGD's HVP refreshes, K-FAC's factor
    refreshes) run without autocast; the others in bf16."""
    field, x, y = _field_problem()
    opt = KFAC(field, lr=0.05, update_every=3) if name == "kfac" else ESGD(field.parameters(), lr=0.05, warmup=2, update_every=5)
    expected, seen = [], []

    def loss_fn(a, b):
        expected.append(not curvature_step(opt))
        seen.append(torch.is_autocast_enabled("cpu"))
        return (field(a) - b).square().mean()

    train(opt, loss_fn, EpochSampler(x, y, 256, seed=0), 12, progress=False, precision=Precision("bf16"))
    assert seen == expected and True in seen and False in seen
    if name == "esgd":
        assert seen == [step not in (1, 2, 7, 12) for step in range(1, 13)]  # HVP refreshes: the warm-up's 2 steps, then every 5th
    if name == "kfac":
        assert seen == [step % 3 != 1 for step in range(1, 13)]  # refreshes at steps 1, 4, 7, 10
        assert all(s[k].dtype == torch.float32 for s in opt.state.values() for k in ("A", "G", "A_inv", "G_inv"))


def test_fp16_loss_scaling_skips_an_overflowing_step_and_halves_the_scale():
    """fp16's :class:`torch.amp.GradScaler` path (the CLI takes fp16 on CUDA only; torch runs it on the CPU too, slowly):
    the loss is scaled, the gradients unscaled before the update; a step whose scaled gradients overflow leaves the
    parameters as they were and halves the scale; the other steps learn."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    x = torch.randn(256, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    amp, sampler = Precision("fp16"), EpochSampler(x, y, 64, seed=0)
    blow_up = [False]

    def loss_fn(a, b):
        loss = (model(a).float() - b).square().mean()
        return loss * 1e20 if blow_up[0] else loss  # finite in float32; its scaled fp16 gradients are not

    def params():
        return [p.detach().clone() for p in model.parameters()]

    train(opt, loss_fn, sampler, 20, progress=False, precision=amp)
    before, scale = params(), amp.scaler.get_scale()
    blow_up[0] = True
    train(opt, loss_fn, sampler, 21, start_step=20, progress=False, precision=amp)
    assert all(torch.equal(a, b) for a, b in zip(before, params())) and amp.scaler.get_scale() == scale / 2
    blow_up[0] = False
    train(opt, loss_fn, sampler, 100, start_step=21, progress=False, precision=amp)
    assert not all(torch.equal(a, b) for a, b in zip(before, params())) and all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        assert (model(x) - y).square().mean() < 0.2 * y.square().mean()
    again = Precision("fp16")
    again.load_state_dict(amp.state_dict())
    assert again.scaler.get_scale() == amp.scaler.get_scale()


@pytest.mark.parametrize(
    "args, names",
    [
        (("fit", IMAGE, "--precision", "fp8"), "--precision"),
        (("fit", IMAGE, "--precision", "fp16"), "--precision fp16: not on --device cpu"),
        (("meta-train", "lfw_subset", "--precision", "fp16"), "--precision fp16: not for meta-train"),
        (("continual", IMAGE, "--precision", "half"), "--precision"),
    ],
)
def test_bad_precision_is_one_line_and_exit_2(args, names, tmp_path, capsys):
    assert cli(*args, "--out", tmp_path / "run") == 2
    line = one_line(capsys.readouterr().err)
    assert names in line
    assert not (tmp_path / "run").exists()


def test_precision_survives_resume_and_cannot_change(tmp_path, capsys):
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert cli("fit", IMAGE, *TINY, "--steps", 40, "--precision", "bf16", "--out", whole) == 0
    assert cli("fit", IMAGE, *TINY, "--steps", 20, "--precision", "bf16", "--out", part) == 0
    capsys.readouterr()
    assert cli("fit", IMAGE, *TINY, "--steps", 40, "--precision", "fp32", "--resume", "--out", part) == 2
    assert "--resume: " in (err := one_line(capsys.readouterr().err)) and "--precision bf16, not fp32" in err
    assert cli("fit", IMAGE, *TINY, "--steps", 40, "--resume", "--out", part) == 0  # no --precision: the run's
    record = json.loads((part / "metrics.json").read_text())
    assert record["precision"] == "bf16" and json.loads((part / "run.json").read_text())["config"]["precision"] == "bf16"
    assert (part / "field.safetensors").read_bytes() == (whole / "field.safetensors").read_bytes()  # bit-exact with the uninterrupted run


def test_fit_default_precision_is_the_measured_one_and_a_run_from_before_resumes_in_fp32(tmp_path):
    """Without --precision: bf16 for a sine image with adam where bf16 is native (this CPU, if it has AVX512-BF16/AMX),
    fp32 for the fields bf16 costs more than 0.3 dB (gaussian, audio); a run recorded without a precision resumes in fp32."""
    from mclnf.runtime import native_bf16

    assert cli("fit", IMAGE, *TINY, "--steps", 4, "--out", tmp_path / "sine") == 0
    assert cli("fit", IMAGE, *TINY, "--steps", 4, "--activation", "gaussian", "--out", tmp_path / "gaussian") == 0
    assert cli("fit", DATA / "librispeech_clips" / "024.flac", "--duration", 0.1, "--width", 16, "--depth", 3, "--steps", 4, "--quiet", "--out", tmp_path / "audio") == 0
    precision = {k: json.loads((tmp_path / k / "metrics.json").read_text())["precision"] for k in ("sine", "gaussian", "audio")}
    assert precision == {"sine": "bf16" if native_bf16("cpu") else "fp32", "gaussian": "fp32", "audio": "fp32"}
    old = tmp_path / "gaussian"  # as a run written before --precision existed
    record = json.loads((old / "run.json").read_text())
    del record["config"]["precision"]
    (old / "run.json").write_text(json.dumps(record))
    assert cli("fit", IMAGE, *TINY, "--steps", 8, "--activation", "gaussian", "--resume", "--out", old) == 0
    assert json.loads((old / "metrics.json").read_text())["precision"] == "fp32"


def test_fit_default_precision_on_a_gpu_is_fp32():
    """The defaults' device rule (no GPU needed): bf16 for a sine image only on a CPU that has native bf16; on CUDA
    fp32, where bf16 steps at fit's batch sizes measured slower (docs/gpu.md)."""
    from types import SimpleNamespace

    from mclnf.config import default_precision
    from mclnf.runtime import native_bf16

    sine = dict(activation="sine", optimizer="adam", encoding="none")
    assert default_precision("image", SimpleNamespace(**sine, device="cuda:0")) == "fp32"
    assert default_precision("image", SimpleNamespace(**sine, device="cpu")) == ("bf16" if native_bf16("cpu") else "fp32")
    assert default_precision("image", SimpleNamespace(**{**sine, "encoding": "hashgrid"}, device="cpu")) == "fp32"


def test_continual_meta_train_and_meta_test_take_bf16(tmp_path):
    """The other three commands run their training steps under bf16 and record it; the loss after adaptation stays
    near fp32's (the meta-objective under autocast: inner loop and outer loss)."""
    assert cli("continual", IMAGE, "--resize", 24, "--width", 16, "--depth", 3, "--steps", 10, "--tasks", 2, "--learner", "ewc", "--precision", "bf16",
               "--quiet", "--out", tmp_path / "c") == 0  # fmt: skip
    record = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert record["precision"] == "bf16" and len(record["R"]) == 2
    meta = ("--method", "mcl-nf", "--width", 16, "--depth", 3, "--inner-steps", 1, "--meta-batch", 2, "--outer-steps", 3, "--resize", 12, "--quiet")
    losses = {}
    for p in ("fp32", "bf16"):
        assert cli("meta-train", "lfw_subset", *meta, "--precision", p, "--out", tmp_path / p) == 0
        losses[p] = json.loads((tmp_path / p / "meta_train.json").read_text())
    assert losses["bf16"]["precision"] == "bf16"
    a, b = losses["fp32"]["final_loss"], losses["bf16"]["final_loss"]
    assert a != b and abs(a - b) < 0.02 * a
    assert cli("meta-test", tmp_path / "bf16", "lfw_subset", "--steps", 2, "--signals", 1, "--baselines", "cl", "--precision", "bf16", "--quiet",
               "--out", tmp_path / "t") == 0  # fmt: skip
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["precision"] == "bf16"
