"""--config FILE: every command reads options from YAML, TOML or JSON (flags on the command line override them),
bad files are one line naming the file and the key, and every run folder's config.yaml repeats its run bit for bit."""

import json
from pathlib import Path

import pytest
import torch
from conftest import DATA, cli, one_line
from safetensors.torch import load_file

from mclnf.cli import COMMANDS
from mclnf.config import FitConfig
from mclnf.options import from_args
from mclnf.runs import remove_run

SMALL = ("--width", 16, "--depth", 3, "--quiet")


@pytest.fixture
def seen(monkeypatch):
    """Every command's run replaced by one that keeps the parsed namespace (nothing is computed)."""
    got = {}
    for name, c in COMMANDS.items():
        monkeypatch.setattr(c, "run", lambda a: got.__setitem__("a", a) or "")
    return got


def write(path, text):
    path.write_text(text)
    return path


FORMATS = {
    "yaml": "signal: camera\nsteps: 7\nbatch-size: 64\n--lr: 0.001\ncrop: [20, 24]\nquiet: true\nactivation: gaussian\nsigma: 1e-1\n",
    "toml": 'signal = "camera"\nsteps = 7\nbatch-size = 64\n"--lr" = 0.001\ncrop = [20, 24]\nquiet = true\nactivation = "gaussian"\nsigma = 0.1\n',
    "json": '{"signal": "camera", "steps": 7, "batch-size": 64, "--lr": 0.001, "crop": [20, 24], "quiet": true, "activation": "gaussian", "sigma": 0.1}',
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_yaml_toml_and_json_set_options_by_field_or_flag_name(tmp_path, seen, fmt):
    path = write(tmp_path / f"opts.{fmt}", FORMATS[fmt])
    assert cli("fit", "--config", path) == 0
    cfg = from_args(FitConfig, seen["a"])
    assert (cfg.signal, cfg.steps, cfg.batch_size, cfg.lr, cfg.crop, cfg.progress, cfg.activation, cfg.sigma) == ("camera", 7, 64, 0.001, (20, 24), False, "gaussian", 0.1)
    assert cfg.width is None and cfg.optimizer == "adam"  # the rest: the declared defaults


def test_flags_on_the_command_line_override_the_file(tmp_path, seen):
    path = write(tmp_path / "opts.yaml", "signal: camera\nsteps: 7\nlr: 0.001\ncrop: [20, 24]\n")
    assert cli("fit", "astronaut", "--config", path, "--steps", 9, "--crop", 30, 31) == 0
    cfg = from_args(FitConfig, seen["a"])
    assert (cfg.signal, cfg.steps, cfg.lr, cfg.crop) == ("astronaut", 9, 0.001, (30, 31))
    assert cli("fit", "--steps", 11, "--conf", path) == 0  # an abbreviated --config, after the flags
    assert (seen["a"].signal, seen["a"].steps) == ("camera", 11)


@pytest.mark.parametrize("command, text, expect", [
    ("continual", "signal: camera\nlearner: er\ngrid: [2, 2]\nbuffer_size: 99\n", {"learner": "er", "grid": (2, 2), "buffer_size": 99}),
    ("meta-train", "method: mol\nmeta-grad: emcl\nouter_steps: 3\n", {"dataset": "skimage_patches", "method": "mol", "meta_grad": "emcl", "outer_steps": 3}),
    ("meta-test", "paths: [runs/a, runs/b, lfw_subset]\nsteps: [1, 4]\nbaselines: []\n", {"paths": ["runs/a", "runs/b", "lfw_subset"], "steps": [1, 4], "baselines": []}),
    ("cl-bench", "bench: mnist-permutations\nmethod: [er, emcl]\nemcl-no-pgd: true\nlr: 0.1\n", {"bench": "mnist-permutations", "methods": ["er", "emcl"], "emcl_pgd": False, "lr": 0.1}),
    ("render", "run: runs/camera\nout: render.png\n", {"run": Path("runs/camera"), "out": Path("render.png")}),
])  # fmt: skip
def test_every_command_takes_a_config_file(tmp_path, seen, command, text, expect):
    assert cli(command, "--config", write(tmp_path / "opts.yaml", text)) == 0
    assert {k: getattr(seen["a"], k) for k in expect} == expect


@pytest.mark.parametrize("text, message", [
    ("signal: camera\nstepz: 3\n", "stepz: not an option of mclnf fit"),
    ("signal: camera\nsteps: many\n", "steps: 'many' is not an integer"),
    ("signal: camera\nsteps: 2.5\n", "steps: 2.5 is not an integer"),
    ("signal: camera\nactivation: tanh\n", "activation: 'tanh' is not one of sine, gaussian"),
    ("signal: camera\ncrop: [1, 2, 3]\n", "crop: [1, 2, 3] is not a list of 2 values"),
    ("signal: camera\nsteps: null\n", "steps: must have a value"),
    ("signal: camera\ngray: 1\n", "gray: 1 is not true or false"),
    ("signal: camera\nsteps: 3\n--steps: 4\n", "--steps: the option --steps is given twice"),
    ("signal: camera\nsteps: 0\n", "--steps 0: must be a positive integer"),  # a range check of the config, from the file
    ("signal: camera\nsteps: [3\n", "not valid YAML (line 3"),
    ("- steps\n- 3\n", "must hold a table of option names and values, not a list"),
])  # fmt: skip
def test_a_bad_file_is_one_line_naming_the_file_and_the_key(tmp_path, capsys, text, message):
    path = write(tmp_path / "bad.yaml", text)
    assert cli("fit", "--config", path, "--out", tmp_path / "out") == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"mclnf fit: error: {path}: ") and message in line, line
    assert not (tmp_path / "out").exists()


