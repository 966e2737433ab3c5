"""The preconditioner study (Chng, Saratchandran & Lucey, arXiv:2402.08784) on this machine, through ``mclnf.fit``.

Run (one command per study; outputs under ``--out``, default /tmp/study/<study>)::

    python benchmarks/preconditioner_study.py image      [--steps 2000] [--seeds 2] [--eval-every 250]
    python benchmarks/preconditioner_study.py occupancy  [--budget 90] [--points 100000] [--batch 5000]

Options common to both: ``--out DIR``, ``--data DIR`` (the data pack, default ../shared/data beside the
repository or $MCLNF_DATA), ``--activations ...``, ``--optimizers ...`` (names from
``mclnf.optim.OPTIMIZERS``; ``kfac`` joins the default grid when it is registered), ``--slow-seeds K``
(seeds for the optimizers that take Hessian-vector products or matrix roots every step:
adahessian-j/e, shampoo, kfac — default: ``--seeds``). A run whose folder already holds a finished
record is not run again (delete the folder to redo it), so an interrupted study continues, and several
invocations with different ``--optimizers``/``--seeds`` can fill one ``--out``; ``--report-only`` then
writes the table and plots from every record there. ``--threads N`` sets torch's threads (1 is steadier
on a shared machine).

image
    A DIV2K photo (``--image``, default div2k/00.png) resized to 256 × 256, batch 512, a 5 × 256 field;
    activations gaussian (σ 0.05), sine (ω₀ 30), wavelet (ω₀ 10, s₀ 10), relu-pe (L 8); the paper's
    learning rates: Adam 1e-4 (sine 5e-5), SGD 1, ESGD 0.15 (``esgd``, the paper's bias correction, and
    ``esgd-corrected``), AdaHessian-J/E 0.15, Shampoo 0.1 (sine 0.01), K-FAC 0.1.
    For every (activation, optimizer): PSNR against steps and training seconds, final PSNR mean ± std
    over seeds, steps and seconds to reach Adam's final PSNR (mean over Adam's seeds), and the ratio of
    those seconds to Adam's total training time (the time Adam took to produce that PSNR). Writes ``table.md``, ``psnr_vs_steps.png``, ``psnr_vs_seconds.png``.

occupancy
    A Stanford mesh (``--mesh``, default meshes/bunny_cr.obj), gaussian σ 0.09, 5 × 256, BCE; Adam 1e-4
    (the paper's) and 1e-3, ESGD 0.15, AdaHessian-J/E 0.15. Every run trains for the same training-time
    budget (``--budget`` seconds), so the marching-cubes mesh each run writes (``reconstruction.ply``, at
    ``--resolution``) is the field at equal time. Writes ``table.md`` (IoU on held-out points, time to
    reach Adam 1e-4's final IoU) and ``iou_vs_seconds.png``, ``iou_vs_steps.png``.

How the curves are sampled. ``fit`` evaluates at log-spaced steps (1, 2, 4, …, and the last). To get
evaluations every ``--eval-every`` steps as well, each run is trained as a chain of ``fit`` calls with
``resume=True`` and growing ``steps`` (a resumed run draws exactly the batches and Rademacher vectors of
an uninterrupted one, and its training time continues). Evaluation, checkpointing and the
reconstruction are outside the timed region. Steps and seconds to a target are interpolated linearly
between the two evaluations that bracket the first crossing (:func:`mclnf.eval.study.first_reach`).
The occupancy chain ends each segment at the step the measured rate predicts for the next quarter of
the budget, and stops once the budget is spent.

Machine load. Wall-clock comparisons need a quiet machine. For every run the script measures the CPU
time *other* processes used while it ran (``/proc/stat`` minus this process); a run during which others
used more than 0.25 CPU on average is marked busy (``study.json`` in its folder, † in the table).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import torch

from mclnf.commands.fit import fit
from mclnf.config import FitConfig
from mclnf.errors import DivergedError
from mclnf.eval.study import load_records, markdown_table, plot_study, summarize
from mclnf.optim import OPTIMIZERS

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("MCLNF_DATA", REPO.parent / "shared" / "data"))
SLOW = ("adahessian-j", "adahessian-e", "shampoo", "kfac")  # HVPs or matrix roots every step
BUSY_CPU = 0.25  # other processes' mean CPU use above which a run is marked busy

FIELD_OPTIONS = {  # the paper's settings per activation
    "gaussian": {"sigma": 0.05},
    "sine": {"omega0": 30.0},
    "wavelet": {"omega0": 10.0, "s0": 10.0},
    "relu-pe": {"pe_frequencies": 8},
    "relu": {},
}
IMAGE_LR = {  # optimizer: (lr, {activation: lr}), the paper's learning rates
    "adam": (1e-4, {"sine": 5e-5}),
    "sgd": (1.0, {}),
    "esgd": (0.15, {}),
    "esgd-corrected": (0.15, {}),
    "esgd-robust": (0.15, {}),
    "adahessian-j": (0.15, {}),
    "adahessian-e": (0.15, {}),
    "shampoo": (0.1, {"sine": 0.01}),
    "kfac": (0.1, {}),
}
OCCUPANCY_RUNS = [("adam", 1e-4), ("adam", 1e-3), ("esgd", 0.15), ("adahessian-j", 0.15), ("adahessian-e", 0.15)]


# -- machine load --------------------------------------------------------------------------------------
def _cpu_total_s() -> float:
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class LoadMeter:
    """CPU seconds used by other processes between ``__enter__`` and ``__exit__``."""

    def __enter__(self):
        self.t, self.total, self.own = time.perf_counter(), _cpu_total_s(), _own_cpu_s()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t
        self.other = max(0.0, (_cpu_total_s() - self.total) - (_own_cpu_s() - self.own))
        return False

    def summary(self) -> dict:
        mean = self.other / self.wall if self.wall > 0 else 0.0
        return {"wall_s": self.wall, "other_cpu_s": self.other, "other_cpu_mean": mean, "busy": mean > BUSY_CPU, "loadavg": os.getloadavg()}


# -- running one configuration through fit -------------------------------------------------------------
def _finished(out: Path, steps: int | None) -> dict | None:
    for name in ("metrics.json", "diverged.json"):
        p = out / name
        if p.is_file():
            rec = json.loads(p.read_text())
            if steps is None or rec.get("steps") == steps or rec.get("diverged"):
                return rec
    return None


def run_chain(base: FitConfig, ends, log) -> dict:
    """Train ``base`` as a chain of resumed ``fit`` calls ending at each step of ``ends`` (an iterator that
    may look at the record so far: it is sent the latest record and yields the next end, or stops).
    Returns the final record; a divergence writes ``diverged.json`` (the curve up to the last good
    evaluation, from the checkpoint) and returns that."""
    out = Path(base.out)
    meter = LoadMeter()
    record = None
    with meter:
        try:
            end = next(ends)
            first = True
            while True:
                cfg = FitConfig(**{**base.__dict__, "steps": end, "resume": not first, "overwrite": first, "progress": False})
                record = fit(cfg)
                first = False
                end = ends.send(record)
        except StopIteration:
            pass
        except DivergedError as e:
            ck = torch.load(out / "checkpoint.pt", weights_only=False) if (out / "checkpoint.pt").is_file() else {"curve": [], "elapsed": 0.0}
            cfg = base.resolved()
            record = {
                "activation": cfg.activation, "optimizer": cfg.optimizer, "lr": cfg.lr, "seed": cfg.seed, "steps": cfg.steps,
                "batch_size": cfg.batch_size, "curve": ck["curve"], "wall_time_s": ck["elapsed"], "final": None,
                "diverged": {"step": e.step, "loss": e.loss if math.isfinite(e.loss) else str(e.loss), "message": str(e)},
                "config": cfg.to_dict(),
            }  # fmt: skip
            (out / "diverged.json").write_text(json.dumps(record, indent=1))
    study = meter.summary()
    (out / "study.json").write_text(json.dumps(study, indent=1))
    record["study"] = study
    status = f"DIVERGED at step {record['diverged']['step']}" if record.get("diverged") else ""
    log(f"  done in {study['wall_s']:.0f} s wall, {record['wall_time_s']:.1f} s training; others used "
        f"{study['other_cpu_mean']:.2f} CPU{' (BUSY)' if study['busy'] else ''} {status}")  # fmt: skip
    return record


def fixed_ends(steps: int, every: int):
    """Segment ends every ``every`` steps up to ``steps``."""
    ends = list(range(every, steps, every)) + [steps] if every < steps else [steps]
    for end in ends:
        yield end


def budget_ends(budget_s: float, parts: int, probe_steps: int):
    """Segment ends for a training-time budget: a probe segment, then ends predicted from the measured
    rate for each further ``budget_s / parts``, until the budget is spent."""
    record = yield probe_steps
    while record["wall_time_s"] < budget_s * 0.98:
        wall, steps = record["wall_time_s"], record["steps"]
        k = next((k for k in range(1, parts + 1) if budget_s * k / parts > wall * 1.05), parts)
        end = max(steps + 1, round(steps + steps / wall * (budget_s * k / parts - wall)))
        record = yield end


def records_with_study(root: Path) -> list[dict]:
    records = load_records(root)
    out = []
    for r in records:
        p = Path(r["config"]["out"]) / "study.json" if r.get("config", {}).get("out") else None
        if p is not None and p.is_file():
            r["study"] = json.loads(p.read_text())
        out.append(r)
    return out


def busy_note(records: list[dict]) -> str:
    busy = [r for r in records if r.get("study", {}).get("busy")]
    if not busy:
        return "Machine: quiet during every run (other processes < 0.25 CPU on average)."
    names = ", ".join(f"{r['activation']}/{r['optimizer']} {r['lr']:g} seed {r['seed']} ({r['study']['other_cpu_mean']:.2f} CPU)" for r in busy)
    return f"Machine: BUSY during {len(busy)} of {len(records)} runs (other processes used > 0.25 CPU): {names}. Their times are inflated."


# -- the studies ----------------------------------------------------------------------------------------
def image_study(args, log) -> None:
    out = Path(args.out or "/tmp/study/image")
    image = Path(args.image) if args.image else Path(args.data) / "div2k" / "00.png"
    optimizers = args.optimizers or [o for o in IMAGE_LR if o in OPTIMIZERS]
    activations = args.activations or ["gaussian", "sine", "wavelet", "relu-pe"]
    log(f"image study: {image}, 256×256, batch {args.batch or 512}, 5×256, {args.steps} steps, "
        f"seeds {args.seeds} (slow optimizers: {args.slow_seeds or args.seeds}), eval every {args.eval_every} steps, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads → {out}")  # fmt: skip
    for act in [] if args.report_only else activations:
        for opt in optimizers:
            if opt not in OPTIMIZERS:
                log(f"skip {opt}: not registered (known: {', '.join(OPTIMIZERS)})")
                continue
            lr = IMAGE_LR.get(opt, (None, {}))
            lr = args.lr or lr[1].get(act, lr[0])
            seeds = (args.slow_seeds or args.seeds) if opt in SLOW else args.seeds
            for seed in range(seeds):
                run_out = out / "runs" / act / f"{opt}-lr{lr:g}" / f"seed{seed}"
                if _finished(run_out, args.steps):
                    log(f"{act} {opt} {lr:g} seed {seed}: finished before, kept")
                    continue
                log(f"{act} {opt} {lr:g} seed {seed}:")
                # fp32 for every optimizer: fit's bf16 default for sine + adam would make the comparison unequal
                base = FitConfig(
                    signal=str(image), out=run_out, activation=act, optimizer=opt, lr=lr, steps=args.steps,
                    batch_size=args.batch or 512, width=256, depth=5, seed=seed, resize=256, precision="fp32", **FIELD_OPTIONS[act],
                )  # fmt: skip
                run_chain(base, fixed_ends(args.steps, args.eval_every), log)
    records = [r for r in records_with_study(out / "runs") if r["activation"] in activations and r["steps"] == args.steps]
    report(records, out, "psnr", "dB", f"{image.name} 256², batch {args.batch or 512}, 5×256, {args.steps} steps", log)


def occupancy_study(args, log) -> None:
    out = Path(args.out or "/tmp/study/occupancy")
    mesh = Path(args.mesh) if args.mesh else Path(args.data) / "meshes" / "bunny_cr.obj"
    runs = [(o, lr) for o, lr in OCCUPANCY_RUNS if (not args.optimizers or o in args.optimizers)]
    act = (args.activations or ["gaussian"])[0]
    batch = args.batch or 5000
    log(f"occupancy study: {mesh}, {args.points} training points ({args.points // batch} steps per epoch at batch {batch}), "
        f"{args.points} held-out points for IoU, {act} σ 0.09, 5×256, BCE; training-time budget {args.budget:g} s per run "
        f"(the paper: batch 50,000 per step over its point set, far longer runs); marching cubes at {args.resolution}³; "
        f"seeds {args.seeds} → {out}")  # fmt: skip
    opts = {"sigma": 0.09} if act == "gaussian" else FIELD_OPTIONS[act]
    for opt, lr in [] if args.report_only else runs:
        if opt not in OPTIMIZERS:
            log(f"skip {opt}: not registered")
            continue
        for seed in range(args.seeds):
            run_out = out / "runs" / act / f"{opt}-lr{lr:g}" / f"seed{seed}"
            if _finished(run_out, None):
                log(f"{opt} {lr:g} seed {seed}: finished before, kept")
                continue
            log(f"{opt} {lr:g} seed {seed}:")
            base = FitConfig(
                signal=str(mesh), out=run_out, activation=act, optimizer=opt, lr=lr, steps=args.steps or 100,
                batch_size=batch, width=256, depth=5, seed=seed, points=args.points, eval_points=args.points,
                resolution=args.resolution, **opts,
            )  # fmt: skip
            probe = args.steps or 100
            run_chain(base, budget_ends(args.budget, 4, probe), log)
    records = [r for r in records_with_study(out / "runs") if r["activation"] == act]
    report(records, out, "iou", "", f"{mesh.name} occupancy, {args.points} points, batch {batch}, {args.budget:g} s per run", log,
           metric_name="IoU", baseline_lr={act: 1e-4})  # fmt: skip


def report(records, out: Path, metric: str, unit: str, title: str, log, metric_name: str = "PSNR", baseline_lr=None) -> None:
    if not records:
        log("no records to report")
        return
    acts = list(FIELD_OPTIONS)
    opts = list(IMAGE_LR)
    records = sorted(records, key=lambda r: (acts.index(r["activation"]) if r["activation"] in acts else 99,
                                             opts.index(r["optimizer"]) if r["optimizer"] in opts else 99, r["lr"], r["seed"]))  # fmt: skip
    rows = summarize(records, metric, baseline="adam", baseline_lr=baseline_lr)
    table = markdown_table(rows, metric_name, unit)
    busy = {(r["activation"], r["optimizer"], float(r["lr"])) for r in records if r.get("study", {}).get("busy")}
    lines = table.splitlines()
    for i, row in enumerate(rows):
        if (row.activation, row.optimizer, row.lr) in busy:
            lines[i + 2] = lines[i + 2].replace(f"| {row.optimizer} |", f"| {row.optimizer} † |", 1)
    text = (
        f"{title}\n\nTarget: Adam's final {metric_name} (mean over its seeds) per activation; steps/seconds to target "
        f"interpolated linearly between evaluations; time ratio = seconds to target / Adam's total training time "
        f"(means over seeds).\n\n" + "\n".join(lines) + f"\n\n{busy_note(records)}\n"
    )
    (out / "table.md").write_text(text)
    (out / "records.json").write_text(json.dumps([{k: v for k, v in r.items() if k not in ("layout", "field")} for r in records], indent=1))
    tag = metric.lower()
    plot_study(records, metric, "step", out / f"{tag}_vs_steps.png", title=title, log_x=True)
    plot_study(records, metric, "time_s", out / f"{tag}_vs_seconds.png", title=title)
    log("\n" + text)
    log(f"wrote {out / 'table.md'}, {out / f'{tag}_vs_steps.png'}, {out / f'{tag}_vs_seconds.png'}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", choices=("image", "occupancy"))
    p.add_argument("--steps", type=int, default=None, help="image: steps per run (2000); occupancy: steps of the probe segment (100)")
    p.add_argument("--seeds", type=int, default=None, help="image: 2, occupancy: 1")
    p.add_argument("--slow-seeds", type=int, default=None, help="seeds for adahessian-j/e, shampoo, kfac (default: --seeds)")
    p.add_argument("--eval-every", type=int, default=250, help="image: evaluate (at least) every N steps")
    p.add_argument("--out", default=None)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--image", default=None)
    p.add_argument("--mesh", default=None)
    p.add_argument("--activations", nargs="+", default=None)
    p.add_argument("--optimizers", nargs="+", default=None)
    p.add_argument("--lr", type=float, default=None, help="override every learning rate (debugging)")
    p.add_argument("--batch", type=int, default=None, help="image: 512, occupancy: 5000")
    p.add_argument("--budget", type=float, default=90.0, help="occupancy: training seconds per run")
    p.add_argument("--points", type=int, default=100_000, help="occupancy: training (and held-out) points")
    p.add_argument("--resolution", type=int, default=128, help="occupancy: marching-cubes grid")
    p.add_argument("--report-only", action="store_true", help="run nothing; table and plots from the records under --out")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; 1 is steadier on a shared machine)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.study == "image":
        args.steps = args.steps or 2000
    args.seeds = args.seeds or (2 if args.study == "image" else 1)
    out = Path(args.out or f"/tmp/study/{args.study}")
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "study.log", "a")

    def log(msg: str) -> None:
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    log(f"$ {' '.join([Path(sys.argv[0]).name] + (argv or sys.argv[1:]))}  ({time.strftime('%Y-%m-%d %H:%M:%S')}, loadavg {os.getloadavg()[0]:.2f})")
    (image_study if args.study == "image" else occupancy_study)(args, log)


if __name__ == "__main__":
    main()
