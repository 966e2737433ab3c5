"""Training-step time of MCL-NF's FIM loss against the plain MSE step, measured side by side.

Run: ``OMP_NUM_THREADS=1 python benchmarks/fim_step.py [--batches 512 4096] [--reps 15]``.

Model: a sine field 2 → 3 (default 5 × 256, ``--width``/``--depth``), Adam. One step is ``zero_grad``
+ loss + ``backward`` + ``Adam.step``, on the same field and batch for every row:

* ``mse``: the plain mean squared error;
* ``fim (kfac-diag)`` / ``fim (diagonal)``: :func:`mclnf.losses.fim_loss` as shipped — one forward
  with taps, one backward for the errors δ, the weight gradients (c ⊙ δ)ᵀa formed from them;
* ``fim two-backward``: the previous formulation, written out here as the reference it replaced —
  δ from a vjp with respect to the taps, then autograd of Σ w ℓ / Σ w through the whole network
  again (one forward, two backward passes; kfac-diag weights).

As the CLI does, freed memory is kept by glibc (``--mmap``: not). The rows take turns step by step
(interleaved repetitions after warm-up), so they share the machine's load; printed: median wall-clock
ms per step and median process CPU ms per step (less sensitive to a shared machine's preemptions),
each with its ratio to ``mse`` (target: fim ≤ 1.3×). Measured (1 thread): kfac-diag 1.28× at batch
512 and 1.29× at 2048, where ``fim_loss`` before this formulation took 1.77× and 2.03×; diagonal
1.75–1.81× (its F costs two more GEMMs per layer); the two-backward reference 1.65–1.70×.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mclnf.fields import Field, FieldConfig
from mclnf.losses import PER_SAMPLE, fim_loss, fim_weights, mse
from mclnf.runtime import keep_freed_memory


def fim_two_backward(field: Field, x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """The formulation ``fim_loss`` had before: weights from one backward, the loss's gradient from a second."""
    taps = [layer.bias.expand(len(x), -1) for layer in field.layers]  # per-sample biases (Field.forward)

    def losses(taps):
        pred, inputs = field(x, taps)
        ell = PER_SAMPLE["mse"](pred, y)
        return ell, (ell, inputs)

    _, backprop, (ell, inputs) = torch.func.vjp(losses, taps, has_aux=True)
    w = fim_weights(inputs, backprop(torch.ones_like(ell))[0], lam)
    return (w * ell).sum() / w.sum()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[512, 4096])
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--mmap", action="store_true", help="leave glibc's malloc as it is (the CLI keeps freed memory: mclnf.runtime.keep_freed_memory)")
    a = p.parse_args(argv)
    kept = not a.mmap and keep_freed_memory()
    print(f"# FIM step vs MSE step: sine {a.depth}×{a.width}, 2 → 3, Adam, median of {a.reps} interleaved reps, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, freed memory kept: {kept}")  # fmt: skip
    print(f"{'batch':>6} {'loss':<18} {'ms/step':>8} {'× mse':>6} {'cpu ms':>8} {'× mse':>6}")
    for batch in a.batches:
        torch.manual_seed(0)
        field = Field(FieldConfig(2, 3, width=a.width, depth=a.depth))
        opt = torch.optim.Adam(field.parameters(), lr=1e-5)
        x, y = torch.rand(batch, 2) * 2 - 1, torch.rand(batch, 3)
        losses = {
            "mse": lambda: mse(field(x), y),
            "fim (kfac-diag)": lambda: fim_loss(field, x, y, 1.0, fisher="kfac-diag"),
            "fim (diagonal)": lambda: fim_loss(field, x, y, 1.0, fisher="diagonal"),
            "fim two-backward": lambda: fim_two_backward(field, x, y, 1.0),
        }
        wall, cpu = {k: [] for k in losses}, {k: [] for k in losses}
        for r in range(a.warmup + a.reps):
            for name, loss in losses.items():
                t0, c0 = time.perf_counter(), time.process_time()
                opt.zero_grad(set_to_none=True)
                loss().backward()
                opt.step()
                if r >= a.warmup:
                    wall[name].append(1e3 * (time.perf_counter() - t0))
                    cpu[name].append(1e3 * (time.process_time() - c0))
        w, c = ({k: statistics.median(v) for k, v in t.items()} for t in (wall, cpu))
        for name in losses:
            print(f"{batch:>6} {name:<18} {w[name]:8.2f} {w[name] / w['mse']:5.2f}× {c[name]:8.2f} {c[name] / c['mse']:5.2f}×")


if __name__ == "__main__":
    main()
