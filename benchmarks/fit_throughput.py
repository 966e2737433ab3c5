"""Training-step throughput of the default field against the machine's float32 GEMM peak.

Run: ``python benchmarks/fit_throughput.py [--compile] [--malloc] [--threads N] [--batches 512 4096 65536] [--precisions fp32 bf16] [--fit]``.

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

Precision rows (``--precisions fp32 bf16``): every variant is also measured with its step under
:class:`mclnf.runtime.Precision` (``torch.autocast`` to bfloat16: the GEMM inputs cast, parameters, Adam
state and loss float32), suffix ``+bf16``, interleaved with the float32 rows of its batch size so the
ratios compare steps taken side by side; a bf16 row's ``ratio`` is against the bf16 GEMM peak (best
``torch.mm`` of bfloat16 matrices, measured alike), and the lines after the table give each
bf16/fp32 speed-up at equal batch. ``--fit`` then fits real signals at ``mclnf fit``'s defaults (2000
steps, batch 512; :func:`mclnf.commands.fit.fit`, so exactly the command's loop) once per precision and
prints the final PSNR, its difference from fp32 and the training seconds, after the process settings the
CLI applies (:func:`~mclnf.runtime.keep_freed_memory`, :func:`~mclnf.runtime.flush_denormals`; a gaussian
field's fp32 steps are many times slower without the latter): the measurement behind ``--precision``'s
default (docs/precision.md). ``--fit-variants activation=gaussian encoding=hashgrid`` fits other fields,
``--fit-steps`` other budgets.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mclnf.config import FitConfig
from mclnf.fields import Field, FieldConfig
from mclnf.losses import mse
from mclnf.runtime import Precision, flush_denormals, keep_freed_memory

DATA = Path(os.environ.get("MCLNF_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
FIT_SIGNALS = [DATA / "kodak" / "kodim23.png", DATA / "kodak" / "kodim01.png", DATA / "librispeech_clips" / "024.flac"]  # high-PSNR, textured image; a 3.1 s utterance


def flops_per_step(field: Field, batch: int) -> int:
    dims = [(layer.in_features, layer.out_features) for layer in field.layers]
    return 6 * batch * sum(n * m for n, m in dims) - 2 * batch * dims[0][0] * dims[0][1]


def gemm_peak(sizes=(2048, 4096), repeats: int = 5, dtype=torch.float32) -> float:
    """Best GFLOP/s of square ``torch.mm`` of ``dtype`` (float32) matrices over ``sizes`` and ``repeats``."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        out = torch.empty(n, n, dtype=dtype)
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


def make_step(variant: str, batch: int, precision: str = "fp32", device: str = "cpu"):
    torch.manual_seed(0)
    amp = Precision(precision, device)
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
        with amp.autocast():  # fp32: no context at all
            loss = mse(model(x), y)
        loss.backward()
        optimizer.step()

    return field, step


def measure(variants, batches, seconds, suffix, precisions=("fp32",)):
    """Rows (batch, variant, FLOP, median s, min s, reps), the variants (× precisions) of one batch interleaved."""
    rows = []
    for batch in batches:
        steps = {v + ("" if p == "fp32" else f"+{p}"): make_step(v, batch, p) for v in variants for p in precisions}
        for _, step in steps.values():  # warm-up (and compilation)
            for _ in range(3):
                step()
        t0 = time.perf_counter()
        for _, step in steps.values():
            step()
        reps = max(10, int(seconds / (time.perf_counter() - t0) * len(steps)))
        times = {v: [] for v in steps}
        for _ in range(reps):
            for v, (_, step) in steps.items():
                t0 = time.perf_counter()
                step()
                times[v].append(time.perf_counter() - t0)
        for v in steps:
            rows.append((batch, v + suffix, flops_per_step(steps[v][0], batch), statistics.median(times[v]), min(times[v]), reps))
    return rows


