"""``mclnf continual``: one signal as a task stream, learned by one learner (or all), with every output.

After each task i the learner predicts the whole signal once; the quality on every task j (its own
samples) fills row i of the matrix R (the layout's primary metric: PSNR in dB, IoU for occupancy),
and the whole signal's metrics are kept. BWT = mean_{j < T} (R[T][j] − R[j][j]) over the first
T − 1 tasks (Lopez-Paz & Ranzato, 2017), in the metric's units. A checkpoint after every task makes
the run resumable (``--resume``) and bit-exact with an uninterrupted one. ``--learner all`` runs every
learner on the same stream into ``OUT/<learner>`` and writes ``comparison.md`` and ``comparison.png``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch

from mclnf.config import ContinualConfig, RunOptions, learner_options, load_configured_signal, resolve
from mclnf.errors import DivergedError, MclnfError
from mclnf.eval.metrics import backward_transfer
from mclnf.eval.plots import plot_comparison, plot_matrix
from mclnf.eval.tables import comparison_table
from mclnf.io import load_checkpoint, save_checkpoint, write_text
from mclnf.learners import CONTINUAL_LEARNERS, Learner
from mclnf.options import to_dict
from mclnf.runs import Run, prepare_out, write_reconstruction
from mclnf.signals import Signal, signal_kind
from mclnf.signals.tasks import Task, split_signal
from mclnf.train import learn_task

RESUMABLE = tuple(f.name for f in dataclasses.fields(RunOptions))


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
    """Learn the stream with ``cfg.learner`` in ``out`` (continuing from its checkpoint if there is one and ``cfg.resume``)."""
    metric = signal.layout.primary_metric
    learner = CONTINUAL_LEARNERS[cfg.learner].for_signal(signal, tasks, cfg.field_config(signal.layout), learner_options(cfg))
    rows: list[dict] = []
    if cfg.resume and (out / "checkpoint.pt").is_file():
        ck = load_checkpoint(out / "checkpoint.pt", ("rows", "learner"))
        learner.load_state_dict(ck["learner"])
        rows = ck["rows"]
    for task in tasks[len(rows) :]:
        try:
            seconds = learn_task(learner, task, cfg.steps, progress=cfg.progress)
        except DivergedError as e:  # the checkpoint of the last finished task stays as it was
            kept = f"the checkpoint after task {len(rows)} is kept (--resume continues from it)" if rows else "no checkpoint was written yet"
            raise DivergedError(e.step, e.loss, None, e.what, where=f" ({cfg.learner}, task {task.index + 1} of {len(tasks)})", kept=kept) from None
        per_task, whole = evaluate_stream(learner, signal, tasks)
        rows.append({"task": task.index, "tasks": per_task, "whole": whole, **seconds,
                     "reconstruction": reconstruction_after_task(learner, signal, out / f"after_task{task.index + 1}{signal.layout.suffix}")})  # fmt: skip
        save_checkpoint(out / "checkpoint.pt", {"config": to_dict(cfg), "rows": rows, "learner": learner.state_dict()})
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
        "step_ms": 1000 * sum(r["train_s"] for r in rows) / steps, "rows": rows, "config": to_dict(cfg),
        "layout": signal.layout.to_dict(), "torch": torch.__version__, "threads": torch.get_num_threads(),
    }  # fmt: skip
    plot_matrix(R, metric, out / "matrix.png", title=f"{Path(cfg.signal).name} · {cfg.learner} · {len(tasks)} tasks")
    write_text(out / "metrics.json", json.dumps(record, indent=1))
    return record


def continual(cfg: ContinualConfig) -> list[dict]:
    """Run ``cfg`` (one learner, or every learner into ``OUT/<learner>``); returns the run records."""
    cfg = resolve(cfg, signal_kind(cfg.signal))
    signal = load_configured_signal(cfg)  # every input error before the output folder is touched
    tasks = split_signal(signal, cfg.split, cfg.tasks, cfg.grid)
    out = prepare_out(cfg.out or Path("runs") / f"continual-{Path(cfg.signal).stem}-{cfg.learner}", cfg.resume, cfg.overwrite)
    cfg = dataclasses.replace(cfg, out=out)
    with Run(out, "continual", to_dict(cfg), cfg.resume, RESUMABLE) as run:
        if cfg.learner != "all":
            return [run_learner(cfg, signal, tasks, out)]
        records = []
        for name in CONTINUAL_LEARNERS:
            sub = run.mkdir(out / name)
            done = cfg.resume and (sub / "metrics.json").is_file()
            records.append(json.loads((sub / "metrics.json").read_text()) if done else run_learner(dataclasses.replace(cfg, learner=name, out=sub), signal, tasks, sub))
        write_text(out / "comparison.md", comparison_table(records))
        plot_comparison(records, out / "comparison.png", title=f"{Path(cfg.signal).name} · {len(tasks)} tasks · {cfg.steps} steps per task")
    return records
