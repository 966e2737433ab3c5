"""``mclnf cl-bench``: online continual classification benchmarks, every method over seeds.

For each (method, seed) the learner sees the tasks once, in order; after each task its accuracy on
every task's test set fills row i of the accuracy matrix R (percent; multi-head streams predict
within the task's classes). ACC = mean_j R[T−1][j] (EMCL eq. 22); BWT = 1/(T−1) Σ_{j<T−1}
(R[T−1][j] − R[j][j]) (eq. 23 — divided by T − 1, as the paper). Time is training time only
(evaluation excluded). Every finished (method, seed) is written to ``runs/``, so ``--resume`` skips
it. A diverging run is recorded as such (the table says where) and the others go on. ``--device``
places the model and the task stream there.

Each (method, seed) logs to ``logs/<method>-seed<s>.log.jsonl`` (and, with ``--tensorboard``, to
``tensorboard/<method>-seed<s>/``; :mod:`mclnf.tracking`): the training loss of its logged steps, counted
over the stream from the first task's first, and after each task the accuracies of the matrix row
(``acc``, their mean, and ``task<j>_acc``). A (method, seed) that runs again (``--resume`` after an
interruption) starts its log afresh.
"""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
import sys
from pathlib import Path

import torch

from mclnf.config import BenchConfig, RunOptions
from mclnf.errors import DivergedError, MclnfError
from mclnf.eval.metrics import backward_transfer
from mclnf.eval.plots import plot_matrix, plot_times
from mclnf.eval.tables import table3, time_ratios
from mclnf.fields.classifiers import build_model
from mclnf.io import write_text
from mclnf.learners import ONLINE_LEARNERS, Learner, LearnerOptions
from mclnf.losses import head_loss
from mclnf.options import to_dict
from mclnf.runs import Run, open_part_log, prepare_out
from mclnf.runtime import tensors_to
from mclnf.signals.classification import Benchmark, ClassTask, load_benchmark
from mclnf.tracking import Tracker
from mclnf.train import learn_task

# Per benchmark: (memory size, glances), EMCL's Table II (α₀, β, λ, γ), La-MAML's released settings
# (α init, lr of α, clip, second order); the baselines' lr 0.03 is La-MAML's for ER/GEM/A-GEM.
BENCH_DEFAULTS: dict[str, dict] = {
    "mnist-permutations": dict(buffer_size=200, glances=5, emcl_lr=0.3, emcl_inner_lr=0.15, emcl_lambda=10.0, emcl_gamma=0.3, lamaml_alpha=0.15, lamaml_lr=0.3),
    "many-permutations": dict(buffer_size=500, glances=10, emcl_lr=0.15, emcl_inner_lr=0.03, emcl_lambda=10.0, emcl_gamma=0.1, lamaml_alpha=0.1, lamaml_lr=0.1),
    "split-cifar100": dict(buffer_size=200, glances=10, emcl_lr=0.1, emcl_inner_lr=0.075, emcl_lambda=50.0, emcl_gamma=0.1, lamaml_alpha=0.1, lamaml_lr=0.25,
                           lamaml_clip=1.0, lamaml_second_order=True),  # fmt: skip
}
BENCH_DEFAULTS["split-miniimagenet"] = BENCH_DEFAULTS["split-cifar100"]
COMMON = dict(optimizer="sgd", lr=0.03, batch_size=10, replay_batch=10, ewc_lambda=10.0, fisher_samples=200)  # ewc λ 100 diverges at lr 0.03
# MER's Algorithm 1 (Riemer et al.): one example at a time, `mer_batches` batches of it plus
# `replay_batch` memories, one SGD step per sample, Reptile within (β) and across (γ) batches.
MER = dict(batch_size=1, lr=0.03, mer_beta=0.03, mer_gamma=1.0, mer_batches=5)
EMCL_READINGS = ("emcl_replay", "emcl_meta_rate", "emcl_scale", "emcl_gradient_step", "emcl_meta_grad")  # named in the label when not the default
RESUMABLE = ("log_every", "tensorboard", *(f.name for f in dataclasses.fields(RunOptions)))  # may change on --resume