def fit_quality(signals, precisions, variants=("",), steps: int = 2000) -> None:
    """``mclnf fit``'s default budget on each signal (× field variant: ``activation=gaussian``, ``encoding=hashgrid``, …;
    empty: the kind's default field) once per precision: final PSNR, its change from fp32, training seconds. ``steps``: the budget (fit's default 2000)."""
    from mclnf.commands.fit import fit

    keep_freed_memory(), flush_denormals()  # as the CLI does before every command
    print(f"# PSNR after {steps} steps at batch 512 (mclnf fit's default budget: 2000), per precision; field: the kind's default unless named")
    print(f"# {'signal':>16} {'kind':>6} {'field':>16} {'precision':>9} {'PSNR dB':>8} {'vs fp32':>8} {'train s':>8} {'ms/step':>8}")
    for path in signals:
        for variant in variants:
            options = dict(kv.split("=") for kv in variant.split(",") if kv)
            base = None
            for p in precisions:
                with tempfile.TemporaryDirectory() as tmp:
                    r = fit(dataclasses.replace(FitConfig(signal=str(path), **options), steps=steps, precision=p, out=Path(tmp) / "run", progress=False))
                psnr = r["final"]["psnr"]
                base = psnr if p == "fp32" else base
                delta = f"{psnr - base:+8.2f}" if base is not None else f"{'':>8}"
                print(f"  {path.name:>16} {r['kind']:>6} {variant or 'default':>16} {p:>9} {psnr:>8.2f} {delta} {r['wall_time_s']:>8.1f} {1e3 * r['wall_time_s'] / r['steps']:>8.2f}", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[512, 4096, 65536])
    p.add_argument("--compile", action="store_true", help="add a row for field.compile(dynamic=False)")
    p.add_argument("--no-reference", action="store_true", help="omit the straightforward-forward row")
    p.add_argument("--malloc", action="store_true", help="then repeat every row after keep_freed_memory() (rows '+nommap')")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per configuration (≥ 10 steps)")
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"], help="also measure each row under bf16 autocast (rows '+bf16')")
    p.add_argument("--fit", action="store_true", help="then fit --fit-signals at mclnf fit's defaults once per precision (PSNR, seconds)")
    p.add_argument("--fit-signals", type=Path, nargs="+", default=FIT_SIGNALS, help="signals of --fit (default: kodim23, kodim01, librispeech_clips/024.flac)")
    p.add_argument("--fit-variants", nargs="+", default=[""], help="field options of --fit, as activation=gaussian or encoding=hashgrid (default: the kind's field)")
    p.add_argument("--fit-steps", type=int, default=2000, help="training steps of --fit (default: mclnf fit's 2000)")
    p.add_argument("--no-steps", action="store_true", help="skip the step-time table (with --fit)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = (["reference"] if not args.no_reference else []) + ["field"] + (["compiled"] if args.compile else [])

    if not args.no_steps:
        step_table(args, variants)
    if args.fit:
        fit_quality(args.fit_signals, args.precisions, args.fit_variants, args.fit_steps)


def step_table(args, variants) -> None:
    bf16 = "bf16" in args.precisions
    peak = gemm_peak()
    peak16 = gemm_peak(dtype=torch.bfloat16) if bf16 else None
    print(
        f"# mclnf fit_throughput: torch {torch.__version__}, {torch.get_num_threads()} threads "
        f"({os.cpu_count()} CPUs, {platform.processor() or platform.machine()}), {' and '.join(args.precisions)}; "
        f"5x256 sine field, 198,915 params, Adam, mse"
    )
    print("# FLOP/step = 6*B*sum(fan_in*fan_out) - 2*B*fan_in0*fan_out0 (linear layers only; activations, loss, optimizer not counted)")
    rows = measure(variants, args.batches, args.seconds, "", args.precisions)
    if args.malloc:
        if keep_freed_memory():
            rows += measure(variants, args.batches, args.seconds, "+nommap", args.precisions)
        else:
            print("# --malloc: mallopt unavailable (not glibc?); rows skipped")
    peak = max(peak, gemm_peak())
    if bf16:
        peak16 = max(peak16, gemm_peak(dtype=torch.bfloat16))

    print(f"# fp32 GEMM peak (best torch.mm, n = 2048/4096): {peak:.1f} GFLOP/s" + (f"; bf16: {peak16:.1f} GFLOP/s" if bf16 else ""))
    print(f"# {'batch':>6} {'variant':>16} {'GFLOP/step':>10} {'ms/step':>9} {'(min)':>9} {'GFLOP/s':>8} {'ratio':>6} {'(min)':>6} {'reps':>5}")
    for batch, v, flop, med, best, reps in rows:
        gfs, pk = flop / med / 1e9, peak16 if "+bf16" in v else peak
        print(f"  {batch:>6} {v:>16} {flop / 1e9:>10.3f} {med * 1e3:>9.2f} {best * 1e3:>9.2f} {gfs:>8.1f} {gfs / pk:>6.2f} {flop / best / 1e9 / pk:>6.2f} {reps:>5}")
    print("# ms/step and ratio: median over reps (min in parentheses columns); ratio = achieved GFLOP/s / peak (bf16 rows: the bf16 peak)")
    if bf16:
        med = {(b, v): m for b, v, _, m, _, _ in rows}
        for (b, v), m in med.items():
            if "+bf16" in v:
                base = v.replace("+bf16", "")
                print(f"# bf16 vs fp32, {base:>14} batch {b:>6}: {med[b, base] / m:.2f}x faster ({med[b, base] * 1e3:.2f} -> {m * 1e3:.2f} ms/step median, measured side by side)")


if __name__ == "__main__":
    main()
