"""Signals per second of ``mclnf fit-many`` (fields stacked with vmap, :mod:`mclnf.stacked`) against fitting the same
signals one at a time as ``mclnf fit`` does (a :class:`~mclnf.fields.Field`, its fused Adam and the one training loop),
side by side in one run.

Run: ``python benchmarks/fit_many.py [--images 32] [--resize 64] [--width 64] [--depth 3] [--steps 500] [--lr 1e-3]``.

The first ``--images`` faces of ``faces_utk`` (200 × 200, resized to ``--resize``), every field trained for ``--steps``
steps of ``--batch-size`` pixels from the same seed. The two ways take turns stack by stack — a stack of
``--signals-per-batch`` signals fitted together, then the same signals one by one — so that both see the same load
of a shared machine. Timed: building the fields and optimizers and training (not loading, evaluating or writing).
Printed: signals per second of each, their ratio, and the mean PSNR of each with the largest difference between the
two fields of one signal (they are the same fields up to float rounding, so the PSNRs agree — at a learning rate that
trains stably: on the edge of divergence, 5 × 256 at 1e-3, rounding differences grow to ≈ 1 dB). Then, end to end, what a
user waits for: ``mclnf fit-many`` on the first ``--cli`` images against ``mclnf fit`` run on each of them, as processes
(start-up, loading, fitting and every output included; one process start amortized over the folder). All in float32.

Measured (torch 2.13 CPU, one thread as the shared 2-core machine's rules ask, other jobs running; README): a 3 × 64
sine field (4.5k parameters) at batch 512 is bound by per-step overhead when fitted alone (≈ 0.8–1.3 ms a step, of which
Adam's Python wrapper alone ≈ 0.3 ms, for ≈ 0.3 ms of arithmetic); stacked 32 at a time it takes ≈ 0.4–0.7 ms per field
and step: 2.2–2.5× the signals per second (the ≥ 3× target on 2 cores was not measured: no run here may take 2 threads).
End to end, as processes, ``mclnf fit-many`` also spares a process start per signal (4.4–4.6× on 4 images). The default
5 × 256 field (200k parameters) is bound by its matrix products already (≈ 45 GFLOP/s on one core): ≈ 1× on a CPU.
Stacking pays most where kernel launches dominate — on a GPU — not measured here.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mclnf.fields import Field, FieldConfig
from mclnf.losses import LOSSES
from mclnf.optim import build_optimizer
from mclnf.runtime import flush_denormals, keep_freed_memory
from mclnf.sampling import EpochSampler
from mclnf.signals.datasets import folder_files, load_alike
from mclnf.stacked import default_stack, fit_stacked, stacks
from mclnf.train import train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def fit_alone(signal, config: FieldConfig, lr: float, steps: int, batch_size: int, seed: int) -> Field:
    """One field fitted as ``mclnf fit`` fits it (its ``new_field`` and training loop, without the outputs)."""
    torch.manual_seed(seed)
    field = Field(config)
    optimizer = build_optimizer("adam", field, lr, seed=seed)
    loss_of, layout = LOSSES[signal.layout.loss], signal.layout
    train(optimizer, lambda x, y: loss_of(layout.observe(field, x), y), EpochSampler(signal.coords, signal.values, batch_size, seed), steps, progress=False)
    return field


def psnr(field, signal) -> float:
    return signal.layout.metrics(signal.layout.predict(field, signal.eval_coords), signal.eval_values)["psnr"]


def cli_seconds(*args) -> float:
    """Wall-clock seconds of ``mclnf ARGS`` as a process."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mclnf", *map(str, args)], check=True, capture_output=True)
    return time.perf_counter() - t0


def end_to_end(files: list[str], a: argparse.Namespace) -> str:
    """``mclnf fit`` on each of ``files`` against ``mclnf fit-many`` on them, as processes: the line to print."""
    options = ("--resize", a.resize, "--width", a.width, "--depth", a.depth, "--activation", a.activation, "--steps", a.steps,
               "--batch-size", a.batch_size, "--lr", a.lr, "--seed", a.seed, "--precision", "fp32", "--quiet")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "signals"
        folder.mkdir()
        for f in files:
            shutil.copy(f, folder)
        alone = sum(cli_seconds("fit", folder / Path(f).name, *options, "--out", Path(tmp) / Path(f).stem) for f in files)
        many = cli_seconds("fit-many", folder, *options, "--out", Path(tmp) / "many")
    return f"end to end, {len(files)} images as processes: mclnf fit on each {alone:.1f} s, mclnf fit-many {many:.1f} s: {alone / many:.2f}x"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DATA / "faces_utk")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--resize", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--activation", default="sine")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--signals-per-batch", type=int, default=None, help="default: fit-many's (mclnf.stacked.default_stack)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cli", type=int, default=4, help="images of the end-to-end comparison of the commands (0: none)")
    a = p.parse_args(argv)
    keep_freed_memory()  # as the CLI does, for both ways
    flush_denormals()
    files = folder_files(a.data)[: a.images]
    signals = load_alike(files, {"resize": a.resize})
    layout = signals[0].layout
    config = FieldConfig(layout.in_dim, layout.out_dim, width=a.width, depth=a.depth, activation=a.activation)
    per_stack = a.signals_per_batch or default_stack(config, a.batch_size, len(signals[0]), len(signals))
    print(f"# fit-many vs one at a time: {len(signals)} images of {a.data.name} at {layout.height} × {layout.width}, {a.activation} {a.depth} × {a.width} "
          f"({config.num_params:,} parameters), adam {a.lr:g}, {a.steps} steps of {a.batch_size}, {per_stack} per stack; "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")  # fmt: skip
    alone_s = stacked_s = 0.0
    alone_psnr, stacked_psnr = [], []
    for stack in stacks(list(range(len(signals))), per_stack):
        group = [signals[i] for i in stack]
        t0 = time.perf_counter()
        fields, _, _ = fit_stacked(group, config, lr=a.lr, steps=a.steps, batch_size=a.batch_size, seed=a.seed)
        stacked_s += time.perf_counter() - t0
        stacked_psnr += [psnr(fields.field(k), s) for k, s in enumerate(group)]
        for s in group:
            t0 = time.perf_counter()
            field = fit_alone(s, config, a.lr, a.steps, a.batch_size, a.seed)
            alone_s += time.perf_counter() - t0
            alone_psnr.append(psnr(field, s))
    n = len(signals)
    diff = max(abs(x - y) for x, y in zip(alone_psnr, stacked_psnr))
    print(f"one at a time: {n / alone_s:6.2f} signals/s ({alone_s:.1f} s), mean PSNR {statistics.mean(alone_psnr):.3f} dB")
    print(f"stacked:       {n / stacked_s:6.2f} signals/s ({stacked_s:.1f} s), mean PSNR {statistics.mean(stacked_psnr):.3f} dB")
    print(f"ratio {alone_s / stacked_s:.2f}x; largest PSNR difference of one signal's two fields {diff:.2g} dB")
    if a.cli:
        print(end_to_end(files[: a.cli], a))


if __name__ == "__main__":
    main()
