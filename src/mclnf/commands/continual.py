"""``mclnf continual``: one signal as a task stream, learned by one learner (or all), with every output.

After each task i the learner predicts the whole signal once; the quality on every task j (its own
samples) fills row i of the matrix R (the layout's primary metric: PSNR in dB, IoU for occupancy),
and the whole signal's metrics are kept. BWT = mean_{j < T} (R[T][j] − R[j][j]) over the first
T − 1 tasks (Lopez-Paz & Ranzato, 2017), in the metric's units. A checkpoint after every task makes
the run resumable (``--resume``) and bit-exact with an uninterrupted one. ``--learner all`` runs every
learner on the same stream into ``OUT/<learner>`` and writes ``comparison.md`` and ``comparison.png``.
Each learner's folder holds its ``log.jsonl`` (and ``tensorboard/``; :mod:`mclnf.tracking`): the training loss
over the whole stream (steps counted from the first task's first), and the evaluations after every task and,
with ``--eval-every N``, every N steps within a task.

``--device`` (checked by :func:`mclnf.runtime.check_device`) holds the learner's model and optimizer, the signal and
every task's tensors; predictions come back to the CPU for the reconstructions and the log, whose metrics are
plain floats. Checkpoints hold CPU tensors, so a run stopped on one device resumes on another (``--device`` may
change on ``--resume``; a device's random draws differ, so the result is then not bit-exact).
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
from mclnf.runtime import Precision, on_device, tensors_to
from mclnf.signals import Signal, signal_kind
from mclnf.signals.tasks import Task, split_signal
from mclnf.tracking import TENSORBOARD, Tracker, open_tracker
from mclnf.train import learn_task

RESUMABLE = ("eval_every", "log_every", "tensorboard", "device", *(f.name for f in dataclasses.fields(RunOptions)))  # may change on --resume


def to_cpu(state):
    """``state`` (a learner's state dict: nested dicts, lists and tuples) with every tensor on the CPU."""
    if isinstance(state, torch.Tensor):
        return state.cpu()
    if isinstance(state, dict):
        return {k: to_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(to_cpu(v) for v in state)
    return state


def to_device(state, device: torch.device):
    """``state`` loaded from a checkpoint (CPU tensors) with its tensors on ``device`` — but random-generator states
    (byte tensors), which ``torch.Generator.set_state`` takes on the CPU."""
    if isinstance(state, torch.Tensor):
        return state if state.dtype == torch.uint8 else state.to(device)
    if isinstance(state, dict):
        return {k: to_device(v, device) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(to_device(v, device) for v in state)
    return state


def evaluate_stream(learner: Learner, signal: Signal, tasks: list[Task]) -> tuple[list[dict], dict, torch.Tensor]:
    """Metrics of every task and of the whole signal, from one prediction of the whole signal (returned too)."""
    pred = learner.predict(signal.eval_coords)
    return [t.metrics(pred[t.eval_sample_index]) for t in tasks], signal.layout.metrics(pred, signal.eval_values), pred


def log_evaluation(tracker: Tracker, step: int, seconds: float, learner: Learner, signal: Signal, tasks: list[Task]) -> tuple[list[dict], dict]:
    """Evaluate the stream (:func:`evaluate_stream`) and log it: the whole signal's metrics, each task's primary metric, the reconstruction."""
    per_task, whole, pred = evaluate_stream(learner, signal, tasks)
    metric = signal.layout.primary_metric
    tracker.evaluation(step, {**whole, **{f"task{j + 1}_{metric}": m[metric] for j, m in enumerate(per_task)}}, seconds, layout=signal.layout, pred=pred.cpu(),
                       truth=signal.eval_values.cpu())  # fmt: skip
    return per_task, whole


def reconstruction_after_task(learner: Learner, signal: Signal, path: Path, device: torch.device) -> str | None:
    try:
        return write_reconstruction(on_device(learner.predict, device), signal.layout, path).name
    except MclnfError as e:  # e.g. an occupancy field with no surface yet
        print(f"warning: no reconstruction written to {path}: {e}", file=sys.stderr)
        return None


def run_learner(cfg: ContinualConfig, signal: Signal, tasks: list[Task], run: Run, out: Path) -> dict:
    """Learn the stream with ``cfg.learner`` in ``out`` (continuing from its checkpoint if there is one and ``cfg.resume``),
    on ``cfg.device`` (where ``signal`` and ``tasks`` are)."""
    device = torch.device(cfg.device)
    with torch.device(device):
        learner = CONTINUAL_LEARNERS[cfg.learner].for_signal(signal, tasks, cfg.field_config(signal.layout), learner_options(cfg))
    rows: list[dict] = []
    precision = Precision(cfg.precision, device)
    if cfg.resume and (out / "checkpoint.pt").is_file():
        ck = load_checkpoint(out / "checkpoint.pt", ("rows", "learner"))
        learner.load_state_dict(to_device(ck["learner"], device))
        rows = ck["rows"]
        precision.load_state_dict(ck.get("precision", {}))  # fp16: the loss scale continues
    per_task_steps = cfg.steps * learner.updates_per_step  # steps of the training loop (MER: its pieces)
    with open_tracker(out, len(rows) * per_task_steps if cfg.resume else None, cfg.log_every, run.mkdir(out / TENSORBOARD) if cfg.tensorboard else None) as tracker:
        for task in tasks[len(rows) :]:
            learn_stream_task(cfg, signal, tasks, task, learner, rows, tracker, out, precision)
    return write_record(cfg, signal, tasks, learner, rows, out)


def learn_stream_task(cfg: ContinualConfig, signal: Signal, tasks: list[Task], task: Task, learner: Learner, rows: list[dict], tracker: Tracker, out: Path,
                      precision: Precision | None = None) -> None:  # fmt: skip
    """Learn ``task`` (its steps in ``precision``'s arithmetic), evaluate the stream after it, append its row to ``rows`` and write the checkpoint."""
    metric = signal.layout.primary_metric
    offset = task.index * cfg.steps * learner.updates_per_step
    view = tracker.at(offset, sum(r["train_s"] for r in rows), task=task.index + 1)  # steps and training seconds over the stream

    def evaluate(step: int, loss: float, seconds: float) -> dict:  # within the task (--eval-every): for the log and the progress bar
        return {metric: log_evaluation(view, step, seconds, learner, signal, tasks)[1][metric]}

    try:
        seconds = learn_task(learner, task, cfg.steps, progress=cfg.progress, tracker=view, eval_every=cfg.eval_every, on_eval=evaluate, precision=precision)
    except DivergedError as e:  # the checkpoint of the last finished task stays as it was
        kept = f"the checkpoint after task {len(rows)} is kept (--resume continues from it)" if rows else "no checkpoint was written yet"
        raise DivergedError(e.step, e.loss, None, e.what, where=f" ({cfg.learner}, task {task.index + 1} of {len(tasks)})", kept=kept) from None
    per_task, whole = log_evaluation(view, cfg.steps * learner.updates_per_step, seconds["train_s"], learner, signal, tasks)  # flushed before the checkpoint
    rows.append({"task": task.index, "tasks": per_task, "whole": whole, **seconds,
                 "reconstruction": reconstruction_after_task(learner, signal, out / f"after_task{task.index + 1}{signal.layout.suffix}", torch.device(cfg.device))})  # fmt: skip
    scale = {"precision": precision.state_dict()} if precision is not None and precision.scaler is not None else {}  # fp16: the loss scale
    save_checkpoint(out / "checkpoint.pt", {"config": to_dict(cfg), "rows": rows, "learner": to_cpu(learner.state_dict()), **scale})  # loads on any device
    if cfg.progress:
        seen = "  ".join(f"{m[metric]:.4g}" for m in per_task[: task.index + 1])
        print(f"{cfg.learner} after task {task.index + 1}/{len(tasks)}: {metric} whole {whole[metric]:.4g}  tasks seen {seen}", file=sys.stderr)


def write_record(cfg: ContinualConfig, signal: Signal, tasks: list[Task], learner: Learner, rows: list[dict], out: Path) -> dict:
    """``matrix.png`` and ``metrics.json`` of a learned stream; returns the record."""
    metric = signal.layout.primary_metric
    R = [[m[metric] for m in row["tasks"]] for row in rows]
    steps = cfg.steps * len(tasks)
    record = {
        "signal": cfg.signal, "kind": signal.kind, "learner": cfg.learner, "tasks": len(tasks), "split": cfg.split,
        "steps_per_task": cfg.steps, "precision": cfg.precision, "metric": metric, "R": R, "bwt": backward_transfer(R), "final": rows[-1]["whole"],
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
    tasks = split_signal(signal, cfg.split, cfg.tasks, cfg.grid)  # on the CPU: the same tasks on every device
    device = torch.device(cfg.device)
    signal, tasks = tensors_to(signal, device), [tensors_to(t, device) for t in tasks]
    out = prepare_out(cfg.out or Path("runs") / f"continual-{Path(cfg.signal).stem}-{cfg.learner}", cfg.resume, cfg.overwrite)
    cfg = dataclasses.replace(cfg, out=out)
    with Run(out, "continual", to_dict(cfg), cfg.resume, RESUMABLE) as run:
        if cfg.learner != "all":
            return [run_learner(cfg, signal, tasks, run, out)]
        records = []
        for name in CONTINUAL_LEARNERS:
            sub = run.mkdir(out / name)
            done = cfg.resume and (sub / "metrics.json").is_file()
            records.append(json.loads((sub / "metrics.json").read_text()) if done else run_learner(dataclasses.replace(cfg, learner=name, out=sub), signal, tasks, run, sub))
        write_text(out / "comparison.md", comparison_table(records))
        plot_comparison(records, out / "comparison.png", title=f"{Path(cfg.signal).name} · {len(tasks)} tasks · {cfg.steps} steps per task")
    return records
