"""Forward + backward time of a field per activation: autograd's graph of the plain expression, the fused
autograd node (``FoldedActivation.fuse``) and ``torch.compile``, side by side in one process.

Run: ``OMP_NUM_THREADS=1 python benchmarks/activations.py [--points 4096] [--reps 21] [--compile]``.

Fields: 2 → 3, width × depth 128 × 4 and 256 × 5, activations sine, gaussian and wavelet. One step is
``zero_grad`` + forward + mse + ``backward`` (no optimizer: the activation's share is what differs). The
``plain`` and ``fused`` rows take turns step by step (interleaved repetitions after warm-up), so they
share the machine's load; times are the median process CPU time per step (less sensitive to a shared
machine's preemptions than wall-clock); as in the CLI, freed memory is kept and subnormal floats are
flushed (a gaussian's exp(−u²) underflows into them, and arithmetic on them is many times slower:
``--denormals`` keeps them). GFLOP/s counts the linear layers only (6·B·Σ fan_in·fan_out, less the
first layer's input gradient) for scale. ``--compile`` adds ``field.compile(dynamic=False)`` of the
plain field: its compilation time (the first forward + backward, less a step; with a fresh inductor
cache, as a first run pays it — ``--warm-cache`` reuses the on-disk one, as later runs of the same
shapes do, ≈ 4–9 s) and the number of steps after which it has paid for itself against the better
eager variant (∞: never).

Measured (1 thread, 4096 points): fused gaussian 1.5–1.7× and wavelet 1.6–1.75× the plain graph
(1.3–1.35× at 512 points), sine 0.94–1.01× (not adopted: its graph is already minimal). The gaussian
4 × 128 field went from 15.9 ms (52 GFLOP/s) before this work to 8.2 ms (99 GFLOP/s): its exp(−u²)
had hit torch's slow exp path (``mclnf.fields.activations.floored_exp``). torch.compile (cold, 13–16 s)
beats the fused wavelet after ≈ 1,800 (5 × 256) to 5,900 (4 × 128) steps, sine after 6,000–32,000, and
never the fused gaussian.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from mclnf.fields import Field, FieldConfig
from mclnf.fields.activations import FoldedActivation
from mclnf.losses import mse
from mclnf.runtime import flush_denormals, keep_freed_memory

SIZES = ((128, 4), (256, 5))
ACTIVATIONS = ("sine", "gaussian", "wavelet")


def set_fuse(field: Field, fuse: bool) -> None:
    for act in (field.first_activation, field.activation):
        if isinstance(act, FoldedActivation):
            act.fuse = fuse


def flops(field: Field, batch: int) -> int:
    dims = [(layer.in_features, layer.out_features) for layer in field.layers]
    return 6 * batch * sum(n * m for n, m in dims) - 2 * batch * dims[0][0] * dims[0][1]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--points", type=int, nargs="+", default=[4096])
    p.add_argument("--activations", nargs="+", default=list(ACTIVATIONS), choices=ACTIVATIONS)
    p.add_argument("--sizes", nargs="+", default=[f"{d}x{w}" for w, d in SIZES], help="depth x width, e.g. 4x128")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=21)
    p.add_argument("--compile", action="store_true", help="also time torch.compile (≈ 10–30 s of compilation per row)")
    p.add_argument("--warm-cache", action="store_true", help="--compile with inductor's on-disk cache (default: a fresh one, a first run's cost)")
    p.add_argument("--denormals", action="store_true", help="leave subnormal floats on (the CLI flushes them: mclnf.runtime.flush_denormals)")
    a = p.parse_args(argv)
    kept, flushed = keep_freed_memory(), not a.denormals and flush_denormals()
    if a.compile and not a.warm_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="mclnf-inductor-")  # cold: what a first run pays
    print(f"# field forward+backward per activation: median CPU ms of {a.reps} interleaved reps, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, freed memory kept: {kept}, denormals flushed: {flushed}")  # fmt: skip
    head = f"{'activation':>10} {'field':>7} {'points':>6} {'plain ms':>9} {'fused ms':>9} {'fused ×':>8} {'GFLOP/s':>13}"
    if a.compile:
        head += f" {'compiled ms':>11} {'compile s':>9} {'break-even':>10}"
    print(head)
    for activation in a.activations:
        for depth, width in (map(int, size.split("x")) for size in a.sizes):
            for n in a.points:
                torch.manual_seed(0)
                field = Field(FieldConfig(2, 3, width=width, depth=depth, activation=activation))
                x, y = torch.rand(n, 2) * 2 - 1, torch.rand(n, 3)

                def step(f=field):
                    f.zero_grad(set_to_none=True)
                    mse(f(x), y).backward()

                cpu = {"plain": [], "fused": []}
                for r in range(a.warmup + a.reps):
                    for variant in cpu:
                        set_fuse(field, variant == "fused")
                        c0 = time.process_time()
                        step()
                        if r >= a.warmup:
                            cpu[variant].append(1e3 * (time.process_time() - c0))
                plain, fused = (statistics.median(cpu[k]) for k in ("plain", "fused"))
                gf = flops(field, n) / 1e6
                line = (f"{activation:>10} {f'{depth}×{width}':>7} {n:>6} {plain:9.2f} {fused:9.2f} {plain / fused:7.2f}× "
                        f"{gf / plain:6.1f}→{gf / fused:5.1f}")  # fmt: skip
                if a.compile:
                    set_fuse(field, False)
                    field.compile(dynamic=False)
                    c0 = time.perf_counter()
                    step()
                    first = time.perf_counter() - c0
                    times = []
                    for _ in range(a.warmup + a.reps):
                        c0 = time.process_time()
                        step()
                        times.append(1e3 * (time.process_time() - c0))
                    compiled = statistics.median(times[a.warmup :])
                    best = min(plain, fused)
                    cost = first - compiled / 1e3
                    even = f"{cost / ((best - compiled) / 1e3):10.0f}" if compiled < best else f"{'∞':>10}"
                    line += f" {compiled:11.2f} {cost:9.1f} {even}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
