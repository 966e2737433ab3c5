"""A table of bad options for every command: each answer is one line naming the option, exit status 2, and nothing
written — the output folder is not even created."""

import pytest
from conftest import DATA, cli, one_line

FIT = ("fit", "camera", "--resize", 16, "--steps", 2, "--quiet")
CONTINUAL = ("continual", "camera", "--resize", 16, "--steps", 2, "--quiet")
META_TRAIN = ("meta-train", "lfw_subset", "--outer-steps", 1, "--quiet")
CL_BENCH = ("cl-bench", "mnist-permutations", "--tasks", 2, "--seeds", 1, "--data", DATA / "mnist", "--quiet")
CASES = [
    (FIT, ("--steps", 0), "--steps 0"), (FIT, ("--batch-size", -3), "--batch-size -3"), (FIT, ("--lr", "nan"), "--lr nan"),
    (FIT, ("--lr", "inf"), "--lr inf"), (FIT, ("--seed", -1), "--seed -1"), (FIT, ("--width", 0), "--width 0"),
    (FIT, ("--depth", 1), "--depth 1"), (FIT, ("--sigma", 0.1), "--sigma"), (FIT, ("--frames", 3), "--frames"),
    (FIT, ("--device", "cuda:7"), "--device cuda:7"), (FIT, ("--resolution", 1), "--resolution"),
    (FIT, ("--width", 10**9), "--width 1000000000"),
    (CONTINUAL, ("--tasks", 0), "--tasks 0"), (CONTINUAL, ("--mer-beta", 2), "--mer-beta 2.0"), (CONTINUAL, ("--buffer-size", 0), "--buffer-size 0"),
    (CONTINUAL, ("--ewc-lambda", -1), "--ewc-lambda -1.0"), (CONTINUAL, ("--fim-lambda", -1), "--fim-lambda -1.0"),
    (CONTINUAL, ("--grid", 3, 3), "--grid"), (CONTINUAL, ("--seed", 2**63), "--seed 9223372036854775808"),
    (META_TRAIN, ("--outer-steps", 0), "--outer-steps 0"), (META_TRAIN, ("--outer-lr", 0), "--outer-lr 0.0"),
    (META_TRAIN, ("--emcl-eta", 1), "--emcl-eta 1.0"), (META_TRAIN, ("--inner-lr", -1), "--inner-lr -1.0"),
    (META_TRAIN, ("--meta-batch", 1000), "--meta-batch 1000"), (META_TRAIN, ("--test-fraction", 1.5), "--test-fraction 1.5"),
    (META_TRAIN, ("--split-seed", -2), "--split-seed -2"), (META_TRAIN, ("--train-list", "x"), "--train-list"),
    (META_TRAIN, ("--oml-fast-layers", 9, "--method", "oml"), "--oml-fast-layers 9"), (META_TRAIN, ("--clip", 0.5), "--clip"),
    (CL_BENCH, ("--lr", -1), "--lr -1.0"), (CL_BENCH, ("--seeds", 0), "--seeds 0"), (CL_BENCH, ("--tasks", 99), "--tasks 99"),
    (CL_BENCH, ("--emcl-eta", 1), "--emcl-eta 1.0"), (CL_BENCH, ("--lamaml-clip", 0), "--lamaml-clip 0.0"), (CL_BENCH, ("--mer-gamma", 0), "--mer-gamma 0.0"),
]  # fmt: skip


@pytest.mark.parametrize("argv, bad, named", CASES, ids=[f"{a[0]} {' '.join(map(str, b))}" for a, b, _ in CASES])
def test_a_bad_option_is_one_line_naming_it_and_nothing_is_written(tmp_path, capsys, argv, bad, named):
    out = tmp_path / "out"
    assert cli(*argv, *bad, "--out", out) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"mclnf {argv[0]}: error:") and named in line, line
    assert not out.exists()


def test_meta_test_bad_options(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(*META_TRAIN, "--out", run) == 0
    for bad, named in ((("--steps", 0), "--steps 0"), (("--test-lr", -1), "--test-lr -1.0"), (("--grid-steps", 3), "--grid-steps 3"),
                       (("--signals", 0), "--signals 0"), (("--seed", -1), "--seed -1")):  # fmt: skip
        assert cli("meta-test", run, "lfw_subset", *bad, "--out", tmp_path / "t", "--quiet") == 2
        assert named in one_line(capsys.readouterr().err)
        assert not (tmp_path / "t").exists()
