"""``mclnf continual --learner all`` writes each learner's run as soon as it is done, and ``--resume`` after an
interruption runs only the learners left, to the matrices of an uninterrupted run."""

import json

from conftest import cli, one_line

from mclnf.commands import continual

RUN_LEARNER = continual.run_learner
ARGS = ("continual", "camera", "--resize", 24, "--width", 32, "--depth", 3, "--steps", 5, "--learner", "all", "--quiet")
LEARNERS = ["ol", "cl", "er", "ewc", "mer", "modular"]


def counted(monkeypatch, fail_at: int | None = None) -> list[str]:
    """The learners ``continual.run_learner`` runs; Ctrl-C at its ``fail_at``-th call."""
    ran = []

    def run_learner(cfg, *args, **kwargs):
        if fail_at is not None and len(ran) + 1 == fail_at:
            raise KeyboardInterrupt
        ran.append(cfg.learner)
        return RUN_LEARNER(cfg, *args, **kwargs)

    monkeypatch.setattr(continual, "run_learner", run_learner)
    return ran


def test_an_interrupted_all_run_resumes_with_the_learners_left(tmp_path, monkeypatch, capsys):
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert cli(*ARGS, "--out", whole) == 0
    ran = counted(monkeypatch, fail_at=3)
    capsys.readouterr()
    assert cli(*ARGS, "--out", part) == 130
    assert one_line(capsys.readouterr().err) == "mclnf continual: interrupted; continue with --resume"
    assert ran == ["ol", "cl"] and [n for n in LEARNERS if (part / n / "metrics.json").is_file()] == ["ol", "cl"]
    ran = counted(monkeypatch)
    assert cli(*ARGS, "--out", part, "--resume") == 0
    assert ran == LEARNERS[2:]
    for n in LEARNERS:
        a, b = (json.loads((p / n / "metrics.json").read_text()) for p in (whole, part))
        assert a["R"] == b["R"] and a["final"] == b["final"], n
    assert (part / "comparison.md").is_file()
