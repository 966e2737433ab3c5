"""NeRF fitting on lego: held-out PSNR against training minutes, and the training step's throughput.

    python benchmarks/nerf_fit.py quality     [--minutes 20] [--scene lego_100.npz] [--runs adam-gaussian esgd-gaussian adam-relu-pe]
    python benchmarks/nerf_fit.py compare     [--minutes 30 | --steps N] [--scene lego_synthetic_400] [--eval-every 1000] [--run NAME:ARGS ...]
    python benchmarks/nerf_fit.py throughput  [--seconds 20]

quality
    ``mclnf fit`` on the scene with its defaults (100 × 100 views, every 8th held out: 87 training
    and 13 held-out views; 64 stratified samples per ray in the scene box; 1024 rays a step; a 4 × 128
    field) for a training-time budget each: the steps the budget holds at the step time of a probe
    (steps 101–120), evaluated at fit's log-spaced steps (1, 2, 4, …, the last; outside the timed region). Runs: ``adam-gaussian``
    (Adam 1e-3, σ 0.1), ``esgd-gaussian`` (ESGD 0.15, the preconditioner paper's rate), ``adam-relu-pe``
    (Adam 1e-3, L 8: the original NeRF's ReLU + positional encoding). Prints the held-out PSNR at every
    evaluation, the minutes to 22 dB, and the ratio of each run's time to reach Adam-gaussian's final
    PSNR to Adam-gaussian's own time; writes ``psnr_vs_minutes.png``.

compare
    Runs side by side, each the real ``mclnf fit`` CLI in its own process (``OMP_NUM_THREADS`` as given),
    evaluated every ``--eval-every`` steps on the scene's held-out views (lego_synthetic_400, the NeRF-synthetic
    protocol: 100 training views, PSNR/SSIM on its 25 test views at 400 × 400; LLFF: every 8th view), to a
    time budget (stopped at the first evaluation after ``--minutes`` of training time — fit's clock; evaluations
    are outside it) or to equal steps (``--steps``). Default runs, both with
    128 samples a ray and a 64³ occupancy grid (``--occupancy-grid``): ``hashgrid`` (instant-ngp's 16-level
    grid with a 2¹⁷ table per level, 2 × 64 ReLU head, Adam 1e-2) and ``relu-pe`` (NeRF's 4 × 128 ReLU + PE,
    Adam 1e-3). Prints every evaluation, a table with the published references beside ours (vanilla NeRF
    32.54 dB, days on a GPU; instant-ngp 36.39 dB at 5 min on an RTX 3090), and writes ``psnr_vs_minutes.png``.

throughput
    One training step (render 1024 rays × 64 samples through the field, MSE, backward, Adam) of the
    default field: rays/s and GFLOP/s of the field's linear layers (6 FLOP per weight per point, less
    the first layer's input gradient) beside the machine's float32 GEMM peak (``fit_throughput.gemm_peak``),
    eager and ``torch.compile``-d.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from fit_throughput import flops_per_step, gemm_peak  # noqa: E402

from mclnf.commands.fit import fit  # noqa: E402
from mclnf.config import FitConfig, load_configured_signal, resolve  # noqa: E402
from mclnf.errors import DivergedError  # noqa: E402
from mclnf.eval.study import first_reach  # noqa: E402
from mclnf.fields import Field  # noqa: E402
from mclnf.losses import mse  # noqa: E402
from mclnf.optim import build_optimizer  # noqa: E402
from mclnf.runtime import flush_denormals, keep_freed_memory  # noqa: E402
from mclnf.train import train  # noqa: E402

DATA = Path(os.environ.get("MCLNF_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
RUNS = {
    "adam-gaussian": {"optimizer": "adam", "activation": "gaussian"},
    "esgd-gaussian": {"optimizer": "esgd", "activation": "gaussian"},
    "adam-relu-pe": {"optimizer": "adam", "activation": "relu-pe"},
}


def step_seconds(cfg: FitConfig, warmup: int = 100, timed: int = 20) -> float:
    """Median seconds of a training step of ``cfg`` after ``warmup`` steps (past ESGD's every-step
    curvature warm-up of 50 steps; its later refresh every 100 steps is not counted), rays drawn at random, on
    ``cfg.device`` (a GPU's queue drained before the clock stops)."""
    cfg = resolve(cfg, "radiance")
    signal = load_configured_signal(cfg)
    torch.manual_seed(0)
    field = Field(cfg.field_config(signal.layout)).to(cfg.device)
    opt = build_optimizer(cfg.optimizer, field, cfg.lr)
    coords, values = signal.coords.to(cfg.device), signal.values.to(cfg.device)
    times = []
    for step in range(1, warmup + timed + 1):
        idx = torch.randint(len(coords), (cfg.batch_size,)).to(cfg.device)
        t0 = time.perf_counter()
        train(opt, lambda x, y: mse(signal.layout.observe(field, x), y), lambda _: (coords[idx], values[idx]), step, start_step=step - 1, progress=False)
        if coords.is_cuda:
            torch.cuda.synchronize(coords.device)
        times.append(time.perf_counter() - t0)
    return sorted(times[warmup:])[timed // 2]


def quality(args) -> None:
    records = {}
    for name in args.runs:
        base = FitConfig(signal=str(args.scene), out=args.out / name, overwrite=True, progress=False, **RUNS[name], **({"lr": args.lr[name]} if name in args.lr else {}))
        steps = max(2, round(args.minutes * 60 / step_seconds(base)))
        r = resolve(base, "radiance")
        print(f"# {name}: {r.optimizer} lr {r.lr:g}, {r.activation}; {steps} steps (the budget at the probed step time)", flush=True)
        try:
            records[name] = rec = fit(dataclasses.replace(base, steps=steps))
        except DivergedError as e:
            print(f"# {name}: {e}", flush=True)
            ck = torch.load(base.out / "checkpoint.pt", weights_only=False) if (base.out / "checkpoint.pt").is_file() else {"curve": []}
            records[name] = rec = {"curve": ck["curve"], "lr": r.lr, "diverged": {"step": e.step}}
        for point in rec["curve"]:
            print(f"{name:>14}  step {point['step']:>6}  {point['time_s'] / 60:6.2f} min  held-out PSNR {point['psnr']:6.2f} dB  SSIM {point['ssim']:.4f}", flush=True)
    print("\n| run | lr | steps | minutes | held-out PSNR (dB) | SSIM | minutes to 22 dB | time to adam-gaussian's final PSNR / adam-gaussian's time |")
    print("|---|---|---|---|---|---|---|---|")
    ref = records.get("adam-gaussian")
    for name, rec in records.items():
        curve = rec["curve"]
        last = curve[-1] if curve else {"psnr": float("nan"), "ssim": float("nan"), "step": 0, "time_s": 0.0}
        to22 = first_reach(curve, "psnr", 22.0, "time_s")
        ratio = "—"
        if ref is not None and ref["curve"]:
            t = first_reach(curve, "psnr", ref["curve"][-1]["psnr"], "time_s")
            ratio = "not reached" if t is None else f"{t / ref['curve'][-1]['time_s']:.2f}"
        note = f" (diverged at step {rec['diverged']['step']})" if rec.get("diverged") else ""
        print(f"| {name}{note} | {rec['lr']:g} | {last['step']} | {last['time_s'] / 60:.1f} | {last['psnr']:.2f} | {last['ssim']:.4f} | "
              f"{'not reached' if to22 is None else f'{to22 / 60:.1f}'} | {ratio} |")  # fmt: skip
    plot(records, args.out / "psnr_vs_minutes.png")
    (args.out / "summary.json").write_text(json.dumps({k: {"curve": v["curve"], "lr": v["lr"]} for k, v in records.items()}, indent=1))


BUDGET_RUNS = {  # evaluations of the 25 held-out 400 × 400 views take minutes: about 6 in each run's 30 minutes
    "hashgrid": "--encoding hashgrid --hash-table-size 17 --samples 128 --occupancy-grid 64 --eval-every 2500",
    "relu-pe": "--activation relu-pe --samples 128 --occupancy-grid 64 --eval-every 6000",
}
REFERENCES = {  # published held-out PSNR of the scene, printed beside ours (by the scene folder's name)
    "lego": "published: vanilla NeRF 32.54 dB (Mildenhall et al. 2020, days on a GPU); instant-ngp 36.39 dB at 5 min (Müller et al. 2022, RTX 3090)",
    "fern": "published: vanilla NeRF 25.17 dB on fern (Mildenhall et al. 2020, NDC, 1008 × 756 — factor 4 — days on a GPU)",
}


def evaluations(out: Path) -> list[dict]:
    """The evaluations a run has logged so far (``log.jsonl``)."""
    path = out / "log.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("event") == "eval"]


def compare(args) -> None:
    """Each run in its own ``mclnf fit`` process, side by side, each stopped at its first evaluation past the time budget (or at ``--steps``)."""
    runs = dict(r.split(":", 1) for r in args.run) if args.run else BUDGET_RUNS
    minutes = float("inf") if args.steps else args.minutes
    budget = f"{args.steps} steps" if args.steps else f"{args.minutes:g} min of training"
    print(f"# {args.scene}: {budget} per run, evaluated every {args.eval_every} steps on the held-out views (unless a run sets --eval-every); "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} each, {len(runs)} runs side by side", flush=True)  # fmt: skip
    procs = {}
    for name, extra in runs.items():
        out = args.out / name
        cmd = [sys.executable, "-m", "mclnf", "fit", str(args.scene), "--steps", str(args.steps or 1000000), "--eval-every", str(args.eval_every),
               "--out", str(out), "--overwrite", "--quiet", *extra.split()]  # fmt: skip  (a run's own options last: they override)
        print(f"# {name}: {' '.join(cmd[2:])}", flush=True)
        procs[name] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(args.out / f"{name}.stderr", "w"))
    curves: dict[str, list[dict]] = {}
    while procs:
        time.sleep(5)
        for name in list(procs):
            curve = evaluations(args.out / name)
            past = [i for i, e in enumerate(curve) if e["time_s"] >= minutes * 60 or e["step"] == args.steps]  # its outputs are not waited for
            curves[name], done = (curve[: past[0] + 1], True) if past else (curve, False)
            if done or procs[name].poll() is not None:
                procs.pop(name).kill()
                for e in curves[name]:
                    print(f"{name:>10}  step {e['step']:>6}  {e['time_s'] / 60:6.2f} min  held-out PSNR {e['psnr']:6.2f} dB  SSIM {e['ssim']:.4f}", flush=True)
    print("\n| run | steps | training minutes | held-out PSNR (dB) | SSIM | minutes to 25 dB | minutes to 28 dB |\n|---|---|---|---|---|---|---|")
    for name, curve in curves.items():
        last = curve[-1] if curve else {"step": 0, "time_s": 0.0, "psnr": float("nan"), "ssim": float("nan")}
        reach = [first_reach(curve, "psnr", v, "time_s") for v in (25.0, 28.0)]
        print(f"| {name} | {last['step']} | {last['time_s'] / 60:.1f} | {last['psnr']:.2f} | {last['ssim']:.4f} | "
              + " | ".join("not reached" if t is None else f"{t / 60:.1f}" for t in reach) + " |")  # fmt: skip
    print(next((text for key, text in REFERENCES.items() if key in args.scene.name), "published: no reference for this scene"))
    plot({k: {"curve": v} for k, v in curves.items()}, args.out / "psnr_vs_minutes.png", title=f"{args.scene.name}: held-out PSNR")


def plot(records: dict, path: Path, title: str = "lego_100: NeRF fitting") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rec in records.items():
        ax.plot([p["time_s"] / 60 for p in rec["curve"]], [p["psnr"] for p in rec["curve"]], marker=".", label=name)
    ax.axhline(22, color="gray", lw=0.5, ls="--")
    ax.set(xlabel=f"training minutes ({os.environ.get('OMP_NUM_THREADS', 'all')} CPU threads a run)", ylabel="held-out PSNR (dB)", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def throughput(args) -> None:
    cfg = resolve(FitConfig(signal=str(args.scene)), "radiance")
    signal = load_configured_signal(cfg)
    layout = signal.layout
    points = cfg.batch_size * (layout.samples + layout.importance)
    peak = gemm_peak()
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads; {cfg.width}x{cfg.depth} {cfg.activation} field, "
          f"{cfg.batch_size} rays x {layout.samples} samples = {points:,} points a step; fp32 GEMM peak {peak:.1f} GFLOP/s")  # fmt: skip
    print(f"{'variant':>10} {'ms/step':>9} {'rays/s':>9} {'GFLOP/s':>8} {'of peak':>8}")
    for variant in ("eager", "compiled"):
        torch.manual_seed(0)
        field = Field(cfg.field_config(signal.layout))
        model = torch.compile(field, dynamic=False) if variant == "compiled" else field
        opt = torch.optim.Adam(field.parameters(), lr=cfg.lr)
        g = torch.Generator().manual_seed(0)

        def step():
            idx = torch.randint(len(signal.coords), (cfg.batch_size,), generator=g)
            opt.zero_grad(set_to_none=True)
            mse(layout.observe(model, signal.coords[idx]), signal.values[idx]).backward()
            opt.step()

        for _ in range(3):
            step()
        times, t_end = [], time.perf_counter() + args.seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        ms = sorted(times)[len(times) // 2] * 1e3
        gflops = flops_per_step(field, points) / (ms / 1e3) / 1e9
        print(f"{variant:>10} {ms:9.1f} {cfg.batch_size / ms * 1e3:9.0f} {gflops:8.1f} {gflops / peak:8.2f}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("quality", "compare", "throughput"))
    p.add_argument("--scene", type=Path, default=DATA / "nerf" / "lego_100.npz")
    p.add_argument("--minutes", type=float, default=20.0, help="quality, compare: training minutes per run")
    p.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS))
    p.add_argument("--lr", nargs=2, action="append", metavar=("RUN", "LR"), default=[], help="quality: another learning rate for a run")
    p.add_argument("--steps", type=int, help="compare: equal steps instead of a time budget")
    p.add_argument("--eval-every", type=int, default=1000, help="compare: steps between evaluations")
    p.add_argument("--run", action="append", metavar="NAME:ARGS", help="compare: a run's name and its mclnf fit options, e.g. 'ndc:--ndc' (default: hashgrid and relu-pe)")
    p.add_argument("--seconds", type=float, default=20.0, help="throughput: seconds per variant")
    p.add_argument("--out", type=Path, default=Path("/tmp/nerf_fit"))
    p.add_argument("--keep-denormals", action="store_true", help="do not flush subnormal floats to zero (the CLI does)")
    args = p.parse_args(argv)
    args.lr = {k: float(v) for k, v in args.lr}
    keep_freed_memory()
    if not args.keep_denormals:
        flush_denormals()
    args.out.mkdir(parents=True, exist_ok=True)
    {"quality": quality, "compare": compare, "throughput": throughput}[args.what](args)


if __name__ == "__main__":
    main()
