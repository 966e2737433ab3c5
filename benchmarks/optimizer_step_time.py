"""Amortized training-step time of every registered optimizer against Adam's, side by side.

Run: ``python benchmarks/optimizer_step_time.py [--activation gaussian] [--batch 512] [--steps 1000]``.

Each optimizer trains its own copy of the same 5 × 256 field on the same camera image (256², batch
512) through :func:`mclnf.train.train` — the one loop, so the time includes everything a fit pays,
the create-graph gradients on refresh steps too. The first ``--skip`` steps (ESGD's 50-step warm-up
of HVPs every step) are run untimed; then ``--steps`` steps are timed in blocks of ``--block``,
the optimizers taking turns block by block so that they share the machine's load. Reported:
mean ms/step over the timed steps (the amortized cost: refresh steps included) and its ratio to Adam's.
"""

from __future__ import annotations

import argparse
import copy

import torch

from mclnf.fields import Field, FieldConfig
from mclnf.losses import mse
from mclnf.optim import OPTIMIZERS, build_optimizer, default_lr
from mclnf.runtime import keep_freed_memory
from mclnf.sampling import EpochSampler
from mclnf.signals import load_signal
from mclnf.train import train


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--activation", default="gaussian")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--skip", type=int, default=50, help="untimed steps first (ESGD's warm-up)")
    p.add_argument("--steps", type=int, default=1000, help="timed steps per optimizer")
    p.add_argument("--block", type=int, default=100)
    p.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS))
    a = p.parse_args(argv)
    keep_freed_memory()  # as the CLI runs

    signal = load_signal("camera", resize=256)
    torch.manual_seed(0)
    base = Field(FieldConfig(2, 1, activation=a.activation))
    sampler = EpochSampler(signal.coords, signal.values, a.batch, seed=0)
    runs = {}
    for name in a.optimizers:
        field = copy.deepcopy(base)
        opt = build_optimizer(name, field, default_lr(name))
        loss = lambda x, y, f=field: mse(f(x), y)  # noqa: E731
        train(opt, loss, sampler, a.skip, progress=False)
        runs[name] = {"opt": opt, "loss": loss, "seconds": 0.0}

    done = a.skip
    while done < a.skip + a.steps:
        block = min(a.block, a.skip + a.steps - done)
        for run in runs.values():
            run["seconds"] += train(run["opt"], run["loss"], sampler, done + block, start_step=done, progress=False)
        done += block

    print(f"# optimizer step time: {a.activation} 5x256 field, camera 256², batch {a.batch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; steps {a.skip + 1}-{a.skip + a.steps} timed (first {a.skip} untimed), "
          f"blocks of {a.block} interleaved")  # fmt: skip
    adam = runs["adam"]["seconds"] if "adam" in runs else None
    print(f"{'optimizer':>15} {'ms/step':>8} {'vs adam':>8}")
    for name, run in runs.items():
        ms = 1000 * run["seconds"] / a.steps
        ratio = f"{run['seconds'] / adam:.2f}x" if adam else "-"
        print(f"{name:>15} {ms:8.2f} {ratio:>8}")


if __name__ == "__main__":
    main()
