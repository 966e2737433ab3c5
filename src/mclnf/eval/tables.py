"""Markdown tables of run records: the continual comparison, MCL-NF's Table 1 and Table 6, EMCL's Table III."""

from __future__ import annotations

import statistics


def comparison_table(records: list[dict]) -> str:
    """A Markdown table: final whole-signal metric, BWT, mean over seen tasks and time, one row per learner."""
    metric = records[0]["metric"]
    unit = " (dB)" if metric == "psnr" else ""
    head = f"| learner | final {metric}{unit} | BWT{unit} | mean R[T][j] | params | train s | after-task s | ms/step |\n|---|---|---|---|---|---|---|---|\n"
    fmt = lambda v: "–" if v is None else f"{v:.4g}"  # noqa: E731
    lines = [
        f"| {r['learner']} | {fmt(r['final'][metric])} | {fmt(r['bwt'])} | {fmt(sum(r['R'][-1]) / len(r['R'][-1]))} | {r['params']:,} "
        f"| {r['train_s']:.1f} | {r['after_task_s']:.1f} | {r['step_ms']:.2f} |"
        for r in records
    ]
    return head + "\n".join(lines) + "\n"


def summarize(curve: dict[int, dict], metric: str) -> dict:
    steps = sorted(curve)
    values = [curve[s][metric] for s in steps]
    ok = [(v, s) for v, s in zip(values, steps) if v is not None]
    best = max(ok) if ok else (None, None)
    return {"step1": values[0], "best": best[0], "best_step": best[1], "final": values[-1], "first_step": steps[0], "final_step": steps[-1]}


def table1(records: list[dict], metrics: list[str]) -> str:
    fmt = lambda v: "–" if v is None else f"{v:.4g}"  # noqa: E731
    out = []
    for metric in metrics:
        r0 = records[0]["summary"][metric]
        unit = " (dB)" if metric == "psnr" else ""
        out.append(f"### {metric.upper()}{unit}\n\n| method | Step {r0['first_step']} | Best (step) | Final (step {r0['final_step']}) |\n|---|---|---|---|")
        for r in records:
            s = r["summary"][metric]
            out.append(f"| {r['name']} | {fmt(s['step1'])} | {fmt(s['best'])} ({s['best_step']}) | {fmt(s['final'])} |")
        out.append("")
    return "\n".join(out) + "\n"


def compute_table(records: list[dict], metric: str) -> str:
    lines = [f"| method | params | peak memory (MiB) | episodes/s | {metric.upper()} (final) |", "|---|---|---|---|---|"]
    for r in records:
        v = r["summary"][metric]["final"]
        lines.append(f"| {r['name']} | {r['params']:,} | {r['peak_mib']:.1f} | {r['episodes_per_s']:.1f} | {'–' if v is None else f'{v:.4g}'} |")
    return "\n".join(lines) + "\n"


def mean_std(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def table3(name: str, tasks: int, records: list[dict], note: str) -> str:
    """EMCL's Table III layout for one benchmark: ACC, BWT (÷ T−1), training time, mean ± std over seeds."""
    rows = []
    for label in dict.fromkeys(r["label"] for r in records):
        rs = [r for r in records if r["label"] == label and "diverged" not in r]
        failed = [f"seed {r['seed']} diverged ({r['diverged']})" for r in records if r["label"] == label and "diverged" in r]
        cells = [mean_std([r[k] for r in rs]) if rs else "–" for k in ("acc", "bwt", "train_s")]
        rows.append(f"| {label} | {' | '.join(cells)} | {len(rs)}{'; ' + '; '.join(failed) if failed else ''} |")
    head = f"## {name}: {tasks} tasks\n\n{note}\n\n| method | ACC (%) | BWT (%, ÷ T−1) | training time (s) | seeds |\n|---|---|---|---|---|\n"
    return head + "\n".join(rows) + "\n"


def time_ratios(records: list[dict]) -> str:
    """EMCL's training time beside La-MAML's and MER's, from the same run (Fig. 2)."""
    done = [r for r in records if "diverged" not in r]
    mean = {n: statistics.fmean(r["train_s"] for r in done if r["label"] == n) for n in dict.fromkeys(r["label"] for r in done)}
    return "".join(f"time ratio emcl / {other}: {mean['emcl'] / mean[other]:.2f}\n" for other in ("lamaml", "mer") if "emcl" in mean and other in mean)
