"""``mclnf meta-test``'s two accountings of the offline references (``--offline-budget``): ``stream`` gives ``mol`` and
``ol`` s·T updates of one task's batch, ``full`` s updates of T tasks' batches — counted here in the test-time logs."""

import json

import pytest
from conftest import cli, one_line, tiny_meta_run


@pytest.fixture(scope="module")
def mol_run(tmp_path_factory):
    return tiny_meta_run(tmp_path_factory.mktemp("meta") / "mol", "mol")


def train_lines(log) -> list[dict]:
    return [e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "train"]


def test_both_budgets_are_scored_and_count_their_updates(mol_run, tmp_path):
    out = tmp_path / "test"
    assert cli("meta-test", mol_run, "lfw_subset", "--steps", 1, 3, "--signals", 1, "--baselines", "ol", "cl", "--log-every", 1, "--quiet", "--out", out) == 0
    names = [m["name"] for m in json.loads((out / "metrics.json").read_text())["methods"]]
    assert names == ["mol", "mol (full batch)", "ol", "ol (full batch)", "cl"]
    T = 4  # the run's tasks (lfw_subset's default split)
    for log, updates in (("01-mol", T), ("02-mol-full-batch", 1), ("03-ol", T), ("04-ol-full-batch", 1), ("05-cl", T)):
        lines = train_lines(out / "logs" / f"{log}.log.jsonl")
        assert [sum(e["steps_per_task"] == s for e in lines) for s in (1, 3)] == [updates * 1, updates * 3], log
    table = (out / "table.md").read_text()
    assert f"mol, ol: s·{T} steps of one task's batch" in table and "(full batch): s steps of 4 tasks' batches" in table


def test_full_batch_alone(mol_run, tmp_path):
    """``--offline-budget full`` alone: only the full-batch record, one update for s = 1."""
    out = tmp_path / "test"
    assert cli("meta-test", mol_run, "lfw_subset", "--steps", 1, "--signals", 1, "--baselines", "--offline-budget", "full", "--log-every", 1, "--quiet", "--out", out) == 0
    assert [m["name"] for m in json.loads((out / "metrics.json").read_text())["methods"]] == ["mol (full batch)"]
    assert len(train_lines(out / "logs" / "01-mol-full-batch.log.jsonl")) == 1


def test_an_empty_budget_is_one_line(mol_run, tmp_path, capsys):
    assert cli("meta-test", mol_run, "lfw_subset", "--offline-budget", "--out", tmp_path / "x") == 2
    assert "--offline-budget" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "x").exists()


def test_runs_of_one_method_are_named_by_their_folders(mol_run, tmp_path):
    import shutil

    other = tmp_path / "mol-again"
    shutil.copytree(mol_run, other)
    out = tmp_path / "test"
    assert cli("meta-test", mol_run, other, "lfw_subset", "--steps", 1, "--signals", 1, "--baselines", "--offline-budget", "full", "--quiet", "--out", out) == 0
    names = [m["name"] for m in json.loads((out / "metrics.json").read_text())["methods"]]
    assert names == ["mol [mol] (full batch)", "mol [mol-again] (full batch)"]
