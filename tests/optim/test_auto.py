"""``--optimizer auto``: the rule (Adam, the safe default, but for the documented exceptions) is what the docstring
and docs/preconditioners.md say, and the guard restarts a blown-up choice with Adam — the result of a plain Adam run."""

import json
import re
from pathlib import Path

import pytest
from conftest import cli, one_line

from mclnf.config import FitConfig, resolve
from mclnf.fields import ACTIVATIONS
from mclnf.optim import auto
from mclnf.optim.auto import EXCEPTIONS, GUARD_FACTOR, GUARD_STEPS, SAFE, BlewUp, Guard, choose_optimizer
from mclnf.tracking import read_log

KINDS = ("image", "audio", "video", "occupancy", "radiance")
DOC = Path(__file__).resolve().parents[2] / "docs" / "preconditioners.md"
SMALL = ("--resize", 16, "--width", 32, "--depth", 3, "--quiet")


# ---- the rule ------------------------------------------------------------------------------------
def exception_lines(text: str) -> dict[tuple[str, str], tuple[str, float]]:
    """The exceptions a text lists, as lines ``- exception: KIND × ACTIVATION → OPTIMIZER LR``."""
    return {(k, a): (o, float(lr)) for k, a, o, lr in re.findall(r"exception: (\w+) × ([\w-]+) → ([\w-]+) ([\d.e-]+)", text)}


def test_the_rule_is_adam_everywhere_but_the_documented_exceptions():
    for kind in KINDS:
        for activation in ACTIVATIONS:
            name, lr, reason = choose_optimizer(kind, activation)
            if (kind, activation) in EXCEPTIONS:
                assert (name, lr, reason) == EXCEPTIONS[kind, activation]
            else:
                assert (name, lr) == (SAFE, None) and "safe default" in reason
    assert all(name == SAFE for name, _, _ in EXCEPTIONS.values())  # no curvature-aware optimizer has held-out evidence
    table = {key: (name, lr) for key, (name, lr, _) in EXCEPTIONS.items()}
    assert exception_lines(auto.__doc__) == table  # the docstring states the table
    assert exception_lines(DOC.read_text()) == table  # and so does the study's page


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_auto_resolves_to_plain_adam_but_for_an_exception(activation):
    chosen = resolve(FitConfig(signal="camera", optimizer="auto", activation=activation), "image")
    plain = resolve(FitConfig(signal="camera", optimizer="adam", activation=activation), "image")
    if ("image", activation) in EXCEPTIONS:
        assert (chosen.optimizer, chosen.lr) == EXCEPTIONS["image", activation][:2]
    else:
        assert chosen == plain
    scene = resolve(FitConfig(signal="scene", optimizer="auto"), "radiance")
    assert (scene.optimizer, scene.lr) == (SAFE, 1e-3)  # Adam's rate for scenes, as --optimizer adam


# ---- the guard -----------------------------------------------------------------------------------
def test_the_guard_watches_the_first_steps_against_the_first_loss():
    guard = Guard("esgd")
    guard(1, 0.15)
    guard(2, 0.15 * GUARD_FACTOR * 0.99)  # ESGD's first steps raise the loss a few times: not a blow-up
    with pytest.raises(BlewUp, match=r"^esgd blew up at step 2 \(loss 0\.15 → 2381\)$") as e:
        guard(2, 2381.0)
    assert e.value.to_dict() == {"optimizer": "esgd", "step": 2, "first_loss": 0.15, "loss": 2381.0, "what": "loss"}
    with pytest.raises(BlewUp, match=r"step 7 \(loss 0\.15 → nan\)"):
        guard(7, float("nan"))
    guard(GUARD_STEPS + 1, 1e9)  # after the watched steps: the optimizer's own divergence rules
    with pytest.raises(BlewUp, match=r"step 1 \(loss inf\)"):
        Guard("sgd")(1, float("inf"))


# ---- through the CLI -----------------------------------------------------------------------------
def force(monkeypatch, optimizer: str, lr: float) -> None:
    """Make auto choose ``optimizer`` at ``lr`` for sine image fields (a choice other than the safe one)."""
    monkeypatch.setitem(EXCEPTIONS, ("image", "sine"), (optimizer, lr, "forced by the test"))


