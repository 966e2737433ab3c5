"""Optimizer studies from run records: reaching a target, summaries over seeds, tables and figures.

Everything here reads run records — the dicts ``mclnf.fit.fit`` returns and writes to ``metrics.json``
(keys ``activation``, ``optimizer``, ``lr``, ``seed``, ``curve``, ``final``, ``wall_time_s``) — and
never live fields or optimizers. A run that diverged is a record with ``"diverged"`` set (the step,
and the curve up to the last good evaluation); it counts as "not reached" and has no final value.

Example::

    records = load_records(Path("/tmp/study/image"))
    rows = summarize(records, metric="psnr", baseline="adam")
    print(markdown_table(rows, metric="psnr"))
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mclnf.eval.plots import label as metric_label  # noqa: E402
from mclnf.io import atomic_path  # noqa: E402


def load_records(root: Path) -> list[dict]:
    """Every run record (``metrics.json``, or ``diverged.json`` for a run that diverged) under ``root``."""
    root = Path(root)
    paths = sorted(root.rglob("metrics.json")) + sorted(root.rglob("diverged.json"))
    return [json.loads(p.read_text()) for p in paths]


def first_reach(curve: list[dict], metric: str, target: float, x: str) -> float | None:
    """The first ``x`` (``"step"`` or ``"time_s"``) at which ``metric`` reaches ``target``, linearly
    interpolated between the two evaluations that bracket the first crossing; ``None`` if never.

    The value at the first evaluated point already at or above ``target`` is taken when no earlier point
    exists; points with a missing or non-finite metric are skipped.
    """
    prev = None
    for point in curve:
        value = point.get(metric)
        if value is None or not math.isfinite(value):
            continue
        if value >= target:
            if prev is None or prev[1] >= value:
                return float(point[x])
            x0, v0 = prev
            return float(x0 + (target - v0) / (value - v0) * (point[x] - x0))
        prev = (point[x], value)
    return None


@dataclass
class Row:
    """One (activation, optimizer, lr) cell of a study, over its seeds."""

    activation: str
    optimizer: str
    lr: float
    seeds: int
    final_mean: float | None  # over the seeds that did not diverge
    final_std: float | None
    diverged: int
    target: float | None  # the baseline's mean final value for this activation
    steps_to_target: list[float | None] = field(default_factory=list)  # one per seed
    seconds_to_target: list[float | None] = field(default_factory=list)
    wall_time_s: float | None = None  # mean total training time
    step_time_ms: float | None = None  # mean training time per step
    time_ratio: float | None = None  # mean seconds to target / the baseline's mean total training time
    steps_ratio: float | None = None  # mean steps to target / the baseline's steps (load-independent)

    @property
    def reached(self) -> int:
        return sum(s is not None for s in self.seconds_to_target)


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def summarize(records: list[dict], metric: str, baseline: str = "adam", baseline_lr: dict[str, float] | None = None) -> list[Row]:
    """One :class:`Row` per (activation, optimizer, lr), in first-seen order.

    The target of an activation is the mean final ``metric`` of its ``baseline`` runs (at
    ``baseline_lr[activation]`` when given, else at the baseline's only or smallest lr). Steps and
    seconds to the target are :func:`first_reach` per seed; a row's ``time_ratio`` is the mean of its
    seeds' seconds to the target over the baseline's mean *total* training time (the time the baseline
    took to produce the target), and is ``None`` unless every seed of the row reached the target.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["activation"], r["optimizer"], float(r["lr"])), []).append(r)
    targets: dict[str, float] = {}
    base_seconds: dict[str, float | None] = {}
    base_steps: dict[str, float] = {}
    for act in dict.fromkeys(k[0] for k in groups):
        lrs = sorted(k[2] for k in groups if k[0] == act and k[1] == baseline)
        if not lrs:
            continue
        lr = (baseline_lr or {}).get(act, lrs[0])
        runs = [r for r in groups.get((act, baseline, float(lr)), []) if not r.get("diverged")]
        if runs:
            targets[act] = statistics.fmean(r["final"][metric] for r in runs)
            base_seconds[act] = statistics.fmean(r["wall_time_s"] for r in runs)
            base_steps[act] = statistics.fmean(r["steps"] for r in runs)
    rows = []
    for (act, opt, lr), runs in groups.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        finals = [r["final"][metric] for r in runs if not r.get("diverged")]
        target = targets.get(act)
        reach = lambda x: [None if target is None else first_reach(r["curve"], metric, target, x) for r in runs]  # noqa: E731
        steps_to, seconds_to = reach("step"), reach("time_s")
        ok = [r for r in runs if not r.get("diverged")]
        row = Row(
            activation=act, optimizer=opt, lr=lr, seeds=len(runs),
            final_mean=statistics.fmean(finals) if finals else None,
            final_std=statistics.stdev(finals) if len(finals) > 1 else (0.0 if finals else None),
            diverged=len(runs) - len(ok), target=target, steps_to_target=steps_to, seconds_to_target=seconds_to,
            wall_time_s=_mean([r["wall_time_s"] for r in ok]),
            step_time_ms=_mean([1e3 * r["wall_time_s"] / r["steps"] for r in ok]),
        )  # fmt: skip
        if seconds_to and all(s is not None for s in seconds_to) and base_seconds.get(act):
            row.time_ratio = statistics.fmean(seconds_to) / base_seconds[act]
            row.steps_ratio = statistics.fmean(steps_to) / base_steps[act]
        rows.append(row)
    return rows


