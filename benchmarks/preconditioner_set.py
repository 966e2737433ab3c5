"""The preconditioner study over a benchmark set: every optimizer on 40 photos at once, one stacked field per photo.

The paper's image setting (Chng, Saratchandran & Lucey, arXiv:2402.08784; ``preconditioner_study.py`` runs it on one
photo through ``mclnf fit``) on the 24 ``kodak/`` images (centre crop 512 × 512) and the 16 ``div2k/`` photos
(512 × 512), each resized to 256 × 256: batch 512, 5 × 256 fields, the paper's activations (gaussian σ 0.05, sine
ω₀ 30, wavelet ω₀ 10 s₀ 10, relu-pe L 8) and learning rates. For each (activation, optimizer, seed) the 40 fields are
trained together (:class:`mclnf.stacked.StackedFields`: one vmapped forward/backward/HVP for all; every optimizer
here is element-wise, so one over the stacked tensors is one per field — the Rademacher probes are drawn for the
stack, not as ``mclnf fit`` draws them for one field) through :func:`mclnf.train.train`, and every field's PSNR
(torchmetrics, clipped to [0, 1]) is recorded every ``--eval-every`` steps. A field whose loss or parameters become
non-finite is marked diverged at that step and reset to its initialization (its slices of the parameters and of the
optimizer's state), so the others go on — one ``mclnf fit-many`` stack would stop all of them.

    python benchmarks/preconditioner_set.py run    [--out DIR] [--steps 5000] [--seeds 3] [--slow-seeds 1] [--device cuda] [--shard 1/4]
    python benchmarks/preconditioner_set.py report [--out DIR] [--cost adam=1 esgd=1.04 ...]

``run`` writes one record per (activation, optimizer, seed) into ``DIR/records/`` when it finishes (a record there is
not run again, so shards and interrupted runs fill one folder). ``report`` prints, per (activation, optimizer): final
PSNR over images (median, min, runs below Adam's by > 0.1 dB), diverged runs, steps to Adam's final PSNR as a
fraction of Adam's steps (median over images, and how many reach it), and the same in time: steps × the optimizer's
cost per step relative to Adam's (``--cost``, measured by ``optimizer_step_time.py`` on a quiet CPU; the stacked runs
share one device and their seconds do not separate per field). Adam's reference is its own curve on the same image
and seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from preconditioner_study import DEFAULT_DATA, FIELD_OPTIONS, IMAGE_LR
from torchmetrics.functional.image import peak_signal_noise_ratio

from mclnf.eval.study import first_reach
from mclnf.fields import FieldConfig
from mclnf.losses import LOSSES
from mclnf.optim import build_optimizer
from mclnf.sampling import EpochSampler
from mclnf.signals import load_signal
from mclnf.stacked import StackedFields
from mclnf.train import train

ACTIVATIONS = ("sine", "gaussian", "wavelet", "relu-pe")
OPTIMIZERS_RUN = ("adam", "esgd", "esgd-robust", "esgd-corrected", "adahessian-e")
FAST = ("adam", "esgd", "esgd-robust")  # run for every seed; the rest for --slow-seeds
DEFAULT_STEPS = 2000  # mclnf fit's default budget
COST = {"adam": 1.0, "esgd": 1.04, "esgd-robust": 1.04, "esgd-corrected": 1.04, "adahessian-e": 2.82}  # optimizer_step_time.py, quiet CPU, batch 512


def benchmark_set(data: Path, limit: int | None = None) -> list:
    """The 40 photos at 256 × 256: kodak's centre 512 × 512 crop and div2k's 512 × 512, each resized."""
    files = sorted((data / "kodak").glob("*.png")) + sorted((data / "div2k").glob("*.png"))
    signals = [load_signal(f, crop=(512, 512), resize=256) for f in files[:limit]]
    for s, f in zip(signals, files):
        s.name = f"{f.parent.name}/{f.name}"
    return signals


def jobs(seeds: int, slow_seeds: int) -> list[tuple[str, str, int]]:
    """(activation, optimizer, seed), seed-major so that a partial run has every pair at seed 0 first."""
    return [(a, o, s) for s in range(seeds) for a in ACTIVATIONS for o in OPTIMIZERS_RUN if s < (seeds if o in FAST else slow_seeds)]


def run_one(signals: list, activation: str, optimizer: str, seed: int, steps: int, every: int, device: str) -> dict:
    """One stack: a field per signal from ``mclnf fit``'s initialization for ``seed``, ``steps`` steps of 512 samples (the
    same for every field), every field's PSNR at step 1 and every ``every`` steps; the record ``report`` reads."""
    layout = signals[0].layout
    config = FieldConfig(in_dim=layout.in_dim, out_dim=layout.out_dim, activation=activation, width=256, depth=5, **FIELD_OPTIONS[activation])
    fields = StackedFields(config, len(signals), seed, device)
    start = {k: v.detach().clone() for k, v in fields.params.items()}
    lr = IMAGE_LR[optimizer][1].get(activation, IMAGE_LR[optimizer][0])
    opt = build_optimizer(optimizer, fields, lr, seed)
    values = torch.stack([s.values for s in signals], 1).to(device)
    coords = signals[0].coords.to(device)
    sampler = EpochSampler(coords, values, 512, seed)
    diverged: dict[int, int] = {}
    curves: list[list[float]] = [[] for _ in signals]
    step_now = [0]

    def loss_fn(x, y):
        per_field = fields.losses(LOSSES[layout.loss], layout.observe, x, y)
        bad = ~torch.isfinite(per_field)
        for k in bad.nonzero().flatten().tolist():
            diverged.setdefault(k, step_now[0] + 1)
        return per_field.where(~bad, 0).sum()  # a non-finite field's gradient slice is reset after the update

    def update():
        opt.step()
        step_now[0] += 1
        with torch.no_grad():
            finite = torch.stack([torch.isfinite(p.flatten(1)).all(1) for p in fields.params.values()]).all(0)
            for k in [*(~finite).nonzero().flatten().tolist(), *diverged]:
                diverged.setdefault(k, step_now[0])
                for name, p in fields.params.items():
                    p[k] = start[name][k]
                    for t in opt.state.get(p, {}).values():
                        if torch.is_tensor(t) and t.dim() == p.dim():
                            t[k] = 0

    @torch.no_grad()
    def evaluate(step, loss, seconds):
        pred = torch.cat([fields(coords[i : i + 16384]) for i in range(0, len(coords), 16384)], 1)  # (count, N, c)
        target = values.transpose(0, 1)
        psnr = peak_signal_noise_ratio(pred.clamp(0, 1), target, data_range=1.0, reduction="none", dim=(1, 2))
        for k, v in enumerate(psnr.tolist()):
            curves[k].append([step, round(v, 4)])

    eval_steps = sorted({1, *range(every, steps + 1, every), steps})
    t0 = time.perf_counter()
    seconds = train(opt, loss_fn, sampler, steps, eval_steps=eval_steps, on_eval=evaluate, progress=False, update=update)
    return {
        "activation": activation, "optimizer": optimizer, "lr": lr, "seed": seed, "steps": steps, "batch_size": 512, "device": str(device),
        "train_s": seconds, "wall_s": time.perf_counter() - t0, "images": [s.name for s in signals],
        "curves": {s.name: c for s, c in zip(signals, curves)}, "diverged": {signals[k].name: st for k, st in diverged.items()},
        "torch": torch.__version__,
    }  # fmt: skip


