"""Options declared once: the CLI generated from the configs, parsed back into them, and the errors that name flags."""

import argparse
import dataclasses
import re

import pytest
from conftest import cli, one_line

from mclnf.cli import COMMANDS, parser
from mclnf.config import BenchConfig, ContinualConfig, FitConfig, MetaTestConfig, MetaTrainConfig
from mclnf.errors import MclnfError
from mclnf.options import add_options, from_args, option


def help_text(command: str) -> str:
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return sub.format_help()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_shows_each_default_once_and_never_none(command):
    text = " ".join(help_text(command).split())  # argparse wraps lines
    assert "(default: None)" not in text and "default: None" not in text
    for entry in re.split(r"\s(?=--[a-z])", text):  # one option's help each
        assert len(re.findall(r"\(default:", entry)) <= 1, entry


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_option_of_the_config_is_a_flag_exactly_once(command):
    cfg = COMMANDS[command].config
    p = parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    dests = [a.dest for a in sub._actions if a.dest != "help"]
    assert len(dests) == len(set(dests))
    expected = {f.name for f in dataclasses.fields(cfg) if f.metadata.get("cli")} - set(COMMANDS[command].exclude)
    assert expected <= set(dests)


def test_parsed_arguments_build_the_config():
    a = parser().parse_args(["fit", "camera", "--crop", "10", "12", "--steps", "3", "--quiet", "--sigma", "0.1", "--activation", "gaussian"])
    cfg = from_args(FitConfig, a)
    assert (cfg.signal, cfg.crop, cfg.steps, cfg.progress, cfg.sigma, cfg.activation) == ("camera", (10, 12), 3, False, 0.1, "gaussian")
    assert cfg.width is None and cfg.resize is None  # the kind's defaults come later (config.resolve)
    a = parser().parse_args(["continual", "camera", "--grid", "2", "2", "--learner", "er", "--buffer-size", "7"])
    cfg = from_args(ContinualConfig, a)
    assert (cfg.grid, cfg.learner, cfg.buffer_size, cfg.steps) == ((2, 2), "er", 7, 500)  # continual's own default steps
    a = parser().parse_args(["meta-test", "r1", "r2", "data", "--steps", "1", "4"])
    cfg = from_args(MetaTestConfig, a)
    assert ([str(r) for r in cfg.runs], cfg.dataset, cfg.steps) == (["r1", "r2"], "data", [1, 4])
    cfg = from_args(MetaTrainConfig, parser().parse_args(["meta-train", "--meta-grad", "emcl", "--emcl-eta", "0.5"]))
    assert (cfg.dataset, cfg.meta_grad, cfg.emcl_eta) == ("skimage_patches", "emcl", 0.5)


def test_cl_bench_overrides_are_only_what_the_user_gave(monkeypatch):
    seen = {}
    monkeypatch.setattr("mclnf.commands.cl_bench.cl_bench", lambda cfg: seen.setdefault("cfg", cfg))
    assert cli("cl-bench", "mnist-permutations", "--emcl-no-pgd", "--no-lamaml-second-order", "--lr", "0.1", "--glances", "2") == 0
    assert seen["cfg"].overrides == {"emcl_pgd": False, "lamaml_second_order": False, "lr": 0.1, "glances": 2}
    seen.clear()
    assert cli("cl-bench", "mnist-permutations", "--method", "er", "emcl") == 0
    assert seen["cfg"].overrides == {} and seen["cfg"].methods == ["er", "emcl"]
    with pytest.raises(MclnfError, match="^--clip: not an option of the online learners"):  # La-MAML's is --lamaml-clip
        BenchConfig(bench="mnist-permutations", overrides={"clip": 1.0})


def test_dead_options_are_gone(capsys):
    for command, flag in (("continual", "--compile"), ("cl-bench", "--clip")):
        assert flag not in help_text(command).split(), (command, flag)
    assert cli("continual", "camera", "--compile") == 2
    assert "unrecognized arguments: --compile" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("make, message", [
    (lambda: FitConfig(signal="camera", steps=0), "--steps 0: must be a positive integer"),
    (lambda: FitConfig(signal="camera", lr=-1.0), "--lr -1.0: must be a positive finite number"),
    (lambda: ContinualConfig(signal="camera", mer_beta=1.5), "--mer-beta 1.5: must be in (0, 1]"),
    (lambda: ContinualConfig(signal="camera", learner="gem"), "--learner gem: unknown"),
    (lambda: MetaTrainConfig(emcl_eta=1.0), "--emcl-eta 1.0: must be in [0, 1)"),
    (lambda: MetaTrainConfig(method="maml"), "--method maml: unknown; choose one of mol, maml-cl, oml, mcl-nf, mcl-nf-fim"),
    (lambda: MetaTrainConfig(train_list="a"), "--train-list and --test-list: give both or neither"),
    (lambda: MetaTestConfig(paths=["run"]), "meta-test: give one or more RUN folders and then the DATASET"),
    (lambda: FitConfig(signal="camera", device="tpu"), "--device tpu: not a device name"),
])  # fmt: skip
def test_library_errors_name_the_flag(make, message):
    with pytest.raises(MclnfError) as e:
        make()
    assert str(e.value).startswith(message)


def test_a_new_option_is_one_declaration():
    @dataclasses.dataclass(kw_only=True)
    class Toy:
        """toy group"""

        knob_size: int = option(3, "how big the knob is")
        verbose: bool = option(True, "say nothing", flag="silent")
        pair: tuple[float, float] | None = option(None, "two numbers")

    p = argparse.ArgumentParser()
    add_options(p, Toy)
    assert "how big the knob is (default: 3)" in " ".join(p.format_help().split())
    cfg = from_args(Toy, p.parse_args(["--knob-size", "5", "--silent", "--pair", "1", "2"]))
    assert cfg == Toy(knob_size=5, verbose=False, pair=(1.0, 2.0))
    assert from_args(Toy, p.parse_args([])) == Toy()


def test_help_describes_every_kind_and_usage_lines_read_well():
    fit_help = " ".join(help_text("fit").split())
    assert "scene of posed images (a radiance field" in fit_help and "mesh (an occupancy field)" in fit_help
    usage = " ".join(help_text("meta-test").split("\n\n")[0].split())
    assert usage.endswith("RUN [RUN ...] DATASET") and usage.count("DATASET") == 1
    assert " ".join(help_text("fit").split("\n\n")[0].split()).endswith(" SIGNAL")  # positionals by their metavar
    for command in COMMANDS:
        assert "--config FILE" in help_text(command)


def test_meta_train_prints_its_summary_once(tmp_path, capsys):
    assert cli("meta-train", "lfw_subset", "--outer-steps", 1, "--meta-batch", 2, "--width", 8, "--depth", 2, "--out", tmp_path / "run") == 0
    captured = capsys.readouterr()
    both = captured.out + captured.err
    assert captured.out.count("outer steps on 140 signals") == 1 and both.count("loss after adaptation") == 1, both
