"""``mclnf meta-test``'s two accountings of the offline references (``--offline-budget``): ``stream`` gives ``mol`` and
``ol`` s·T updates of one task's batch, ``full`` s updates of T tasks' batches — counted here in the test-time logs;
and which methods a meta-test scores (runs named by their folders, ``RUN:maml-cl``, ``--baselines-only``)."""

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


def test_a_mol_run_scored_as_maml_cl_equals_a_maml_cl_run(mol_run, tmp_path):
    """``RUN:maml-cl``: maml-cl meta-trains exactly as mol, so a mol run's θ₀ scored as maml-cl gives what a maml-cl run gives, to the bit."""
    maml_cl = tiny_meta_run(tmp_path / "maml-cl", "maml-cl")
    assert (tmp_path / "maml-cl" / "init.safetensors").read_bytes() != (mol_run / "init.safetensors").read_bytes()  # its description says maml-cl
    records = {}
    for name, run in (("as", f"{mol_run}:maml-cl"), ("trained", maml_cl), ("mol", mol_run)):
        out = tmp_path / name
        assert cli("meta-test", run, "lfw_subset", "--steps", 1, 2, "--signals", 2, "--baselines", "--quiet", "--out", out) == 0
        records[name] = json.loads((out / "metrics.json").read_text())["methods"]
    assert [r["name"] for r in records["as"]] == ["maml-cl"]
    assert records["as"][0]["curve"] == records["trained"][0]["curve"]
    assert records["mol"][0]["name"] == "mol" and records["mol"][0]["curve"] != records["as"][0]["curve"]  # the same θ₀, another test-time learner


@pytest.mark.parametrize("spec", ["mol-run:oml", "mol-run:nope"])
def test_a_run_cannot_be_scored_as_a_method_that_trains_otherwise(mol_run, tmp_path, capsys, spec):
    run = spec.replace("mol-run", str(mol_run))
    assert cli("meta-test", run, "lfw_subset", "--out", tmp_path / "x") == 2
    assert one_line(capsys.readouterr().err).endswith("can be tested as maml-cl or mol only (the methods that meta-train as it does)")
    assert not (tmp_path / "x").exists()


def test_baselines_only_scores_what_the_baselines_score_beside_the_run(mol_run, tmp_path, capsys):
    """``--baselines-only``: the run defines the data, tasks and field but is not scored; each baseline's record is the one
    it gets beside the run, to the bit (its initialization and batches are seeded alike)."""
    both, alone = tmp_path / "both", tmp_path / "alone"
    args = ("--steps", 1, 2, "--signals", 2, "--baselines", "ol", "cl", "--offline-budget", "full", "--quiet")
    assert cli("meta-test", mol_run, "lfw_subset", *args, "--out", both) == 0
    assert cli("meta-test", mol_run, "lfw_subset", *args, "--baselines-only", "--out", alone) == 0
    records = {p: {m["name"]: m["curve"] for m in json.loads((p / "metrics.json").read_text())["methods"]} for p in (both, alone)}
    assert list(records[alone]) == ["ol (full batch)", "cl"]
    assert records[alone] == {k: v for k, v in records[both].items() if k != "mol (full batch)"}
    assert cli("meta-test", mol_run, "lfw_subset", "--baselines", "--baselines-only", "--out", tmp_path / "x") == 2
    assert "--baselines-only: no --baselines to score" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "x").exists()