def test_a_bad_value_given_as_a_flag_is_not_blamed_on_the_file(tmp_path, capsys):
    path = write(tmp_path / "opts.yaml", "signal: camera\nsteps: 3\n")
    assert cli("fit", "--config", path, "--steps", 0) == 2
    assert one_line(capsys.readouterr().err) == "mclnf fit: error: --steps 0: must be a positive integer"


@pytest.mark.parametrize("name, text, message", [
    ("opts.ini", "steps = 3", "unsupported format .ini; expected one of .yaml, .yml, .toml, .json"),
    ("missing.yaml", None, "no such file"),
    ("bad.toml", "steps = = 3", "not valid TOML"),
    ("bad.json", '{"steps": }', "not valid JSON"),
])  # fmt: skip
def test_an_unreadable_config_file_is_one_line(tmp_path, capsys, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    assert cli("fit", "camera", "--config", path) == 2
    line = one_line(capsys.readouterr().err)
    assert str(path) in line and message in line, line


def test_help_shows_the_file_values_as_defaults(tmp_path, capsys):
    path = write(tmp_path / "opts.yaml", "signal: camera\nsteps: 77\n")
    assert cli("fit", "--config", path, "--help") == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "training steps (mini-batches) (default: 77)" in text and "(default: camera)" in text


# --------------------------------------------------------------------------- config.yaml replays the run


def replay(tmp_path, *argv):
    """Run ``argv`` into a/, then ``--config a/config.yaml`` into b/; returns (a, b)."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli(*argv, "--out", a) == 0
    record = json.loads((a / "run.json").read_text())
    assert "config.yaml" in record["files"]  # in the manifest: --overwrite removes it
    assert cli(argv[0], "--config", a / "config.yaml", "--out", b, "--quiet") == 0
    return a, b


def without_times(x):
    if isinstance(x, dict):
        return {k: without_times(v) for k, v in x.items() if not k.endswith("_s") and k not in ("step_ms", "episodes_per_s", "out", "config")}
    if isinstance(x, list):
        return [without_times(v) for v in x]
    return x


def test_fit_config_yaml_repeats_the_run_bit_for_bit(tmp_path):
    a, b = replay(tmp_path, "fit", "camera", "--resize", 16, "--steps", 6, "--lr", 3e-4, "--activation", "gaussian", *SMALL)
    text = (a / "config.yaml").read_text()
    assert "batch_size: 512" in text and "lr: 0.0003" in text and "activation: gaussian" in text  # resolved: the kind's defaults written out
    assert (a / "field.safetensors").read_bytes() == (b / "field.safetensors").read_bytes()
    assert (a / "reconstruction.png").read_bytes() == (b / "reconstruction.png").read_bytes()
    ma, mb = (json.loads((x / "metrics.json").read_text()) for x in (a, b))
    assert without_times(ma) == without_times(mb) and ma["curve"][-1]["loss"] == mb["curve"][-1]["loss"]
    assert (a / "config.yaml").read_text() == (b / "config.yaml").read_text()
    remove_run(a)  # what --overwrite does
    assert not (a / "config.yaml").exists()


def test_continual_config_yaml_repeats_the_run_bit_for_bit(tmp_path):
    a, b = replay(tmp_path, "continual", "camera", "--resize", 16, "--tasks", 2, "--steps", 3, "--learner", "er", "--buffer-size", 50, *SMALL)
    ma, mb = (json.loads((x / "metrics.json").read_text()) for x in (a, b))
    assert ma["R"] == mb["R"] and ma["final"] == mb["final"] and without_times(ma) == without_times(mb)
    assert (a / "after_task2.png").read_bytes() == (b / "after_task2.png").read_bytes()
    sa, sb = (torch.load(x / "checkpoint.pt", weights_only=True)["learner"] for x in (a, b))
    fa, fb = flat(sa), flat(sb)
    assert fa and len(fa) == len(fb) and all(torch.equal(x, y) for x, y in zip(fa, fb))


def flat(state):
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for v in state.values() for t in flat(v)]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in flat(v)]
    return []


def test_meta_train_config_yaml_repeats_the_run_bit_for_bit(tmp_path):
    a, b = replay(tmp_path, "meta-train", "lfw_subset", "--outer-steps", 2, "--meta-batch", 2, "--method", "mol", "--meta-grad", "first-order", *SMALL)
    ta, tb = load_file(a / "init.safetensors"), load_file(b / "init.safetensors")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    ma, mb = (json.loads((x / "meta_train.json").read_text()) for x in (a, b))
    assert without_times(ma) == without_times(mb)


def test_cl_bench_config_yaml_holds_methods_seeds_and_overrides(tmp_path):
    a, b = replay(tmp_path, "cl-bench", "mnist-permutations", "--tasks", 2, "--seeds", 1, "--method", "sgd", "--data", DATA / "mnist", "--lr", 0.1, "--quiet")
    text = (a / "config.yaml").read_text()
    assert "methods: [sgd]" in text and "seeds: 1" in text and "lr: 0.1" in text
    ra, rb = (json.loads((x / "runs" / "sgd-seed0.json").read_text()) for x in (a, b))
    assert ra["R"] == rb["R"] and ra["options"] == rb["options"] and ra["options"]["lr"] == 0.1
