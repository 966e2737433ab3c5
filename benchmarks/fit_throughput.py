"""Training-step throughput of the default field against the machine's float32 GEMM peak.

Run: ``python benchmarks/fit_throughput.py [--compile] [--malloc] [--threads N] [--batches 512 4096 65536]``.

Model: the default 5 × 256 sine field ``Field(FieldConfig(2, 3))`` (198,915 parameters), Adam, the
mse loss. One step is what :func:`mclnf.train.train` times: ``zero_grad`` + forward + loss +
``backward`` + ``Adam.step``; its time is the median (and the minimum) over repetitions after a
warm-up, the configurations of one batch size interleaved so they see the same machine load.

FLOP model (per step, batch B): each linear layer of fan-in n and fan-out m costs 2·B·n·m forward and
4·B·n·m backward (input and weight gradients), i.e. 6·B·Σ n·m, minus 2·B·n₀·m₀ because the first
layer needs no input gradient. Activations, loss, bias terms and the optimizer are not counted
(they take time but are not GEMM work), so achieved/peak is the share of the GEMM peak the whole
step reaches. For the default field this is 1,186,304·B FLOP (4.86 GFLOP at B = 4096).

Peak: the best of several ``torch.mm`` of square float32 matrices (n = 2048 and 4096, 2n³ FLOP
each), measured in the same run (before and after the steps; the best is kept).

Rows: ``reference`` is the straightforward forward ``last(σ(… σ(layer(x))))`` (the formula
``Field.forward`` must equal), ``field`` is ``Field.forward`` as shipped, ``compiled`` is
``field.compile(dynamic=False)`` (``--compile``; about half a minute of compilation per batch size
the first time, seconds once inductor's cache has it). With ``--malloc`` every row is measured a second
time after :func:`mclnf.runtime.keep_freed_memory` (glibc keeps freed memory instead of returning it to the
kernel), suffix ``+nommap``; it cannot be undone within the process, so those rows come after.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from mclnf.fields import Field, FieldConfig
from mclnf.losses import mse
from mclnf.runtime import keep_freed_memory


def flops_per_step(field: Field, batch: int) -> int:
    dims = [(layer.in_features, layer.out_features) for layer in field.layers]
    return 6 * batch * sum(n * m for n, m in dims) - 2 * batch * dims[0][0] * dims[0][1]


def gemm_peak(sizes=(2048, 4096), repeats: int = 5) -> float:
    """Best GFLOP/s of square float32 ``torch.mm`` over ``sizes`` and ``repeats``."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        torch.mm(a, b, out=out)
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b, out=out)
            best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def reference_forward(field: Field, x: torch.Tensor) -> torch.Tensor:
    h = field.encoding(x)
    *hidden, last = field.layers
    for i, layer in enumerate(hidden):
        h = (field.first_activation if i == 0 else field.activation)(layer(h))
    return last(h)


def make_step(variant: str, batch: int):
    torch.manual_seed(0)
    field = Field(FieldConfig(2, 3))
    model = field
    if variant == "reference":
        model = lambda x: reference_forward(field, x)  # noqa: E731
    elif variant == "compiled":
        field.compile(dynamic=False)
    optimizer = torch.optim.Adam(field.parameters(), lr=1e-4)
    x, y = torch.rand(batch, 2) * 2 - 1, torch.rand(batch, 3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = mse(model(x), y)
        loss.backward()
        optimizer.step()

    return field, step


def measure(variants, batches, seconds, suffix):
    """Rows (batch, variant, FLOP, median s, min s, reps), the variants of one batch interleaved."""
    rows = []
    for batch in batches:
        steps = {v: make_step(v, batch) for v in variants}
        for _, step in steps.values():  # warm-up (and compilation)
            for _ in range(3):
                step()
        t0 = time.perf_counter()
        for _, step in steps.values():
            step()
        reps = max(10, int(seconds / (time.perf_counter() - t0) * len(steps)))
        times = {v: [] for v in variants}
        for _ in range(reps):
            for v, (_, step) in steps.items():
                t0 = time.perf_counter()
                step()
                times[v].append(time.perf_counter() - t0)
        for v in variants:
            rows.append((batch, v + suffix, flops_per_step(steps[v][0], batch), statistics.median(times[v]), min(times[v]), reps))
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[512, 4096, 65536])
    p.add_argument("--compile", action="store_true", help="add a row for field.compile(dynamic=False)")
    p.add_argument("--no-reference", action="store_true", help="omit the straightforward-forward row")
    p.add_argument("--malloc", action="store_true", help="then repeat every row after keep_freed_memory() (rows '+nommap')")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per configuration (≥ 10 steps)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = (["reference"] if not args.no_reference else []) + ["field"] + (["compiled"] if args.compile else [])

    peak = gemm_peak()
    print(
        f"# mclnf fit_throughput: torch {torch.__version__}, {torch.get_num_threads()} threads "
        f"({os.cpu_count()} CPUs, {platform.processor() or platform.machine()}), float32; "
        f"5x256 sine field, 198,915 params, Adam, mse"
    )
    print("# FLOP/step = 6*B*sum(fan_in*fan_out) - 2*B*fan_in0*fan_out0 (linear layers only; activations, loss, optimizer not counted)")
    rows = measure(variants, args.batches, args.seconds, "")
    if args.malloc:
        if keep_freed_memory():
            rows += measure(variants, args.batches, args.seconds, "+nommap")
        else:
            print("# --malloc: mallopt unavailable (not glibc?); rows skipped")
    peak = max(peak, gemm_peak())

    print(f"# fp32 GEMM peak (best torch.mm, n = 2048/4096): {peak:.1f} GFLOP/s")
    print(f"# {'batch':>6} {'variant':>16} {'GFLOP/step':>10} {'ms/step':>9} {'(min)':>9} {'GFLOP/s':>8} {'ratio':>6} {'(min)':>6} {'reps':>5}")
    for batch, v, flop, med, best, reps in rows:
        gfs = flop / med / 1e9
        print(
            f"  {batch:>6} {v:>16} {flop / 1e9:>10.3f} {med * 1e3:>9.2f} {best * 1e3:>9.2f} "
            f"{gfs:>8.1f} {gfs / peak:>6.2f} {flop / best / 1e9 / peak:>6.2f} {reps:>5}"
        )
    print("# ms/step and ratio: median over reps (min in parentheses columns); ratio = achieved GFLOP/s / peak")


if __name__ == "__main__":
    main()