def run(args) -> None:
    records = args.out / "records"
    records.mkdir(parents=True, exist_ok=True)
    signals = benchmark_set(args.data, args.limit)
    todo = [(a, o, int(s)) for a, o, s in (j.split(":") for j in args.only)] if args.only else jobs(args.seeds, args.slow_seeds)
    index, count = map(int, args.shard.split("/"))
    todo = todo[index - 1 :: count]
    t_start = time.perf_counter()
    for activation, optimizer, seed in todo:
        path = records / f"{activation}_{optimizer}_s{seed}.json"
        if path.is_file():
            continue
        if args.budget_s and time.perf_counter() - t_start > args.budget_s:
            print(f"budget of {args.budget_s:g} s spent; {path.name} and later not run", flush=True)
            break
        rec = run_one(signals, activation, optimizer, seed, args.steps, args.eval_every, args.device)
        path.with_suffix(".tmp").write_text(json.dumps(rec))
        path.with_suffix(".tmp").rename(path)
        finals = [c[-1][1] for c in rec["curves"].values()]
        print(f"{activation} {optimizer} seed {seed}: {len(finals)} images, {rec['steps']} steps in {rec['train_s']:.1f} s "
              f"({1000 * rec['train_s'] / rec['steps']:.2f} ms/step), final PSNR median {statistics.median(finals):.2f} dB, "
              f"diverged {len(rec['diverged'])}", flush=True)  # fmt: skip


def reach(curve: list[list[float]], target: float) -> float | None:
    """The step at which a record's ``[[step, psnr], …]`` curve first reaches ``target`` (:func:`mclnf.eval.study.first_reach`)."""
    return first_reach([{"step": step, "psnr": v} for step, v in curve], "psnr", target, "step")


def at_step(curve: list[list[float]], step: int) -> float:
    """The value at the first evaluation at or after ``step`` (the last one if the curve is shorter)."""
    return next((v for s, v in curve if s >= step), curve[-1][1])


