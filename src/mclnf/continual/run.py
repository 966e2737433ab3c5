"""``mclnf continual``: one signal as a task stream, learned by one learner (or all), with every output.

After each task i the learner predicts the whole signal once; the quality on every task j (its own
samples) fills row i of the matrix R (the layout's primary metric: PSNR in dB, IoU for occupancy),
and the whole signal's metrics are kept. BWT = mean_{j < T} (R[T][j] − R[j][j]) over the first
T − 1 tasks (Lopez-Paz & Ranzato, 2017), in the metric's units. A checkpoint after every task makes
the run resumable (``--resume``) and bit-exact with an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mclnf.checkpoint import load_checkpoint, save_checkpoint, write_text
from mclnf.continual.learners import LEARNERS, Learner, LearnerOptions, build_learner
from mclnf.errors import DivergedError, MclnfError
from mclnf.eval.plots import plot_comparison, plot_matrix
from mclnf.fit import FitConfig, load_fit_signal, make_dir, prepare_out, write_reconstruction
from mclnf.signals import Signal
from mclnf.signals.tasks import Task, split_signal

RESUMABLE = ("resume", "overwrite", "progress", "out")


@dataclass
class ContinualConfig(FitConfig):
    """A :class:`FitConfig` (signal, field, optimizer options) plus the stream and the learner.
    ``steps`` counts training steps *per task*."""

    steps: int = 500
    tasks: int = 4
    split: str | None = None
    grid: tuple[int, ...] | None = None
    learner: str = "cl"  # a name of LEARNERS, or "all"
    options: LearnerOptions = field(default_factory=LearnerOptions)

    def learner_options(self) -> LearnerOptions:
        return dataclasses.replace(self.options, optimizer=self.optimizer, lr=self.lr, batch_size=self.batch_size, seed=self.seed)


def flat(config: dict) -> dict:
    """A config dict with its learner options at the top level (as the CLI names them); the run's
    optimizer, lr, batch size and seed are the top level's (the options' copies are not used)."""
    return {**config.get("options", {}), **{k: v for k, v in config.items() if k != "options"}}


def backward_transfer(R: list[list[float]]) -> float | None:
    """mean_{j < T−1} R[T−1][j] − R[j][j] (0-based); None for a single task."""
    T = len(R)
    return None if T < 2 else sum(R[-1][j] - R[j][j] for j in range(T - 1)) / (T - 1)


def evaluate_stream(learner: Learner, signal: Signal, tasks: list[Task]) -> tuple[list[dict], dict]:
    """Metrics of every task and of the whole signal, from one prediction of the whole signal."""
    pred = learner.predict(signal.eval_coords)
    return [t.metrics(pred[t.eval_sample_index]) for t in tasks], signal.layout.metrics(pred, signal.eval_values)


def reconstruction_after_task(learner: Learner, signal: Signal, path: Path) -> str | None:
    try:
        return write_reconstruction(learner.predict, signal.layout, path).name
    except MclnfError as e:  # e.g. an occupancy field with no surface yet
        print(f"warning: no reconstruction written to {path}: {e}", file=sys.stderr)
        return None


def run_learner(cfg: ContinualConfig, signal: Signal, tasks: list[Task], out: Path) -> dict:
    """Learn the stream with ``cfg.learner`` in ``out`` (resuming from its checkpoint if asked)."""
    metric = signal.layout.primary_metric
    learner = build_learner(cfg.learner, signal, tasks, cfg.field_config(signal), cfg.learner_options())
    rows: list[dict] = []
    if cfg.resume and (out / "checkpoint.pt").is_file():
        ck = load_checkpoint(out / "checkpoint.pt")
        was, now = flat(ck["config"]), flat(cfg.to_dict())
        changed = [k for k, v in was.items() if k not in RESUMABLE and now.get(k) != v]
        if changed:
            k = changed[0]
            raise MclnfError(f"--resume: {out} was run with --{k.replace('_', '-')} {was[k]}, not {now[k]}")
        learner.load_state_dict(ck["learner"])
        rows = ck["rows"]
    make_dir(out)
    for task in tasks[len(rows) :]:
        try:
            seconds = learner.learn(task, cfg.steps, progress=cfg.progress)
        except DivergedError as e:  # the checkpoint of the last finished task stays as it was
            kept = f"the checkpoint after task {len(rows)} is kept (--resume continues from it)" if rows else "no checkpoint was written yet"
            raise DivergedError(e.step, e.loss, None, e.what, where=f" ({cfg.learner}, task {task.index + 1} of {len(tasks)})", kept=kept) from None
        per_task, whole = evaluate_stream(learner, signal, tasks)
        rows.append({"task": task.index, "tasks": per_task, "whole": whole, **seconds,
                     "reconstruction": reconstruction_after_task(learner, signal, out / f"after_task{task.index + 1}{signal.layout.suffix}")})  # fmt: skip
        save_checkpoint(out / "checkpoint.pt", {"config": cfg.to_dict(), "rows": rows, "learner": learner.state_dict()})
        if cfg.progress:
            seen = "  ".join(f"{m[metric]:.4g}" for m in per_task[: task.index + 1])
            print(f"{cfg.learner} after task {task.index + 1}/{len(tasks)}: {metric} whole {whole[metric]:.4g}  tasks seen {seen}", file=sys.stderr)

    R = [[m[metric] for m in row["tasks"]] for row in rows]
    steps = cfg.steps * len(tasks)
    record = {
        "signal": cfg.signal, "kind": signal.kind, "learner": cfg.learner, "tasks": len(tasks), "split": cfg.split,
        "steps_per_task": cfg.steps, "metric": metric, "R": R, "bwt": backward_transfer(R), "final": rows[-1]["whole"],
        "whole_after_task": [row["whole"][metric] for row in rows], "params": sum(p.numel() for p in learner.model.parameters()),
        "train_s": sum(r["train_s"] for r in rows), "after_task_s": sum(r["after_task_s"] for r in rows),
        "step_ms": 1000 * sum(r["train_s"] for r in rows) / steps, "rows": rows, "config": cfg.to_dict(),
        "layout": signal.layout.to_dict(), "torch": torch.__version__, "threads": torch.get_num_threads(),
    }  # fmt: skip
    plot_matrix(R, metric, out / "matrix.png", title=f"{Path(cfg.signal).name} · {cfg.learner} · {len(tasks)} tasks")
    write_text(out / "metrics.json", json.dumps(record, indent=1))
    return record


def load_stream(cfg: ContinualConfig) -> tuple[Signal, list[Task]]:
    signal = load_fit_signal(cfg)
    return signal, split_signal(signal, cfg.split, cfg.tasks, cfg.grid)


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


def continual(cfg: ContinualConfig) -> list[dict]:
    """Run ``cfg`` (one learner, or every learner into ``OUT/<learner>``); returns the run records."""
    if cfg.learner != "all" and cfg.learner not in LEARNERS:
        raise MclnfError(f"--learner {cfg.learner}: unknown; choose one of {', '.join(LEARNERS)} or all")
    cfg = cfg.resolved()
    if cfg.device != "cpu":
        raise MclnfError(f"--device {cfg.device}: continual runs are CPU-only in this release (mclnf fit runs on GPUs)")
    signal, tasks = load_stream(cfg)  # every input error before the output folder is touched
    out = Path(cfg.out) if cfg.out else Path("runs") / f"continual-{Path(cfg.signal).stem}-{cfg.learner}"
    names = list(LEARNERS) if cfg.learner == "all" else [cfg.learner]
    prepare_out(out, cfg.resume, cfg.overwrite, resume_file=f"{names[0]}/checkpoint.pt" if cfg.learner == "all" else "checkpoint.pt")
    cfg = dataclasses.replace(cfg, out=out)
    if cfg.learner != "all":
        return [run_learner(cfg, signal, tasks, out)]
    records = []
    for name in names:
        sub = out / name
        done = cfg.resume and (sub / "metrics.json").is_file()
        records.append(json.loads((sub / "metrics.json").read_text()) if done else run_learner(dataclasses.replace(cfg, learner=name, out=sub), signal, tasks, sub))
    write_text(out / "comparison.md", comparison_table(records))
    plot_comparison(records, out / "comparison.png", title=f"{Path(cfg.signal).name} · {len(tasks)} tasks · {cfg.steps} steps per task")
    return records
