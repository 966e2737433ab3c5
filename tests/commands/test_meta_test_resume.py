"""``mclnf meta-test`` writes each method's results as soon as it is done, and ``--resume`` after an interruption
scores only the methods left and writes the tables an uninterrupted run writes."""

import json

import pytest
from conftest import cli, one_line, tiny_meta_run

from mclnf.commands import meta_test

SCORE = meta_test.score
ARGS = ("lfw_subset", "--steps", 1, 4, "--signals", 2, "--baselines", "cl", "er", "--quiet")


@pytest.fixture(scope="module")
def meta_run(tmp_path_factory):
    return tiny_meta_run(tmp_path_factory.mktemp("meta") / "mcl-nf", "mcl-nf")


def counted_score(monkeypatch, fail_at: int | None = None) -> list[str]:
    """Record the methods ``meta_test.score`` scores; interrupt it (Ctrl-C) when it is called for the ``fail_at``-th time."""
    scored = []

    def score(entry, *args, **kwargs):
        if fail_at is not None and len(scored) + 1 == fail_at:
            raise KeyboardInterrupt
        scored.append(entry if isinstance(entry, str) else entry.name)
        return SCORE(entry, *args, **kwargs)

    monkeypatch.setattr(meta_test, "score", score)
    return scored


def without_timing(method: dict) -> dict:
    return {k: v for k, v in method.items() if k not in ("peak_mib", "episodes_per_s", "test_s")}


def test_an_interrupted_meta_test_resumes_to_the_uninterrupted_tables(meta_run, tmp_path, monkeypatch, capsys):
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert cli("meta-test", meta_run, *ARGS, "--out", whole) == 0
    assert sorted(p.name for p in (whole / "methods").iterdir()) == ["01-mcl-nf.json", "01-mcl-nf.pt", "02-cl.json", "02-cl.pt", "03-er.json", "03-er.pt"]

    scored = counted_score(monkeypatch, fail_at=2)
    capsys.readouterr()
    assert cli("meta-test", meta_run, *ARGS, "--out", part) == 130
    assert one_line(capsys.readouterr().err) == "mclnf meta-test: interrupted; continue with --resume"
    assert scored == ["mcl-nf"]
    assert sorted(p.name for p in (part / "methods").iterdir()) == ["01-mcl-nf.json", "01-mcl-nf.pt"]  # written as soon as it was done
    assert not (part / "table.md").exists()
    first = json.loads((part / "methods" / "01-mcl-nf.json").read_text())
    assert without_timing(first) == without_timing(json.loads((whole / "methods" / "01-mcl-nf.json").read_text()))

    scored = counted_score(monkeypatch)
    assert cli("meta-test", meta_run, *ARGS, "--out", part, "--resume") == 0
    assert scored == ["cl", "er"]  # mcl-nf read back, not scored again
    assert (part / "table.md").read_text() == (whole / "table.md").read_text()
    a, b = (json.loads((p / "metrics.json").read_text()) for p in (whole, part))
    assert [without_timing(m) for m in a["methods"]] == [without_timing(m) for m in b["methods"]]
    assert (part / "grid_step4.png").read_bytes() == (whole / "grid_step4.png").read_bytes()  # the reconstructions kept with the record


def test_resume_refuses_other_options(meta_run, tmp_path, capsys):
    out = tmp_path / "t"
    assert cli("meta-test", meta_run, "lfw_subset", "--steps", 1, "--signals", 1, "--baselines", "--quiet", "--out", out) == 0
    capsys.readouterr()
    assert cli("meta-test", meta_run, "lfw_subset", "--steps", 1, 2, "--signals", 1, "--baselines", "--quiet", "--out", out, "--resume") == 2
    assert "was run with --steps [1], not [1, 2]" in one_line(capsys.readouterr().err)
    assert cli("meta-test", meta_run, "lfw_subset", "--quiet", "--out", tmp_path / "none", "--resume") == 2
    assert "--resume:" in one_line(capsys.readouterr().err) and not (tmp_path / "none").exists()
