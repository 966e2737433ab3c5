"""Held-out PSNR after 1 (and s) test-time steps against meta-training's outer steps: how far a CPU budget gets.

MCL-NF's Table 1 reports θ₀ after 500k outer steps; this measures the curve on the way there. One run of one method
(a preset of ``meta_table1.py``; default ``faces_utk180``, mcl-nf, second-order) meta-trains in segments — ``mclnf
meta-train --resume --outer-steps K`` for every K of ``--at``, which continues bit-exactly — and the θ₀ of every segment
is kept (``outer-K/init.safetensors``) and meta-tested on the same held-out signals (``--steps``, ``--signals``; one
``mclnf meta-test`` per snapshot, so an interrupted benchmark picks up where it stopped). Printed: outer steps,
meta-train seconds, the loss after adaptation (mean of the segment's last 50 outer steps, meta-train signals) and the
held-out metric at every test-time step count; drawn against outer steps and against meta-train seconds.

    python benchmarks/meta_outer_curve.py [--preset faces_utk180] [--method mcl-nf] [--at 50 100 200 400 800 1600 3200]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from meta_table1 import PRESETS, mclnf

from mclnf.eval.plots import label, plot_curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="faces_utk180")
    ap.add_argument("--method", default="mcl-nf")
    ap.add_argument("--meta-grad", default="second-order")
    ap.add_argument("--at", type=int, nargs="+", default=[50, 100, 200, 400, 800, 1600, 3200], help="outer steps at which θ₀ is kept and scored")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 16], help="test-time steps per task")
    ap.add_argument("--signals", type=int, default=None, help="meta-test signals (default: the preset's)")
    ap.add_argument("--threads", type=int, default=None, help="threads of each mclnf process (default: torch's)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-meta-outer-curve"))
    a = ap.parse_args()
    p, at = PRESETS[a.preset], sorted(set(a.at))
    signals = a.signals or p["signals"]
    out = a.out / f"{a.preset}-{a.method}-{a.meta_grad}"
    run, logs = out / "run", out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"# held-out quality against outer steps, preset {a.preset}, {a.method} ({a.meta_grad}): torch {torch.__version__}, {a.threads or torch.get_num_threads()} thread(s)")
    print(f"deviations from the paper: {p['deviations']}; outer steps to {at[-1]} (the paper: 500k); test-time steps {', '.join(map(str, a.steps))} "
          f"per task with the inner loop's SGD 1e-2, on the first {signals} meta-test signals\n")  # fmt: skip

    rows = []
    for k in at:
        snap = out / f"outer-{k:05d}"
        if not (snap / "init.safetensors").is_file():
            mclnf(["meta-train", p["data"], *p["load"], *p["train"], "--method", a.method, "--meta-grad", a.meta_grad, "--outer-steps", str(k),
                   "--resume" if (run / "run.json").is_file() else "--overwrite", "--quiet", "--out", str(run)], logs / f"meta-train-{k}.log", a.threads)  # fmt: skip
            snap.mkdir(exist_ok=True)
            for name in ("meta_train.json", "init.safetensors"):  # θ₀ last: its presence marks a complete snapshot
                shutil.copy2(run / name, snap / name)
        test = snap / "meta-test"
        if not (test / "metrics.json").is_file():
            mclnf(["meta-test", str(snap), p["data"], "--steps", *map(str, a.steps), "--signals", str(signals), "--baselines", *p.get("test", []),
                   "--quiet", "--overwrite", "--out", str(test)], logs / f"meta-test-{k}.log", a.threads)  # fmt: skip
        trained = json.loads((snap / "meta_train.json").read_text())
        record = json.loads((test / "metrics.json").read_text())["methods"][0]
        last = trained["curve"][-50:]
        rows.append({"step": k, "time_s": trained["train_s"], "loss": sum(c["loss"] for c in last) / len(last),
                     **{f"{m}_at_step_{s}": v for s, values in record["curve"].items() for m, v in values.items()}})  # fmt: skip

    metrics = [key for key in rows[0] if key not in ("step", "time_s", "loss")]
    print(f"| outer steps | meta-train s | loss after adaptation | {' | '.join(map(label, metrics))} |")
    print(f"|{'---|' * (len(metrics) + 3)}")
    for r in rows:
        print(f"| {r['step']} | {r['time_s']:.0f} | {r['loss']:.4g} | " + " | ".join(f"{r[m]:.4g}" for m in metrics) + " |")
    figure = out / "quality_vs_outer_steps.png"
    plot_curve(rows, figure, title=f"{a.preset} · {a.method} ({a.meta_grad}) · {signals} meta-test signals", x_label="outer step", x_seconds="meta-train time (s)")
    print(f"\nfigure: {figure}; each snapshot's θ₀ and meta-test in {out}/outer-*/")


if __name__ == "__main__":
    main()
