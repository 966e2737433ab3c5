"""Run folders as a hostile user meets them: every command writes only inside --out, --overwrite deletes only what
the run wrote, no folder is a dead end (a plain rerun, --overwrite or --resume always works), options are checked
before anything is written, and identical runs write identical files."""

import json
import os

import pytest
import torch
from conftest import DATA, cli, one_line

SMALL = ("--width", 16, "--depth", 3, "--quiet")
FIT = ("fit", "camera", "--resize", 16, "--steps", 4, *SMALL)
CONTINUAL = ("continual", "camera", "--resize", 16, "--tasks", 2, "--steps", 3, *SMALL)
META_TRAIN = ("meta-train", "lfw_subset", "--outer-steps", 2, "--checkpoint-every", 1, "--meta-batch", 2, *SMALL)
CL_BENCH = ("cl-bench", "mnist-permutations", "--tasks", 2, "--seeds", 1, "--method", "sgd", "--data", DATA / "mnist", "--quiet")


def listing(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """A working directory holding a user's file; every command below runs in it."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("mine")
    monkeypatch.chdir(home)
    return home


@pytest.mark.parametrize("argv", [FIT, CONTINUAL, META_TRAIN, CL_BENCH], ids=["fit", "continual", "meta-train", "cl-bench"])
def test_a_command_writes_only_inside_out_and_overwrite_deletes_only_its_files(cwd, argv):
    out = cwd / "out"
    assert cli(*argv, "--out", out) == 0
    assert listing(cwd) - {"thesis.tex"} == {"out", *(f"out/{p}" for p in listing(out))}  # nothing outside --out
    record = json.loads((out / "run.json").read_text())
    assert record["command"] == argv[0] and set(record["files"]) == {p for p in listing(out) if (out / p).is_file()} - {"run.json"}
    (out / "notes.txt").write_text("mine too")  # a user's file in the run folder
    (out / "src").mkdir()
    (out / "src" / "model.py").write_text("x = 1")
    assert cli(*argv, "--out", out, "--overwrite") == 0
    assert (out / "notes.txt").read_text() == "mine too" and (out / "src" / "model.py").read_text() == "x = 1"
    assert (cwd / "thesis.tex").read_text() == "mine"


def test_meta_test_writes_only_its_folder(cwd):
    assert cli(*META_TRAIN, "--out", cwd / "run") == 0
    before = listing(cwd / "run")
    assert cli("meta-test", cwd / "run", "lfw_subset", "--steps", 1, "--signals", 1, "--baselines", "cl", "--out", cwd / "test", "--quiet") == 0
    assert listing(cwd / "run") == before and listing(cwd) - {"thesis.tex"} - {f"run/{p}" for p in before} - {"run"} == {"test", *(f"test/{p}" for p in listing(cwd / "test"))}


def test_overwrite_through_a_symlinked_out(cwd):
    target = cwd / "target"
    assert cli(*FIT, "--out", target) == 0
    (target / "keep.txt").write_text("k")
    (cwd / "link").symlink_to(target)
    assert cli(*FIT, "--out", cwd / "link", "--overwrite") == 0
    assert (target / "keep.txt").read_text() == "k" and (target / "metrics.json").is_file() and (cwd / "link").is_symlink()


@pytest.mark.parametrize("extra, flag", [
    (("--seed", -1), "--seed -1"), (("--seed", 99999999999999999999), "--seed 99999999999999999999"), (("--lr", -1), "--lr -1.0"),
])  # fmt: skip
def test_options_are_checked_before_anything_is_written_or_deleted(cwd, capsys, extra, flag):
    assert cli(*FIT, *extra, "--out", cwd / "new") == 2
    assert one_line(capsys.readouterr().err).startswith(f"mclnf fit: error: {flag}")
    assert not (cwd / "new").exists()
    assert cli(*FIT, "--out", cwd / "run") == 0
    before = {p: (cwd / "run" / p).read_bytes() for p in listing(cwd / "run") if (cwd / "run" / p).is_file()}
    assert cli(*FIT, *extra, "--out", cwd / "run", "--overwrite") == 2  # the run is still there
    capsys.readouterr()
    assert {p: (cwd / "run" / p).read_bytes() for p in listing(cwd / "run") if (cwd / "run" / p).is_file()} == before


def test_cl_bench_checks_its_options_before_writing(cwd, capsys):
    assert cli(*CL_BENCH, "--lr", -1, "--out", cwd / "b") == 2
    assert "--lr -1.0" in one_line(capsys.readouterr().err) and not (cwd / "b").exists()
    assert cli(*CL_BENCH, "--out", cwd / "b") == 0  # the corrected rerun is not refused


@pytest.mark.parametrize("argv, keys", [(FIT, "step"), (CONTINUAL, "rows"), (META_TRAIN, "step")], ids=["fit", "continual", "meta-train"])
def test_resume_refuses_a_foreign_checkpoint_in_one_line(cwd, capsys, argv, keys):
    assert cli(*argv, "--out", cwd / "r") == 0
    torch.save({"model": {}}, cwd / "r" / "checkpoint.pt")
    more = ("--outer-steps", 3) if argv is META_TRAIN else ("--steps", 5) if argv is FIT else ()
    assert cli(*argv, *more, "--out", cwd / "r", "--resume") == 2
    line = one_line(capsys.readouterr().err)
    assert "checkpoint.pt: not a checkpoint of this run" in line and repr(keys) in line


def test_a_diverged_continual_run_is_no_dead_end(cwd, capsys):
    diverging = ("continual", "camera", "--resize", 16, "--tasks", 2, "--steps", 5, "--optimizer", "sgd", "--lr", 1e6, "--learner", "all", *SMALL)
    assert cli(*diverging, "--out", cwd / "c") == 1
    assert "diverged" in capsys.readouterr().err
    assert cli(*diverging, "--out", cwd / "c", "--resume") == 1  # resumable: it diverges again, as it should
    assert cli(*CONTINUAL, "--learner", "all", "--out", cwd / "c", "--overwrite") == 0
    assert (cwd / "c" / "comparison.md").is_file()


def test_temporary_files_of_killed_writes_neither_block_nor_pile_up(cwd):
    out = cwd / "k"
    out.mkdir()
    (out / ".field.safetensors.a1b2c3d4.safetensors").write_bytes(b"half")  # killed during the very first write
    assert cli(*FIT, "--out", out) == 0  # counts as empty
    (out / ".checkpoint.pt.zz9_x8y7.pt").write_bytes(b"half")  # killed during a later write
    assert cli(*FIT[:4], "--steps", 6, *SMALL, "--out", out, "--resume") == 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_resume_finishes_a_run_killed_after_its_last_checkpoint(cwd):
    out = cwd / "m"
    assert cli(*META_TRAIN, "--out", out) == 0
    record = json.loads((out / "meta_train.json").read_text())
    (out / "meta_train.json").unlink()
    assert cli(*META_TRAIN, "--out", out, "--resume") == 0
    assert json.loads((out / "meta_train.json").read_text())["final_loss"] == record["final_loss"]


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_afresh(cwd):
    out = cwd / "f"
    assert cli(*FIT, "--out", out) == 0
    reference = json.loads((out / "metrics.json").read_text())["final"]
    for name in os.listdir(out):
        if name != "run.json":
            (out / name).unlink()
    assert cli(*FIT, "--out", out, "--resume") == 0
    assert json.loads((out / "metrics.json").read_text())["final"] == reference


def test_identical_runs_write_identical_field_files(cwd):
    for name in ("a", "b"):
        assert cli(*FIT, "--out", cwd / name) == 0
    assert (cwd / "a" / "field.safetensors").read_bytes() == (cwd / "b" / "field.safetensors").read_bytes()


def test_unwritable_render_target_is_one_line(cwd, capsys):
    assert cli(*FIT, "--out", cwd / "r") == 0
    assert cli("render", cwd / "r", "--out", "/proc/x.png") == 2
    assert "/proc/x.png" in one_line(capsys.readouterr().err)


def test_meta_test_divergence_and_interrupt_name_what_meta_test_has(cwd, capsys, monkeypatch):
    assert cli(*META_TRAIN, "--out", cwd / "run") == 0
    argv = ("meta-test", cwd / "run", "lfw_subset", "--steps", 4, "--signals", 1, "--baselines", "--quiet")
    assert cli(*argv, "--test-lr", 1e12, "--out", cwd / "t") == 1
    err = capsys.readouterr().err
    assert "--test-lr" in err and "--resume" not in err and "meta-test keeps no checkpoint" in err
    monkeypatch.setattr("mclnf.commands.meta_test.score", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert cli(*argv, "--out", cwd / "t", "--overwrite") == 130
    assert "interrupted; continue with --resume" in capsys.readouterr().err  # the methods done are kept in methods/


def test_an_impossible_field_is_refused_with_its_estimate_before_allocating(cwd, capsys):
    assert cli("fit", "camera", "--width", 10_000_000, "--out", cwd / "w") == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("mclnf fit: error: --width 10000000") and "GiB; this machine has" in line and not (cwd / "w").exists()


@pytest.mark.parametrize("argv", [("fit", "camera"), ("fit", DATA / "video" / "bikes.mp4", "--frames", 2)], ids=["image", "video"])
def test_an_impossible_resize_is_refused_with_its_estimate(cwd, capsys, argv):
    assert cli(*argv, "--resize", 100_000, "--out", cwd / "r") == 2
    line = one_line(capsys.readouterr().err)
    assert "--resize 100000" in line and "GiB; this machine has" in line and not (cwd / "r").exists()