def report(args) -> None:
    recs = [json.loads(p.read_text()) for p in sorted((args.out / "records").glob("*.json"))]
    cost = dict(COST, **{k: float(v) for k, v in (kv.split("=") for kv in args.cost)})
    by = {(r["activation"], r["optimizer"], r["seed"]): r for r in recs}
    steps = recs[0]["steps"]
    med = lambda v: f"{statistics.median(v):+.2f}" if v else "–"  # noqa: E731
    lines = [f"# preconditioner set study: {len(recs[0]['images'])} images at 256², batch 512, 5×256, {steps} steps; {recs[0]['device']}, torch {recs[0]['torch']}",
             f"# Δ: PSNR minus Adam's on the same image and seed; worse: Δ < -0.1 dB, on div2k + kodak photos; time ratio = steps ratio × cost per step "
             f"relative to Adam ({', '.join(f'{k} {v:g}' for k, v in cost.items())}: optimizer_step_time.py)",
             "", f"| activation | optimizer | runs | final PSNR median [min, max] | Δ at {DEFAULT_STEPS}: median [min] | worse at {DEFAULT_STEPS} | Δ final: median [min] | worse final "
             f"| diverged | reach Adam's final | steps ratio median | time ratio median | time ratio to Adam's {DEFAULT_STEPS}-step PSNR |", "|---" * 13 + "|"]  # fmt: skip
    for a in ACTIVATIONS:
        for o in [o for o in OPTIMIZERS_RUN if o != "adam"]:
            pairs = [(r, by.get((a, "adam", r["seed"]))) for (aa, oo, _), r in sorted(by.items()) if aa == a and oo == o]
            pairs = [(r, ref) for r, ref in pairs if ref is not None]
            if not pairs:
                continue
            finals, d2k, dfin, worse2k, worsefin, diverged, ratios, early = [], [], [], {"div2k": 0, "kodak": 0}, {"div2k": 0, "kodak": 0}, 0, [], []
            for r, ref in pairs:
                for name, c in r["curves"].items():
                    rc, where = ref["curves"][name], name.split("/")[0]
                    if name in r["diverged"]:
                        diverged += 1
                        worse2k[where] += 1
                        worsefin[where] += 1
                        continue
                    finals.append(c[-1][1])
                    d2k.append(at_step(c, DEFAULT_STEPS) - at_step(rc, DEFAULT_STEPS))
                    dfin.append(c[-1][1] - rc[-1][1])
                    worse2k[where] += d2k[-1] < -0.1
                    worsefin[where] += dfin[-1] < -0.1
                    reached = reach(c, rc[-1][1])
                    if reached is not None:
                        ratios.append(reached / steps)
                    reached = reach(c, at_step(rc, DEFAULT_STEPS))  # the target: Adam's PSNR at the default budget
                    if reached is not None:
                        early.append(reached / DEFAULT_STEPS)
            n = sum(len(r["curves"]) for r, _ in pairs)
            span = f"{statistics.median(finals):.2f} [{min(finals):.2f}, {max(finals):.2f}]" if finals else "–"
            lines.append(f"| {a} | {o} | {n} | {span} | {med(d2k)} [{min(d2k, default=float('nan')):+.2f}] | {worse2k['div2k']} + {worse2k['kodak']} | "
                         f"{med(dfin)} [{min(dfin, default=float('nan')):+.2f}] | {worsefin['div2k']} + {worsefin['kodak']} | {diverged} | {len(ratios)}/{n} | "
                         f"{statistics.median(ratios) if ratios else float('nan'):.2f} | {statistics.median(ratios) * cost[o] if ratios else float('nan'):.2f} | "
                         f"{statistics.median(early) * cost[o] if early else float('nan'):.2f} ({len(early)}/{n}) |")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    (args.out / "table.md").write_text(text + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("run", "report"))
    p.add_argument("--out", type=Path, default=Path("/tmp/study/set"))
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--slow-seeds", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shard", default="1/1", help="i/n: run every n-th job starting at the i-th")
    p.add_argument("--budget-s", type=float, default=None, help="start no job after this many seconds")
    p.add_argument("--only", nargs="*", default=[], metavar="ACTIVATION:OPTIMIZER:SEED", help="run these jobs instead of the grid")
    p.add_argument("--limit", type=int, default=None, help="only the first N images (a smoke test)")
    p.add_argument("--cost", nargs="*", default=[], help="report: optimizer=cost per step relative to Adam")
    args = p.parse_args(argv)
    run(args) if args.what == "run" else report(args)


if __name__ == "__main__":
    sys.exit(main())
