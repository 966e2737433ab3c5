"""``mclnf meta-test``: test-time optimization from meta-learned initializations, against baselines.

The meta-test signals are DATASET's meta-test part, loaded with the run's own options (resize, clip,
split seed …) and checked to be the files the run left out. Every meta-test signal arrives as the run's task stream. For every step count s of ``steps`` (1, 2,
4, …, 4096 by default) each method learns the stream afresh with s steps per task (the offline
methods ``mol`` and ``ol``: s·T steps on the whole signal) and the whole signal is scored (PSNR and
SSIM, PESQ for audio). Methods and their test-time learners (one interface, :mod:`mclnf.continual.learners`):

* ``mol`` — :class:`Offline` from θ₀; ``maml-cl`` — :class:`FineTune` from θ₀; ``oml`` — :class:`FineTune`
  from θ₀ adapting only the PLN layers; ``mcl-nf``/``mcl-nf-fim`` — :class:`ModulesFromInit`: a module
  per task, each from θ₀ (the FIM loss for ``mcl-nf-fim``). Their optimizer is the inner loop's (SGD at
  the inner learning rate) unless ``test_optimizer`` is given.
* baselines ``ol``, ``cl``, ``er``, ``ewc``, ``mer`` — the continual learners from a random
  initialization, with ``baseline_optimizer`` (Adam 1e-4, as ``mclnf continual``).

Outputs: ``table.md`` (MCL-NF's Table 1: Step 1 / Best (step) / Final, per metric), ``compute.md``
(Table 6: parameters, peak memory of one test-time step per task — allocations, see
:func:`~mclnf.eval.memory.allocated_peak_mib` — episodes/s, final PSNR),
``psnr_vs_step.png`` (Fig. 2), ``grid_step{s}.png`` for images (Fig. 3; reconstructions of the first
signals, one row per method) or reconstruction files for audio/video, and ``metrics.json``.
An *episode* is one test-time optimization step on one task (one batch).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor

from mclnf.checkpoint import atomic_path, write_text
from mclnf.continual.learners import LEARNERS, FineTune, Learner, LearnerOptions, Offline, modules_or_init
from mclnf.errors import MclnfError
from mclnf.eval.memory import allocated_peak_mib
from mclnf.eval.plots import plot_meta_test, plot_reconstruction_grid
from mclnf.fields import Field, FieldConfig
from mclnf.fields.modular import ModularField
from mclnf.fit import make_dir, prepare_out
from mclnf.losses import fim_loss
from mclnf.meta.data import MetaDataset
from mclnf.meta.methods import MetaMethod, MetaOptions
from mclnf.meta.train import MetaTrainConfig
from mclnf.optim import build_optimizer
from mclnf.signals import Layout, Signal
from mclnf.signals.tasks import Task, route, split_signal
from mclnf.train import log_spaced_steps

BASELINES = ("ol", "cl", "er", "ewc", "mer")  # the default set
BASELINE_CHOICES = (*BASELINES, "modular")  # modular: one module per task from a random initialization


@dataclass
class MetaRun:
    """A meta-trained initialization as ``init.safetensors`` holds it."""

    path: Path
    theta: dict[str, Tensor]
    method: MetaMethod
    config: MetaTrainConfig
    test_files: list[str]
    base_field: FieldConfig

    @property
    def name(self) -> str:
        o = self.config.options
        return o.method if o.meta_grad == "second-order" else f"{o.method} ({o.meta_grad})"


def load_run(path: Path) -> MetaRun:
    path = Path(path)
    file = path / "init.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise MclnfError(f"{path}: no init.safetensors (not a meta-train run folder)")
    try:
        with safe_open(str(file), "pt") as f:
            meta = f.metadata() or {}
        theta = load_file(str(file))
        cfg_dict = json.loads(meta["config"])
        options = MetaOptions(**json.loads(meta["options"]))
        cfg = MetaTrainConfig(**{**cfg_dict, "options": options, "crop": None if cfg_dict["crop"] is None else tuple(cfg_dict["crop"])})
        layout = Layout.from_dict(json.loads(meta["layout"]))
        field_cfg = FieldConfig.from_dict(json.loads(meta["field"]))
        test_files = json.loads(meta["test_files"])
    except (SafetensorError, KeyError, ValueError, TypeError, OSError) as e:
        raise MclnfError(f"{file}: not an initialization written by mclnf meta-train ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    base = dataclasses.replace(field_cfg, width=cfg.width)
    method = MetaMethod(layout, base, options)
    if method.field_config != field_cfg or set(theta) != set(dict(method.template.named_parameters())):
        raise MclnfError(f"{file}: its parameters do not match its own field description")
    return MetaRun(path, theta, method, cfg, test_files, base)


class ModulesFromInit(Learner):
    """MCL-NF at test time: task t trains module t, a copy of θ₀, with a fresh optimizer; the signal
    is the modular field of the modules so far (regions not reached yet: θ₀ itself). Equal to the
    ``modular`` learner started from θ₀, with the method's loss (FIM for ``mcl-nf-fim``)."""

    name = "mcl-nf"

    def __init__(self, signal: Signal, tasks: list[Task], config: FieldConfig, opts: LearnerOptions, method: MetaMethod):
        self.method, self.fields, self.config = method, [], config
        super().__init__(tasks, opts, lambda: Field(config), signal.layout.loss, layout=signal.layout)
        self.init = self.model

    def before_task(self, task: Task) -> None:
        self.current = Field(self.config)
        self.current.load_state_dict(self.init.state_dict())
        self.model = self.current if not self.fields else self.model
        self.optimizer = build_optimizer(self.opts.optimizer, self.current, self.opts.lr, seed=self.opts.seed)

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        o = self.method.opts
        if o.method == "mcl-nf-fim":
            return fim_loss(self.current, self.current.out_dims, x, y, o.fim_lambda, self.likelihood, o.fisher, observe=self.layout.observe)
        return self.loss_of(self.layout.observe(self.current, x), y)

    def after_task(self, task: Task) -> None:
        self.fields.append(self.current)
        self.model = ModularField.from_fields(self.fields)

    def forward(self, x: Tensor) -> Tensor:
        """Each sample through the module of its task (scene blocks: each ray rendered whole by the module of its nearest camera)."""
        idx = route(self.layout.locate(x), self.tasks)
        routed = lambda points: modules_or_init(self.model, len(self.fields), self.init, self.layout.blank, points, idx.repeat_interleave(len(points) // len(x)))  # noqa: E731
        return self.layout.observe(routed, x)


def make_learner(entry: MetaRun | str, signal: Signal, tasks: list[Task], cfg: MetaTestConfig, base: FieldConfig, batch: int) -> Learner:
    if isinstance(entry, str):  # a baseline from a random initialization
        opts = LearnerOptions(optimizer=cfg.baseline_optimizer, lr=cfg.baseline_lr, batch_size=batch, seed=cfg.seed)
        return LEARNERS[entry].for_signal(signal, tasks, base, opts)
    o = entry.config.options
    opts = LearnerOptions(optimizer=cfg.test_optimizer or "sgd", lr=cfg.test_lr or (o.inner_lr if cfg.test_optimizer in (None, "sgd") else None), batch_size=batch, seed=cfg.seed)
    cls = {"mol": Offline, "maml-cl": FineTune, "oml": FineTune}.get(o.method)
    learner = ModulesFromInit(signal, tasks, entry.method.field_config, opts, entry.method) if cls is None else cls.for_signal(signal, tasks, entry.method.field_config, opts)
    learner.model.load_state_dict(entry.theta)
    if o.method == "oml":  # only the PLN adapts
        for name, p in learner.model.named_parameters():
            p.requires_grad_(name in entry.method.fast)
    return learner


@dataclass
class MetaTestConfig:
    runs: list[Path]
    dataset: str
    out: Path | None = None
    steps: list[int] = field(default_factory=lambda: log_spaced_steps(4096))
    signals: int | None = None  # the first N meta-test signals (default: all)
    test_optimizer: str | None = None  # meta methods (default: SGD at the inner learning rate)
    test_lr: float | None = None
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    baseline_optimizer: str = "adam"
    baseline_lr: float | None = 1e-4
    batch_size: int | None = None  # default: the largest task (full-batch steps, as the inner loop)
    grid_steps: list[int] | None = None  # default: the first and the last of steps
    grid_signals: int = 4
    seed: int = 0
    overwrite: bool = False
    progress: bool = True


def check_dataset(runs: list[MetaRun], dataset: str) -> MetaDataset:
    cfg = runs[0].config
    for r in runs[1:]:
        if r.test_files != runs[0].test_files or r.method.layout != runs[0].method.layout:
            raise MclnfError(f"{r.path}: meta-tested together with {runs[0].path} but its meta-test split or signal layout differs")
        if (r.config.options.tasks, r.config.options.split) != (cfg.options.tasks, cfg.options.split):
            raise MclnfError(f"{r.path}: its task stream ({r.config.options.tasks} tasks) differs from {runs[0].path}'s ({cfg.options.tasks})")
    ds = dataclasses.replace(cfg, dataset=dataset).load()
    if ds.test_files != runs[0].test_files:
        raise MclnfError(f"{dataset}: its meta-test split differs from the one {runs[0].path} was meta-trained beside (different files or split options)")
    if ds.layout != runs[0].method.layout:
        raise MclnfError(f"{dataset}: its signals ({ds.layout}) differ from those {runs[0].path} was meta-trained on ({runs[0].method.layout})")
    return ds


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


def meta_test(cfg: MetaTestConfig) -> list[dict]:
    """Meta-test ``cfg.runs`` and the baselines on the dataset's meta-test signals; returns one record per method."""
    if not cfg.runs:
        raise MclnfError("meta-test: give at least one meta-train run")
    bad = [b for b in cfg.baselines if b not in BASELINE_CHOICES]
    if bad:
        raise MclnfError(f"--baselines {bad[0]}: unknown; choose from {', '.join(BASELINE_CHOICES)}")
    if not cfg.steps or any(s < 1 for s in cfg.steps):
        raise MclnfError(f"--steps {' '.join(map(str, cfg.steps))}: step counts must be positive")
    steps = sorted(set(cfg.steps))
    grid_steps = sorted(set(cfg.grid_steps or [steps[0], steps[-1]]))
    if not set(grid_steps) <= set(steps):
        raise MclnfError(f"--grid-steps {' '.join(map(str, grid_steps))}: every grid step must be one of --steps")
    runs = [load_run(p) for p in cfg.runs]
    ds = check_dataset(runs, cfg.dataset)
    signals = ds.test[: cfg.signals] if cfg.signals else ds.test
    o = runs[0].config.options
    out = Path(cfg.out) if cfg.out else Path(runs[0].path) / "meta-test"
    prepare_out(out, False, cfg.overwrite)
    make_dir(out)

    layout = ds.layout
    metric_names = list(layout.metrics(signals[0].values, signals[0].values))
    entries: list[MetaRun | str] = [*runs, *cfg.baselines]
    records = []
    for entry in entries:
        name = entry if isinstance(entry, str) else entry.name
        per_step: dict[int, list[dict]] = {s: [] for s in steps}
        seconds, episodes, recon = 0.0, 0, {}
        for i, signal in enumerate(signals):
            tasks = split_signal(signal, o.split, o.tasks)
            batch = cfg.batch_size or max(len(t) for t in tasks)
            for s in steps:
                learner = make_learner(entry, signal, tasks, cfg, runs[0].base_field, batch)
                t0 = perf_counter()
                for task in tasks:
                    learner.learn(task, s, progress=False)
                seconds += perf_counter() - t0
                episodes += s * len(tasks)
                per_step[s].append(layout.metrics(learner.predict(signal.eval_coords), signal.eval_values))
                if s in grid_steps and i < cfg.grid_signals:
                    recon[(s, i)] = layout.reconstruct(learner.predict)
            if cfg.progress:
                done = "  ".join(f"{s}:{per_step[s][-1]['psnr']:.2f}" for s in steps)
                print(f"meta-test {name} signal {i + 1}/{len(signals)}  PSNR by step  {done}", file=sys.stderr)

        tasks = split_signal(signals[0], o.split, o.tasks)  # the memory of test-time optimization: one step per task
        learner = make_learner(entry, signals[0], tasks, cfg, runs[0].base_field, cfg.batch_size or max(len(t) for t in tasks))
        peak = allocated_peak_mib(lambda: [learner.learn(task, 1, progress=False) for task in tasks])
        curve = {s: {m: mean([r[m] for r in per_step[s]]) for m in metric_names} for s in steps}
        records.append({"name": name, "kind": "baseline" if isinstance(entry, str) else "meta", "curve": curve, "per_signal": per_step,
                        "summary": {m: summarize(curve, m) for m in metric_names}, "params": sum(p.numel() for p in learner.model.parameters()), "peak_mib": peak,
                        "episodes_per_s": episodes / seconds, "test_s": seconds, "recon": recon})  # fmt: skip

    write_text(out / "table.md", table1(records, metric_names))
    write_text(out / "compute.md", compute_table(records, layout.primary_metric))
    plot_meta_test(records, layout.primary_metric, out / f"{layout.primary_metric}_vs_step.png", title=f"{cfg.dataset} · {len(signals)} meta-test signals · {o.tasks} tasks")
    for s in grid_steps:
        if layout.kind == "image":
            plot_reconstruction_grid(records, [signals[i] for i in range(min(cfg.grid_signals, len(signals)))], layout, s, out / f"grid_step{s}.png")
        else:
            for r in records:
                tag = r["name"].replace(" ", "").replace("(", "-").replace(")", "")
                with atomic_path(out / f"{tag}_step{s}{layout.suffix}") as tmp:
                    layout.save(r["recon"][(s, 0)], tmp)
    summary = {"dataset": cfg.dataset, "signals": [s.name for s in signals], "steps": steps, "tasks": o.tasks, "split": o.split,
               "runs": [str(p) for p in cfg.runs], "methods": [{k: v for k, v in r.items() if k != "recon"} for r in records],
               "config": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items() if k != "runs"}}  # fmt: skip
    write_text(out / "metrics.json", json.dumps(summary, indent=1, default=str))
    return records


def mean(values: list) -> float | None:
    ok = [v for v in values if v is not None and math.isfinite(v)]
    return sum(ok) / len(ok) if ok else None
