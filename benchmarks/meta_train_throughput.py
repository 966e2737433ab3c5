"""Meta-training throughput at the paper's face size: outer steps per second and peak memory of ``mclnf meta-train``
for each meta-gradient, on ``faces_utk`` at 180 × 180 (MCL-NF's CelebA protocol: ``--crop 178 178 --resize 0 --pad 1``,
four 180 × 45 strips), ``--task-batch`` pixels of each task per outer step.

Each meta-gradient runs the real command in a fresh process (``python -m mclnf meta-train …``), one after the other;
the rate is taken from the run's own record (``meta_train.json``: training seconds of every outer step, evaluation
and checkpoints excluded), over the steps after the first ``--skip`` (warm-up); peak memory is the process's maximum
resident size (``os.wait4``), which includes the dataset's pixels (1,400 faces × 180² × 3 float32 = 519 MiB).

    OMP_NUM_THREADS=1 python benchmarks/meta_train_throughput.py [--data ../shared/data] [--outer-steps 20] [--task-batch 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
META_GRADS = ("second-order", "first-order", "emcl")


def run(data: Path, meta_grad: str, outer_steps: int, task_batch: int, method: str, out: Path) -> tuple[dict, float]:
    """One ``mclnf meta-train`` run: (its meta_train.json, its peak resident size in MiB)."""
    cmd = [sys.executable, "-m", "mclnf", "meta-train", str(data / "faces_utk"), "--crop", "178", "178", "--resize", "0", "--pad", "1",
           "--task-batch", str(task_batch), "--outer-steps", str(outer_steps), "--method", method, "--meta-grad", meta_grad,
           "--checkpoint-every", str(outer_steps), "--out", str(out), "--quiet"]  # fmt: skip
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)}: failed\n{child.stderr.read()}")
    return json.loads((out / "meta_train.json").read_text()), usage.ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path(os.environ.get("MCLNF_DATA", REPO.parent / "shared" / "data")))
    p.add_argument("--outer-steps", type=int, default=20)
    p.add_argument("--skip", type=int, default=2, help="outer steps not timed (warm-up)")
    p.add_argument("--task-batch", type=int, default=1024)
    p.add_argument("--method", default="mcl-nf")
    a = p.parse_args()
    threads = os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))
    print(f"# meta-train throughput: faces_utk 180×180 (1,400 meta-train faces), {a.method}, meta-batch 4, 3 inner steps, "
          f"--task-batch {a.task_batch}, outer steps {a.skip + 1}–{a.outer_steps} timed; torch {torch.__version__}, {threads} threads\n")  # fmt: skip
    print("| meta-gradient | s / outer step (median) | outer steps / s | episodes / s | peak RSS (MiB) | params (θ₀) |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for meta_grad in META_GRADS:
            record, peak = run(a.data, meta_grad, a.outer_steps, a.task_batch, a.method, Path(tmp) / meta_grad)
            times = [c["time_s"] for c in record["curve"]]
            per_step = statistics.median(b - t for t, b in zip(times[a.skip - 1 :], times[a.skip :]))
            episodes = record["meta_batch"] * (record["config"]["tasks"] if a.method.startswith("mcl-nf") else 1)  # a modular method's episodes: its tasks
            print(f"| {meta_grad} | {per_step:.3f} | {1 / per_step:.2f} | {episodes / per_step:.1f} | {peak:,.0f} | {record['params']:,} |", flush=True)


if __name__ == "__main__":
    main()