def test_a_choice_that_blows_up_restarts_with_adam_as_a_plain_adam_run(tmp_path, monkeypatch, capsys):
    force(monkeypatch, "sgd", 1e4)
    auto_run, plain = tmp_path / "auto", tmp_path / "plain"
    assert cli("fit", "camera", *SMALL, "--steps", 8, "--optimizer", "auto", "--out", auto_run) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.startswith("--optimizer auto:")]
    assert lines[0] == "--optimizer auto: sgd (lr 10000): forced by the test"
    assert re.fullmatch(r"--optimizer auto: sgd blew up at step 2 \(loss 0\.\d+ → [\d.e+]+\); restarting with adam \(lr 0\.0001\) from the initial weights", lines[1])
    assert cli("fit", "camera", *SMALL, "--steps", 8, "--optimizer", "adam", "--out", plain) == 0
    a, p = (json.loads((d / "metrics.json").read_text()) for d in (auto_run, plain))
    assert a["final"]["psnr"] == p["final"]["psnr"] and (a["optimizer"], a["lr"]) == (p["optimizer"], p["lr"]) == ("adam", 1e-4)
    assert (auto_run / "field.safetensors").read_bytes() == (plain / "field.safetensors").read_bytes()
    restart = a["auto"]["restart"]
    assert a["auto"]["optimizer"] == "sgd" and a["auto"]["guarded"] and restart["step"] == 2 and restart["loss"] > GUARD_FACTOR * restart["first_loss"]
    assert restart["restarted_with"] == {"optimizer": "adam", "lr": 1e-4}
    strip = lambda log: [{k: v for k, v in r.items() if k != "time_s"} for r in log]  # noqa: E731
    assert strip(read_log(auto_run)) == strip(read_log(plain))  # the log holds the Adam run only
    assert "optimizer: adam\nlr: 0.0001\n" in (auto_run / "config.yaml").read_text()  # --config repeats what was computed
    # --resume continues with Adam, as the record says, to a plain Adam run's result
    assert cli("fit", "camera", *SMALL, "--steps", 16, "--optimizer", "auto", "--out", auto_run, "--resume") == 0
    assert "continuing with adam" in capsys.readouterr().out
    assert cli("fit", "camera", *SMALL, "--steps", 16, "--optimizer", "adam", "--out", plain, "--resume") == 0
    assert (auto_run / "field.safetensors").read_bytes() == (plain / "field.safetensors").read_bytes()
    assert json.loads((auto_run / "metrics.json").read_text())["auto"]["restart"]["step"] == 2


def test_a_choice_that_does_not_blow_up_is_kept_and_watched_across_a_resume(tmp_path, monkeypatch, capsys):
    force(monkeypatch, "sgd", 1e-3)
    out = tmp_path / "run"
    assert cli("fit", "camera", *SMALL, "--steps", 4, "--optimizer", "auto", "--out", out) == 0
    assert "restarting" not in capsys.readouterr().out
    record = json.loads((out / "metrics.json").read_text())
    assert (record["optimizer"], record["auto"]["guarded"], record["auto"]["restart"]) == ("sgd", True, None)
    seen = []
    monkeypatch.setattr(Guard, "__call__", lambda self, step, loss: seen.append((step, self.first)))
    assert cli("fit", "camera", *SMALL, "--steps", 6, "--optimizer", "auto", "--out", out, "--resume") == 0
    assert seen == [(5, record["curve"][0]["loss"]), (6, record["curve"][0]["loss"])]  # step 1's loss, from the checkpoint


@pytest.mark.parametrize("activation", ["gaussian", "sine"])
def test_an_auto_choice_of_plain_adam_is_never_guarded(activation, tmp_path, monkeypatch, capsys):
    def always(self, step, loss):
        raise BlewUp(self.optimizer, step, loss, loss)

    monkeypatch.setattr(Guard, "__call__", always)  # a guard, if there were one, would restart at step 1
    assert cli("fit", "camera", *SMALL, "--steps", 4, "--activation", activation, "--optimizer", "auto", "--out", tmp_path / "r") == 0
    assert "restarting" not in capsys.readouterr().out
    record = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert (record["optimizer"], record["lr"], record["auto"]["guarded"], record["auto"]["restart"]) == ("adam", 1e-4, False, None)


def test_an_explicit_optimizer_keeps_its_divergence_behaviour(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli("fit", "camera", *SMALL, "--steps", 8, "--optimizer", "sgd", "--lr", 1e4, "--out", out) == 1
    captured = capsys.readouterr()
    assert "restarting" not in captured.out
    assert re.fullmatch(r"mclnf fit: training diverged: .* at step \d; the last good checkpoint \(step \d\) is kept; try a lower --lr", one_line(captured.err))
    assert (out / "checkpoint.pt").is_file() and not (out / "metrics.json").exists()