def _fmt(x, spec=".1f", none="—"):
    return none if x is None else format(x, spec)


def markdown_table(rows: list[Row], metric: str, unit: str = "") -> str:
    """A Markdown table of :func:`summarize`'s rows (time to target: the mean over seeds when every seed
    reached it, else each seed's value, "—" where not reached, with the count that did)."""
    u = f" ({unit})" if unit else ""
    head = (
        f"| activation | optimizer | lr | seeds | final {metric}{u} mean ± std | target{u} | steps to target | "
        "seconds to target | time ratio vs baseline | steps ratio | ms / step | total s |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        final = "diverged" if r.final_mean is None else f"{r.final_mean:.2f} ± {r.final_std:.2f}"
        if r.diverged and r.final_mean is not None:
            final += f" ({r.diverged} diverged)"
        if r.target is None:
            steps = secs = "—"
        elif r.reached == r.seeds:
            steps, secs = f"{_mean(r.steps_to_target):.0f}", f"{_mean(r.seconds_to_target):.1f}"
        elif r.reached == 0:
            steps = secs = f"not reached ({r.reached}/{r.seeds})"
        else:  # per seed, "—" where not reached
            steps = " / ".join("—" if x is None else f"{x:.0f}" for x in r.steps_to_target) + f" ({r.reached}/{r.seeds})"
            secs = " / ".join("—" if x is None else f"{x:.1f}" for x in r.seconds_to_target) + f" ({r.reached}/{r.seeds})"
        lines.append(
            f"| {r.activation} | {r.optimizer} | {r.lr:g} | {r.seeds} | {final} | {_fmt(r.target, '.2f')} | {steps} | "
            f"{secs} | {_fmt(r.time_ratio, '.2f')} | {_fmt(r.steps_ratio, '.2f')} | {_fmt(r.step_time_ms, '.1f')} | {_fmt(r.wall_time_s, '.0f')} |"
        )
    return "\n".join(lines)


def plot_study(records: list[dict], metric: str, x: str, path: Path, title: str = "", log_x: bool = False) -> None:
    """``metric`` against ``x`` (``"step"`` or ``"time_s"``), one panel per activation, one line per
    (optimizer, lr) and seed (seeds share a colour); a diverged run's line ends with an ×."""
    acts = list(dict.fromkeys(r["activation"] for r in records))
    keys = list(dict.fromkeys((r["optimizer"], float(r["lr"])) for r in records))
    colours = {k: plt.cm.tab10(i % 10) for i, k in enumerate(keys)}
    fig, axes = plt.subplots(1, len(acts), figsize=(4.6 * len(acts), 3.8), constrained_layout=True, squeeze=False)
    for ax, act in zip(axes[0], acts):
        seen = set()
        for r in records:
            if r["activation"] != act:
                continue
            key = (r["optimizer"], float(r["lr"]))
            pts = [(c[x], c[metric]) for c in r["curve"] if c.get(metric) is not None and math.isfinite(c[metric])]
            if not pts:
                continue
            xs, ys = zip(*pts)
            label = None if key in seen else f"{key[0]} {key[1]:g}"
            seen.add(key)
            ax.plot(xs, ys, "-", color=colours[key], label=label, lw=1.2, alpha=0.9)
            if r.get("diverged"):
                ax.plot(xs[-1], ys[-1], "x", color=colours[key], ms=8)
        ax.set_title(act)
        ax.set_xlabel({"step": "step", "time_s": "training time (s)"}.get(x, x))
        ax.set_ylabel(metric_label(metric))
        if log_x:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


__all__ = ["Row", "first_reach", "load_records", "markdown_table", "plot_study", "summarize"]
