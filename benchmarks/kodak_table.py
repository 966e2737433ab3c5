"""The Kodak table: every image of ``kodak/`` (24) fitted by each field (sine, gaussian, wavelet, relu-pe MLPs and the
hash grid) at 256², the default budget (2,000 steps × 512 pixels, Adam at the field's default rate), seed 0, in fp32
(docs/fields.md's table was measured before ``mclnf fit`` took bf16 by default for sine images; docs/precision.md).

Printed per field: PSNR/SSIM mean ± std over the images at the fixed step budget, and PSNR at a fixed time budget —
the PSNR of each run's last evaluation (every 100 steps) within ``--seconds`` of training (default: the fastest
field's mean time for the whole budget), with the steps that took. Each run uses one thread; ``--workers`` runs go
side by side (times are comparable only within one invocation).

    python benchmarks/kodak_table.py [--data ../shared/data] [--out runs/kodak] [--workers 2] [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

FIELDS = {"sine": ["--activation", "sine"], "gaussian": ["--activation", "gaussian"], "wavelet": ["--activation", "wavelet"],
          "relu-pe": ["--activation", "relu-pe"], "hashgrid": ["--encoding", "hashgrid"]}  # fmt: skip


def fit(image: Path, field: str, out: Path) -> dict:
    """One run (a subprocess at one thread), or its metrics.json if it already ran."""
    if not (out / "metrics.json").is_file():
        cmd = [sys.executable, "-m", "mclnf.cli", "fit", str(image), *FIELDS[field], "--resize", "256", "--eval-every", "100", "--precision", "fp32", "--quiet", "--out", str(out)]
        if subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True).returncode != 0:
            raise SystemExit(f"{' '.join(cmd)}: failed")
    return json.loads((out / "metrics.json").read_text())


def mean_std(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--out", type=Path, default=Path("runs/kodak"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seconds", type=float, default=None)
    a = p.parse_args()
    images = sorted((a.data / "kodak").glob("*.png"))
    jobs = [(image, field) for image in images for field in FIELDS]
    with ThreadPoolExecutor(a.workers) as pool:
        runs = dict(zip(jobs, pool.map(lambda job: fit(job[0], job[1], a.out / f"{job[0].stem}-{job[1]}"), jobs)))
    total = {f: statistics.fmean(runs[i, f]["curve"][-1]["time_s"] for i in images) for f in FIELDS}
    seconds = a.seconds or min(total.values())
    print(f"# Kodak: {len(images)} images at 256², 2000 steps × 512 pixels, seed 0, Adam at each field's default rate; torch {torch.__version__}, "
          f"one thread a run, {a.workers} side by side\n")
    print(f"| field | params | PSNR (dB) at 2000 steps | SSIM at 2000 steps | training s | PSNR (dB) at {seconds:.1f} s | steps by then |\n|---|---|---|---|---|---|---|")
    for f in FIELDS:
        rs = [runs[i, f] for i in images]
        within = [max((c for c in r["curve"] if c["time_s"] <= seconds), key=lambda c: c["step"], default=r["curve"][0]) for r in rs]
        cells = [f"{rs[0]['params']:,}", mean_std([r["final"]["psnr"] for r in rs]), mean_std([r["final"]["ssim"] for r in rs]), f"{total[f]:.1f}",
                 mean_std([c["psnr"] for c in within]), f"{statistics.fmean(c['step'] for c in within):.0f}"]  # fmt: skip
        print(f"| {f} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