def method_options(bench: str, method: str, seed: int, overrides: dict) -> LearnerOptions:
    """The options of ``method`` on ``bench``: the defaults above, then the user's ``overrides``."""
    values = {**COMMON, **BENCH_DEFAULTS[bench], **(MER if method == "mer" else {}), **overrides, "seed": seed}
    if method == "mer":  # a batch is the example plus its memories; `mer_batches` of them per example
        values.update(glances=values["mer_batches"], mer_steps=values["replay_batch"] + 1, batch_size=1)
    return LearnerOptions(**values)


def label(method: str, opts: LearnerOptions) -> str:
    if method != "emcl":
        return method
    off = [n for n, on in (("PGD", opts.emcl_pgd), ("inner reg.", opts.emcl_reg)) if not on]
    readings = [f"{n.removeprefix('emcl_').replace('_', '-')} {getattr(opts, n)}" for n in EMCL_READINGS if getattr(opts, n) != getattr(LearnerOptions, n)]
    return "emcl" + (f" w/o {', '.join(off)}" if off else "") + ("-si" if opts.emcl_importance == "si" else "") + (f" ({', '.join(readings)})" if readings else "")


@torch.no_grad()
def accuracy(learner: Learner, task: ClassTask, heads: torch.Tensor | None, chunk: int = 2048) -> float:
    """Percent of ``task``'s test samples classified correctly (within its head if multi-head)."""
    model = learner.model
    was = model.training
    model.eval()
    correct = 0
    for x, y in zip(task.test_x.split(chunk), task.test_y.split(chunk)):
        logits = model(x)
        if heads is not None:
            logits = logits.masked_fill(~heads[task.index], float("-inf"))
        correct += int((logits.argmax(1) == y).sum())
    model.train(was)
    return 100.0 * correct / len(task.test_y)


