"""``--optimizer auto`` against the default on a benchmark set: every image of ``kodak/`` (24) and ``div2k/`` (16)
at 256² (the preconditioner paper's size), the default budget (2,000 steps of 512 pixels), seed 0, for every image
activation where auto's choice differs from the default (:data:`mclnf.optim.auto.EXCEPTIONS`; elsewhere auto *is*
the default). Prints one line per image and the count of images where auto ends more than 0.1 dB below. ``--candidate ACTIVATION
OPTIMIZER LR`` checks a would-be exception the same way before it enters the table.

    OMP_NUM_THREADS=1 python benchmarks/auto_check.py [--data ../shared/data] [--out runs/auto-check] [--candidate wavelet esgd-robust 0.15]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from mclnf.cli import main as cli
from mclnf.optim.auto import EXCEPTIONS


def psnr(out: Path, *args) -> float:
    if not (out / "metrics.json").is_file():
        code = cli(["fit", *map(str, args), "--resize", "256", "--quiet", "--out", str(out)])
        if code != 0:
            raise SystemExit(f"mclnf fit {' '.join(map(str, args))}: exit {code}")
    return json.loads((out / "metrics.json").read_text())["final"]["psnr"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--out", type=Path, default=Path("runs/auto-check"))
    p.add_argument("--activations", nargs="*", default=None, help="only these activations' exceptions")
    p.add_argument("--candidate", nargs=3, metavar=("ACTIVATION", "OPTIMIZER", "LR"), help="check a would-be exception instead (--optimizer OPTIMIZER --lr LR)")
    p.add_argument("--shard", default="1/1", help="i/n: fit only every n-th image from the i-th (several processes fill one --out; "
                   "run once more without it for the summary)")
    a = p.parse_args()
    index, count = map(int, a.shard.split("/"))
    images = (sorted((a.data / "kodak").glob("*.png")) + sorted((a.data / "div2k").glob("*.png")))[index - 1 :: count]
    print(f"# --optimizer auto vs the default — {len(images)} images at 256², 2000 steps, seed 0; torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    if a.candidate:
        activation, optimizer, lr = a.candidate
        checks = [(activation, optimizer, float(lr), f"{optimizer}-{lr}", ("--optimizer", optimizer, "--lr", lr))]
    else:
        checks = [(act, optimizer, lr, "auto", ("--optimizer", "auto")) for (kind, act), (optimizer, lr, _) in EXCEPTIONS.items()
                  if kind == "image" and (not a.activations or act in a.activations)]  # fmt: skip
    for activation, optimizer, lr, tag, options in checks:
        gains = []
        for image in images:
            name = f"{image.parent.name}-{image.stem}-{activation}"
            default = psnr(a.out / f"{name}-default", image, "--activation", activation)
            chosen = psnr(a.out / f"{name}-{tag}", image, "--activation", activation, *options)
            gains.append(chosen - default)
            print(f"{image.parent.name}/{image.name} {activation}: default {default:.2f} dB, {tag} ({optimizer} {lr:g}) {chosen:.2f} dB, {chosen - default:+.2f}", flush=True)
        worse = sum(g < -0.1 for g in gains)
        print(f"\n{activation}: {tag} − default median {statistics.median(gains):+.2f} dB, min {min(gains):+.2f}, max {max(gains):+.2f}; worse by > 0.1 dB on {worse} of {len(gains)}\n")


if __name__ == "__main__":
    main()
