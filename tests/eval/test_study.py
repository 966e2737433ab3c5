"""Study summaries from run records: first crossing, targets, ratios, divergence, tables and plots."""

import json

import pytest

from mclnf.eval.study import first_reach, load_records, markdown_table, plot_study, summarize


def record(opt, seed, points, act="gaussian", lr=0.1, diverged=False):
    curve = [{"step": s, "time_s": t, "psnr": v} for s, t, v in points]
    return {
        "activation": act, "optimizer": opt, "lr": lr, "seed": seed, "steps": curve[-1]["step"], "curve": curve,
        "final": None if diverged else {"psnr": curve[-1]["psnr"]}, "wall_time_s": curve[-1]["time_s"],
        **({"diverged": {"step": 99}} if diverged else {}),
    }  # fmt: skip


def test_first_reach_interpolates_linearly_between_the_bracketing_points():
    curve = [{"step": 1, "time_s": 1.0, "psnr": 10.0}, {"step": 3, "time_s": 5.0, "psnr": 20.0}, {"step": 5, "time_s": 6.0, "psnr": 30.0}]
    assert first_reach(curve, "psnr", 15.0, "step") == pytest.approx(2.0)
    assert first_reach(curve, "psnr", 15.0, "time_s") == pytest.approx(3.0)
    assert first_reach(curve, "psnr", 10.0, "step") == 1.0  # reached at the first point
    assert first_reach(curve, "psnr", 30.5, "step") is None
    # a dip below the target after the first crossing does not move it
    dip = curve + [{"step": 6, "time_s": 7.0, "psnr": 5.0}]
    assert first_reach(dip, "psnr", 25.0, "step") == pytest.approx(4.0)


def test_summarize_targets_the_baseline_mean_and_ratios_times():
    recs = [
        record("adam", 0, [(1, 1.0, 10.0), (100, 10.0, 20.0)], lr=1e-4),
        record("adam", 1, [(1, 1.0, 10.0), (100, 10.0, 22.0)], lr=1e-4),  # target = 21
        record("esgd", 0, [(1, 1.0, 10.0), (50, 4.0, 21.0), (100, 8.0, 25.0)]),
        record("esgd", 1, [(1, 1.0, 10.0), (50, 6.0, 31.0), (100, 8.0, 32.0)]),
        record("sgd", 0, [(1, 1.0, 10.0), (100, 8.0, 15.0)]),
        record("kfac", 0, [(1, 1.0, 10.0)], diverged=True),
    ]
    rows = {r.optimizer: r for r in summarize(recs, "psnr", baseline="adam")}
    assert rows["adam"].target == pytest.approx(21.0)
    # adam: seed 0 never reaches the mean of the finals → no ratio for the adam row itself
    assert rows["adam"].reached == 1 and rows["adam"].time_ratio is None
    esgd = rows["esgd"]
    assert esgd.final_mean == pytest.approx(28.5) and esgd.final_std == pytest.approx(4.949747, rel=1e-5)
    assert esgd.steps_to_target[0] == pytest.approx(50.0)
    assert esgd.seconds_to_target[1] == pytest.approx(1.0 + 5.0 * 11.0 / 21.0)
    # the ratio: esgd's mean seconds to the target over adam's mean total training time (10 s)
    assert esgd.time_ratio == pytest.approx((4.0 + 1.0 + 5.0 * 11.0 / 21.0) / 2 / 10.0)
    assert esgd.steps_ratio == pytest.approx((50.0 + 1.0 + 49.0 * 11.0 / 21.0) / 2 / 100.0)
    assert rows["sgd"].reached == 0 and rows["sgd"].time_ratio is None
    assert rows["kfac"].diverged == 1 and rows["kfac"].final_mean is None
    table = markdown_table(list(rows.values()), "PSNR", "dB")
    assert "not reached (0/1)" in table and "diverged" in table
    assert "— / 92 (1/2)" in table  # adam: per-seed steps when only some seeds reached the target
    assert len(table.splitlines()) == 2 + len(rows)


def test_records_and_plots_from_disk(tmp_path):
    recs = [record("adam", 0, [(1, 1.0, 10.0), (8, 2.0, 12.0)]), record("esgd", 0, [(1, 1.0, 11.0), (8, 2.0, 14.0)], act="sine")]
    for i, r in enumerate(recs):
        (tmp_path / f"r{i}").mkdir()
        (tmp_path / f"r{i}" / "metrics.json").write_text(json.dumps(r))
    loaded = load_records(tmp_path)
    assert sorted(r["optimizer"] for r in loaded) == ["adam", "esgd"]
    plot_study(loaded, "psnr", "time_s", tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
