"""``mclnf meta-test``: test-time optimization from meta-learned initializations, against baselines.

The meta-test signals are DATASET's meta-test part, loaded with the run's own options (resize, clip,
split seed …) and checked to be the files the run left out. Every meta-test signal arrives as the
run's task stream. For every step count s of ``steps`` (1, 2, 4, …, 4096 by default) each method learns
the stream afresh with s steps per task and the whole signal is scored (PSNR and SSIM, PESQ for audio).

The offline references ``mol`` and ``ol`` learn the whole signal, so "s steps per task" needs an accounting
(``offline_budget``; the MCL-NF paper's Table 1 does not say which it used), and both are scored by default:

* ``stream`` (named ``mol``, ``ol``): s·T steps, each of one task's batch drawn from the whole signal — the
  samples the stream's methods see, but T× the updates each MCL-NF module gets;
* ``full`` (named ``mol (full batch)``, ``ol (full batch)``): s steps, each of T tasks' batches (the whole
  signal when batches are whole tasks) — equal updates per parameter *and* equal samples seen. MOL's
  meta-training inner steps are full-batch too, so this is also the budget it was meta-trained for.

Each meta method meets the stream with its own test-time learner (:meth:`mclnf.learners.MetaMethod.test_learner`) and the inner
loop's optimizer (SGD at the inner learning rate) unless ``test_optimizer`` is given; the baselines
(``ol``, ``cl``, ``er``, ``ewc``, ``mer``, ``modular``) start from random initializations with
``baseline_optimizer`` (Adam 1e-4, as ``mclnf continual``). ``baselines_only`` scores the baselines alone (the runs
still define the dataset, its tasks and the field): a baseline added to a comparison does not re-score the runs.

Outputs: ``table.md`` (MCL-NF's Table 1: Step 1 / Best (step) / Final, per metric), ``compute.md``
(Table 6: parameters, peak memory of one test-time step per task — allocations, see
:func:`~mclnf.eval.memory.allocated_peak_mib` — episodes/s, final PSNR), ``psnr_vs_step.png`` (Fig. 2),
``grid_step{s}.png`` for images (Fig. 3; reconstructions of the first signals, one row per method) or
reconstruction files for audio/video, ``metrics.json`` and ``run.json``. An *episode* is one
test-time optimization step on one task (one batch).

Each method's record is written to ``methods/`` as soon as the method is done (``NN-<method>.json`` to
read, ``NN-<method>.pt`` with its reconstructions, exactly as scored), so an interrupted run loses at most
the method it was scoring: ``--resume`` (same options) reads the methods done and scores the others, and
writes the tables an uninterrupted run writes. ``--device`` runs the test-time learners there.

Each method logs to ``logs/NN-<method>.log.jsonl`` (and, with ``--tensorboard``, ``tensorboard/NN-<method>/``;
:mod:`mclnf.tracking`), started afresh whenever the method is scored: the training loss of the logged test-time
steps and, at the end of every test-time run (a signal, a step count s), its metrics (an ``eval`` line; TensorBoard
also gets the reconstructions of the first ``grid_signals`` signals). Steps count over all the method's test-time
runs — signal by signal, step count by step count — so the log thins as any long log does; every line names its
``signal`` and ``steps_per_task`` (train lines their ``task`` too). Test-time seconds (``episodes/s``) leave out
the logging.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import torch

from mclnf.config import MetaTestConfig, RunOptions, loader_options
from mclnf.errors import DivergedError, MclnfError
from mclnf.eval.memory import allocated_peak_mib
from mclnf.eval.metrics import finite_mean
from mclnf.eval.plots import plot_meta_test, plot_reconstruction_grid
from mclnf.eval.tables import compute_table, summarize, table1
from mclnf.io import atomic_path, load_checkpoint, save_checkpoint, write_text
from mclnf.learners import CONTINUAL_LEARNERS, Learner, LearnerOptions
from mclnf.options import to_dict
from mclnf.runs import MetaRun, Run, load_init, open_part_log, prepare_out
from mclnf.runtime import Precision, on_device, tensors_to
from mclnf.signals import Signal
from mclnf.signals.datasets import MetaDataset, load_dataset
from mclnf.signals.tasks import Task, split_signal
from mclnf.tracking import Tracker
from mclnf.train import learn_task

RESUMABLE = ("log_every", "tensorboard", *(f.name for f in dataclasses.fields(RunOptions)))  # may change on --resume


def run_spec(spec: Path) -> tuple[Path, str | None]:
    """A RUN argument: a meta-train run folder, or ``FOLDER:METHOD`` — its θ₀ scored as METHOD, a method that meta-trains
    alike (``runs/mol:maml-cl``: MAML+CL from MOL's θ₀, without meta-training it twice)."""
    folder, _, method = str(spec).rpartition(":")
    return (Path(folder), method) if folder and not spec.exists() and Path(folder).exists() else (spec, None)


def check_dataset(runs: list[MetaRun], dataset: str) -> MetaDataset:
    """DATASET's meta-test split, checked to be the one every run was meta-trained beside."""
    cfg = runs[0].config
    for r in runs[1:]:
        if r.test_files != runs[0].test_files or r.method.layout != runs[0].method.layout:
            raise MclnfError(f"{r.path}: meta-tested together with {runs[0].path} but its meta-test split or signal layout differs")
        if (r.config.tasks, r.config.split) != (cfg.tasks, cfg.split):
            raise MclnfError(f"{r.path}: its task stream ({r.config.tasks} tasks) differs from {runs[0].path}'s ({cfg.tasks})")
    lists = None if cfg.train_list is None else (cfg.train_list, cfg.test_list)
    ds = load_dataset(dataset, loader_options(cfg), cfg.test_fraction, cfg.split_seed, lists, cfg.clip, cfg.block_views)
    if ds.test_files != runs[0].test_files:
        raise MclnfError(f"{dataset}: its meta-test split differs from the one {runs[0].path} was meta-trained beside (different files or split options)")
    if ds.layout != runs[0].method.layout:
        raise MclnfError(f"{dataset}: its signals ({ds.layout}) differ from those {runs[0].path} was meta-trained on ({runs[0].method.layout})")
    return ds


def make_learner(entry: MetaRun | str, signal: Signal, tasks: list[Task], cfg: MetaTestConfig, base, batch: int) -> Learner:
    """A meta run's test-time learner from its θ₀, or a baseline (a continual learner's name) from a random initialization (on ``cfg.device``)."""
    if isinstance(entry, str):
        opts = LearnerOptions(optimizer=cfg.baseline_optimizer, lr=cfg.baseline_lr, batch_size=batch, seed=cfg.seed)
        with torch.device(cfg.device):
            return CONTINUAL_LEARNERS[entry].for_signal(signal, tasks, base, opts)
    lr = cfg.test_lr or (entry.config.inner_lr if cfg.test_optimizer in (None, "sgd") else None)
    opts = LearnerOptions(optimizer=cfg.test_optimizer or "sgd", lr=lr, batch_size=batch, seed=cfg.seed)
    with torch.device(cfg.device):
        return entry.method.test_learner(signal, tasks, opts, entry.theta)


OFFLINE = ("mol", "ol")  # the methods that learn the whole signal at once


def entries(runs: list[MetaRun], cfg: MetaTestConfig) -> list[tuple[MetaRun | str, str | None]]:
    """(method, offline budget) in scoring order: the runs (unless ``baselines_only``), then the baselines; an offline one once per ``offline_budget``."""
    method = lambda e: e if isinstance(e, str) else e.config.method  # noqa: E731
    return [(e, budget) for e in [*([] if cfg.baselines_only else runs), *cfg.baselines] for budget in (cfg.offline_budget if method(e) in OFFLINE else [None])]


def method_name(entry: MetaRun | str, budget: str | None, runs: list[MetaRun]) -> str:
    """How a method's record is named: the baseline's or run's method, with its run folder when runs share one, and its budget."""
    name = entry if isinstance(entry, str) else entry.name
    if not isinstance(entry, str) and sum(r.name == name for r in runs) > 1:
        name += f" [{(entry.path if entry.path.is_dir() else entry.path.parent).name}]"
    return name + (" (full batch)" if budget == "full" else "")


def budget_note(records: list[dict], tasks: int) -> str:
    """The line under the tables that says how the offline references were counted (none without them)."""
    if not any(r["name"].split(" ")[0] in OFFLINE for r in records):
        return ""
    return (f"mol, ol: s·{tasks} steps of one task's batch from the whole signal (the samples the stream's methods see, {tasks}× the updates of a "
            f"module); (full batch): s steps of {tasks} tasks' batches (equal updates per parameter and equal samples). s: steps per task.\n\n")


def score(entry: MetaRun | str, budget: str | None, signals: list[Signal], cfg: MetaTestConfig, runs: list[MetaRun], steps: list[int], grid_steps: list[int],
          tracker: Tracker | None = None) -> dict:  # fmt: skip
    """Every step count of one method (an offline one under ``budget``) on every meta-test signal (on ``cfg.device``); returns
    its record. ``tracker`` logs the test-time steps (counted over all the method's test-time runs) and the metrics at the end
    of every run."""
    layout, first = runs[0].method.layout, runs[0].config
    name = method_name(entry, budget, runs)
    metric_names = list(layout.metrics(signals[0].values, signals[0].values))
    per_step: dict[int, list[dict]] = {s: [] for s in steps}
    seconds, episodes, recon, offset = 0.0, 0, {}, 0
    precision = Precision(cfg.precision, cfg.device)  # the test-time steps' arithmetic; predictions and metrics float32
    for i, signal in enumerate(signals):
        tasks = split_signal(signal, first.split, first.tasks)
        batch = cfg.batch_size or max(len(t) for t in tasks)
        if budget == "full":  # one task, the whole signal, in batches of T tasks' samples
            whole = split_signal(signal, first.split, 1)
            tasks, batch = whole, min(batch * len(tasks), len(whole[0]))
        for s in steps:
            learner = make_learner(entry, signal, tasks, cfg, runs[0].base_field, batch)
            per_task, taken = s * learner.updates_per_step, 0.0  # training steps of a task; seconds of this run
            try:
                for task in tasks:
                    view = None if tracker is None else tracker.at(offset + task.index * per_task, seconds + taken, signal=i + 1, steps_per_task=s, task=task.index + 1)
                    timed = learn_task(learner, task, s, progress=False, tracker=view, precision=precision)
                    taken += timed["train_s"] + timed["after_task_s"]  # the logging left out
            except DivergedError as e:
                hint = f"try a lower {'--baseline-lr' if isinstance(entry, str) else '--test-lr'}"
                raise DivergedError(e.step, e.loss, None, e.what, where=f" (meta-test {name}, signal {i + 1}, {s} steps per task)", kept="meta-test keeps no checkpoint", hint=hint) from None
            episodes += s * len(tasks)
            pred = learner.predict(signal.eval_coords)
            per_step[s].append(layout.metrics(pred, signal.eval_values))
            if tracker is not None:
                media = dict(layout=layout, pred=pred.cpu(), truth=signal.eval_values.cpu()) if i < cfg.grid_signals else {}
                tracker.at(offset, seconds, signal=i + 1, steps_per_task=s).evaluation(len(tasks) * per_task, per_step[s][-1], taken, **media)
            seconds, offset = seconds + taken, offset + len(tasks) * per_task
            if s in grid_steps and i < cfg.grid_signals:
                recon[(s, i)] = layout.reconstruct(on_device(learner.predict, cfg.device))
        if cfg.progress:
            done = "  ".join(f"{s}:{per_step[s][-1]['psnr']:.2f}" for s in steps)
            print(f"meta-test {name} signal {i + 1}/{len(signals)}  PSNR by step  {done}", file=sys.stderr)

    tasks = split_signal(signals[0], first.split, 1 if budget == "full" else first.tasks)  # the memory of test-time optimization: one step per task
    learner = make_learner(entry, signals[0], tasks, cfg, runs[0].base_field, batch)
    peak = allocated_peak_mib(lambda: [learn_task(learner, task, 1, progress=False, precision=precision) for task in tasks])
    curve = {s: {m: finite_mean([r[m] for r in per_step[s]]) for m in metric_names} for s in steps}
    return {"name": name, "kind": "baseline" if isinstance(entry, str) else "meta", "tasks": first.tasks, "curve": curve, "per_signal": per_step,
            "summary": {m: summarize(curve, m) for m in metric_names}, "params": sum(p.numel() for p in learner.model.parameters()), "peak_mib": peak,
            "episodes_per_s": episodes / seconds, "test_s": seconds, "recon": recon}  # fmt: skip


def meta_test(cfg: MetaTestConfig) -> list[dict]:
    """Meta-test ``cfg.runs`` and the baselines on the dataset's meta-test signals; returns one record per method."""
    steps = sorted(set(cfg.steps))
    grid_steps = sorted(set(cfg.grid_steps or [steps[0], steps[-1]]))
    runs = [load_init(*run_spec(p)) for p in cfg.runs]
    ds = check_dataset(runs, cfg.dataset)
    signals = ds.test[: cfg.signals] if cfg.signals else ds.test
    out = prepare_out(cfg.out or Path(runs[0].path) / "meta-test", cfg.resume, cfg.overwrite)
    cfg = dataclasses.replace(cfg, out=out)
    on = [tensors_to(s, torch.device(cfg.device)) for s in signals]
    with Run(out, "meta-test", to_dict(cfg), cfg.resume, RESUMABLE) as run:
        run.mkdir(out / "methods")
        records = [method_record(k, entry, budget, on, cfg, runs, steps, grid_steps, run) for k, (entry, budget) in enumerate(entries(runs, cfg))]
        write_outputs(cfg, records, signals, ds, steps, grid_steps, runs[0].config)
    return records


def method_files(out: Path, k: int, name: str) -> tuple[Path, Path]:
    """``methods/NN-<name>.json`` and ``.pt`` of the k-th method (numbered: two runs may share a method's name)."""
    tag = f"{k + 1:02d}-" + re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-")
    return out / "methods" / f"{tag}.json", out / "methods" / f"{tag}.pt"


def method_record(k: int, entry: MetaRun | str, budget: str | None, signals: list[Signal], cfg: MetaTestConfig, runs: list[MetaRun], steps: list[int],
                  grid_steps: list[int], run: Run) -> dict:  # fmt: skip
    """The k-th method's record: read from ``methods/`` when resuming a run that scored it, else scored (:func:`score`, logged to
    ``logs/NN-<method>.log.jsonl``) and written there at once — the ``.pt`` (exact, with the reconstructions), then the ``.json`` that marks it done."""
    as_json, exact = method_files(cfg.out, k, method_name(entry, budget, runs))
    if cfg.resume and as_json.is_file():
        return load_checkpoint(exact, ("name", "curve", "per_signal", "summary", "recon"))
    with open_part_log(run, cfg, as_json.stem) as tracker:
        record = score(entry, budget, signals, cfg, runs, steps, grid_steps, tracker=tracker)
    save_checkpoint(exact, record)
    write_text(as_json, json.dumps({key: v for key, v in record.items() if key != "recon"}, indent=1, default=str))
    return record


def write_outputs(cfg: MetaTestConfig, records: list[dict], signals: list[Signal], ds: MetaDataset, steps: list[int], grid_steps: list[int], first) -> None:
    """The tables, the curve plot, the reconstruction grids (images) or files (other kinds) and ``metrics.json``."""
    layout, out = ds.layout, cfg.out
    metric_names = list(records[0]["summary"])
    write_text(out / "table.md", table1(records, metric_names) + budget_note(records, first.tasks))
    write_text(out / "compute.md", compute_table(records, layout.primary_metric))
    plot_meta_test(records, layout.primary_metric, out / f"{layout.primary_metric}_vs_step.png", title=f"{cfg.dataset} · {len(signals)} meta-test signals · {first.tasks} tasks")
    for s in grid_steps:
        if layout.kind == "image":
            plot_reconstruction_grid(records, signals[: cfg.grid_signals], layout, s, out / f"grid_step{s}.png")
        else:
            for r in records:
                tag = r["name"].replace(" ", "").replace("(", "-").replace(")", "")
                with atomic_path(out / f"{tag}_step{s}{layout.suffix}") as tmp:
                    layout.save(r["recon"][(s, 0)], tmp)
    summary = {"dataset": cfg.dataset, "signals": [s.name for s in signals], "steps": steps, "tasks": first.tasks, "split": first.split, "precision": cfg.precision,
               "runs": [str(p) for p in cfg.runs], "methods": [{k: v for k, v in r.items() if k != "recon"} for r in records], "config": to_dict(cfg)}  # fmt: skip
    write_text(out / "metrics.json", json.dumps(summary, indent=1, default=str))


def summary(records: list[dict], out: Path) -> str:
    """What ``mclnf meta-test`` prints at the end: Table 1 of the first metric, the compute table, the output folder."""
    metrics = list(records[0]["summary"])
    return table1(records, metrics[:1]) + budget_note(records, records[0].get("tasks", "T")) + compute_table(records, metrics[0]) + f"outputs in {out}\n"
