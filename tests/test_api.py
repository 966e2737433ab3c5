"""The Python API (mclnf.fit, mclnf.load, mclnf.Field): docs/api.md run as a doctest, and what the doc promises."""

import doctest
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mclnf
from mclnf.errors import MclnfError

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
SMALL = dict(resize=32, width=16, depth=3, lr=1e-3, progress=False)


def doc_examples() -> str:
    """Every ```pycon block of docs/api.md, in order, as one doctest text."""
    blocks = re.findall(r"^```pycon\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)
    assert blocks
    return "\n".join(blocks)


DECIMAL = re.compile(r"(?<![\w.])-?\d+\.\d+(?![\w.])")  # 25.43, 0.766 — not 4,417 or a temporary folder's name


class MeasuredOutput(doctest.OutputChecker):
    """The doc's text exactly (with ``...``), its decimals — PSNR, SSIM, losses measured by training — within 2 %: a fit's
    last digits depend on the CPU's bf16 kernels (docs/precision.md), not on mclnf."""

    def check_output(self, want: str, got: str, flags: int) -> bool:
        if super().check_output(want, got, flags):
            return True
        wants, gots = DECIMAL.findall(want), DECIMAL.findall(got)
        close = len(wants) == len(gots) and all(abs(float(w) - float(g)) <= 0.02 * max(abs(float(w)), abs(float(g))) for w, g in zip(wants, gots))
        return close and super().check_output(DECIMAL.sub("<n>", want), DECIMAL.sub("<n>", got), flags)


def test_decimals_are_compared_within_two_percent_and_the_rest_exactly():
    check = lambda want, got: MeasuredOutput().check_output(want, got, doctest.ELLIPSIS)  # noqa: E731
    assert check("psnr 25.43  ssim 0.804, run /tmp/x-...\n", "psnr 25.51  ssim 0.7947, run /tmp/x-q6oped24\n")
    assert not check("psnr 25.43\n", "psnr 26.43\n")  # 3.9 %
    assert not check("4,417 parameters, psnr 25.43\n", "4,418 parameters, psnr 25.43\n")  # integers exactly
    assert not check("(25.43, 0.766)\n", "(25.43,)\n")


def test_every_example_in_docs_api_md_prints_what_it_shows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    test = doctest.DocTestParser().get_doctest(doc_examples(), {}, DOC.name, str(DOC), 0)
    assert len(test.examples) > 20
    runner = doctest.DocTestRunner(checker=MeasuredOutput(), optionflags=doctest.ELLIPSIS)
    runner.run(test, out=sys.stdout.write)
    test.globs.clear()  # the fields' temporary run folders go with them
    assert runner.failures == 0, f"{runner.failures} example(s) of {DOC} failed (printed above)"
    assert (tmp_path / "camera.png").is_file() and (tmp_path / "runs" / "camera" / "config.yaml").is_file()


def test_import_mclnf_is_light_and_the_api_loads_on_first_use():
    code = "import sys, mclnf; assert 'torch' not in sys.modules; mclnf.fit; assert 'torch' in sys.modules; print(sorted(mclnf.__all__))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "'fit'" in done.stdout and "'CONTINUAL_LEARNERS'" in done.stdout
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        mclnf.nonsense  # noqa: B018
    assert mclnf.FitConfig is __import__("mclnf.config").config.FitConfig and mclnf.MclnfError is MclnfError


def test_fit_returns_a_field_of_the_command_run(tmp_path):
    field = mclnf.fit("camera", steps=20, out=tmp_path / "run", **SMALL)
    assert isinstance(field, mclnf.Field) and field.run == tmp_path / "run" and field.steps == 20 and field.kind == "image"
    assert (tmp_path / "run" / "field.safetensors").is_file() and (tmp_path / "run" / "metrics.json").is_file()
    assert field.config.resize == 32 and field.config.activation == "sine"  # resolved options
    assert field.params == sum(p.numel() for p in field.network.parameters())
    evaluated = field.evaluate()
    assert evaluated == {k: v for k, v in field.metrics.items() if k != "loss"}  # the run's last evaluation, recomputed
    assert field.render().shape == (32, 32, 1)


def test_temporary_run_folder_goes_with_the_field():
    field = mclnf.fit("camera", steps=2, **SMALL)
    run = field.run
    assert run.is_dir() and (run / "checkpoint.pt").is_file()
    del field
    assert not run.exists()


def test_train_continues_bit_exactly_and_matches_the_longer_run():
    field = mclnf.fit("camera", steps=10, **SMALL).train(steps=15)
    longer = mclnf.fit("camera", steps=25, **SMALL)
    assert field.steps == 25 and field.record["steps"] == 25
    assert all(torch.equal(a, b) for a, b in zip(field.network.state_dict().values(), longer.network.state_dict().values()))
    assert field.metrics == longer.metrics


def test_save_and_load_round_trip(tmp_path):
    field = mclnf.fit("camera", steps=5, out=tmp_path / "run", **SMALL)
    path = field.save(tmp_path / "f.safetensors")
    bare = mclnf.load(path)
    assert bare.config is None and bare.run is None and bare.steps is None
    assert (bare.render() == field.render()).all()
    assert mclnf.load(tmp_path / "run" / "field.safetensors").config == field.config  # a run's own field file knows its run
    loaded = mclnf.load(tmp_path / "run")
    assert loaded.config == field.config and loaded.metrics == field.metrics and loaded.evaluate() == field.evaluate()
    out = loaded.render(tmp_path / "again.png")
    assert out == tmp_path / "again.png" and out.is_file()


@pytest.mark.parametrize("call, message", [
    (lambda: mclnf.fit("camera", stepz=3), "mclnf.fit: stepz: not an option of mclnf fit"),
    (lambda: mclnf.fit("camera", steps="many"), "mclnf.fit: steps: 'many' is not an integer"),
    (lambda: mclnf.fit("camera", activation="tanh"), "mclnf.fit: activation: 'tanh' is not one of sine"),
    (lambda: mclnf.fit("camera", steps=0), "--steps 0: must be a positive integer"),
    (lambda: mclnf.fit("no_such_image.png"), "no_such_image.png: no such file"),
    (lambda: mclnf.load("no_such_run"), "no_such_run: no such file"),
])  # fmt: skip
def test_bad_input_raises_one_line_naming_the_option(call, message):
    with pytest.raises(MclnfError) as e:
        call()
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_field_file_alone_renders_but_cannot_evaluate_or_train(tmp_path):
    field = mclnf.fit("camera", steps=3, **SMALL)
    bare = mclnf.load(field.save(tmp_path / "f.safetensors"))
    with pytest.raises(MclnfError, match="has no signal"):
        bare.evaluate()
    with pytest.raises(MclnfError, match="has no run to continue"):
        bare.train(steps=5)
    with pytest.raises(MclnfError, match="renders to .png, not .wav"):
        bare.render(tmp_path / "x.wav")
    with pytest.raises(MclnfError, match="saved as a .safetensors file"):
        field.save(tmp_path / "f.pt")
    with pytest.raises(MclnfError, match="--steps 0: must be a positive integer"):
        field.train(steps=0)