def run_one(bench: Benchmark, method: str, opts: LearnerOptions, progress: bool = False, device: str = "cpu", tracker: Tracker | None = None) -> dict:
    """One method, one seed over the whole stream (on ``device``): the accuracy matrix, ACC, BWT and training time.
    ``tracker`` logs the training steps (counted over the stream) and each task's row of accuracies."""
    heads = bench.heads()
    heads = None if heads is None else heads.to(device)
    tasks = [tensors_to(t, torch.device(device)) for t in bench.tasks]
    with torch.device(device):
        learner = ONLINE_LEARNERS[method](tasks, opts, lambda: build_model(bench), "ce", head_loss(heads))
    R, train_s, after_s, offset = [], 0.0, 0.0, 0
    for task in tasks:
        steps = (len(task) // opts.batch_size) * opts.glances
        view = None if tracker is None else tracker.at(offset, train_s + after_s, task=task.index + 1)
        try:
            seconds = learn_task(learner, task, steps, progress=progress, tracker=view)
        except DivergedError as e:  # recorded; the other runs go on
            return {"method": method, "label": label(method, opts), "seed": opts.seed, "diverged": f"task {task.index + 1}, step {e.step}: {e.what} {e.loss}", "options": dataclasses.asdict(opts)}
        train_s, after_s = train_s + seconds["train_s"], after_s + seconds["after_task_s"]
        R.append([accuracy(learner, t, heads) for t in tasks])
        offset += steps * learner.updates_per_step
        if view is not None:
            view.evaluation(steps * learner.updates_per_step, {"acc": sum(R[-1]) / len(R[-1]), **{f"task{j + 1}_acc": a for j, a in enumerate(R[-1])}}, seconds["train_s"])
    return {"method": method, "label": label(method, opts), "seed": opts.seed, "R": R, "acc": sum(R[-1]) / len(R[-1]), "bwt": backward_transfer(R),
            "train_s": train_s + after_s, "options": dataclasses.asdict(opts)}  # fmt: skip


def cl_bench(cfg: BenchConfig) -> list[dict]:
    """Run every (method, seed) of ``cfg``; writes table.md, time.png, matrix PNGs and metrics.json."""
    methods = list(ONLINE_LEARNERS) if "all" in cfg.methods else list(dict.fromkeys(cfg.methods))
    options = {(m, s): method_options(cfg.bench, m, s, cfg.overrides) for m in methods for s in range(cfg.seeds)}  # option errors first
    benches = {s: load_benchmark(cfg.bench, cfg.data, s) for s in range(cfg.seeds)}  # the stream depends on the seed
    if cfg.tasks is not None:
        if not 1 < cfg.tasks <= len(benches[0].tasks):
            raise MclnfError(f"--tasks {cfg.tasks}: must be between 2 and {len(benches[0].tasks)}")
        benches = {s: dataclasses.replace(b, tasks=b.tasks[: cfg.tasks]) for s, b in benches.items()}
    out = prepare_out(cfg.out or Path("runs") / f"cl-bench-{cfg.bench}", cfg.resume, cfg.overwrite)
    cfg = dataclasses.replace(cfg, out=out)
    described = {k: v for k, v in to_dict(cfg).items() if k not in ("methods", "seeds")}  # resuming may add methods and seeds
    with Run(out, "cl-bench", described, cfg.resume, RESUMABLE, replay=to_dict(cfg)) as run:
        return run_all(run, cfg, methods, options, benches)


def run_all(run: Run, cfg: BenchConfig, methods: list[str], options: dict, benches: dict) -> list[dict]:
    """Every (method, seed) not yet in ``runs/``, then the tables and figures."""
    out = run.out
    run.mkdir(out / "runs")
    bench = benches[0]
    notes = [bench.deviation] if bench.deviation else []
    if cfg.tasks is not None:
        notes.append(f"Only the first {cfg.tasks} tasks of the stream.")
    note = " ".join(n if n.endswith(".") else n + "." for n in notes) or "The paper's protocol."
    print(f"{cfg.bench}: {note}", file=sys.stderr)
    records = []
    for m in methods:
        for s in range(cfg.seeds):
            path = out / "runs" / f"{m}-seed{s}.json"
            if path.is_file():
                records.append(json.loads(path.read_text()))
                continue
            with open_part_log(run, cfg, f"{m}-seed{s}") as tracker:
                r = run_one(benches[s], m, options[m, s], progress=cfg.progress, device=cfg.device, tracker=tracker)
            write_text(path, json.dumps(r))
            records.append(r)
            print(f"{r['label']} seed {s}: " + (f"diverged at {r['diverged']}" if "diverged" in r else f"ACC {r['acc']:.2f}  BWT {r['bwt']:.2f}  {r['train_s']:.1f} s"), file=sys.stderr)
    text = table3(bench.name, len(bench.tasks), records, note) + "\n" + time_ratios(records)
    write_outputs(cfg, records, text, note)
    print(text, end="")
    return records


def write_outputs(cfg: BenchConfig, records: list[dict], text: str, note: str) -> None:
    """``table.md``, ``time.png`` (Fig. 2), one mean accuracy matrix per method and ``metrics.json``."""
    out = cfg.out
    write_text(out / "table.md", text)
    done = [r for r in records if "diverged" not in r]
    labels = list(dict.fromkeys(r["label"] for r in done))
    times = [[r["train_s"] for r in done if r["label"] == n] for n in labels]
    if labels:
        plot_times(labels, [statistics.fmean(t) for t in times], [statistics.stdev(t) if len(t) > 1 else 0.0 for t in times], out / "time.png", title=f"{cfg.bench}: training time")
    for n in labels:
        Rs = [r["R"] for r in done if r["label"] == n]
        mean_R = [[statistics.fmean(R[i][j] for R in Rs) for j in range(len(Rs[0]))] for i in range(len(Rs[0]))]
        plot_matrix(mean_R, "accuracy", out / f"matrix_{re.sub(r'[^A-Za-z0-9-]+', '_', n).strip('_')}.png", title=f"{cfg.bench} · {n} · mean of {len(Rs)} seeds")
    write_text(out / "metrics.json", json.dumps({"bench": cfg.bench, "note": note, "records": records, "torch": torch.__version__, "threads": torch.get_num_threads()}, indent=1))
