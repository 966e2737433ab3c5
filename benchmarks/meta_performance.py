"""Meta-learning performance, measured side by side in one process:

1. the meta-batch's inner loops vmapped against a Python loop over its signals (episodes/s, target ≥ 3×);
2. peak memory of one outer step at 1, 2 and 16 inner steps for each meta-gradient (emcl: flat, ≤ 1.2×),
   each in a fresh process (the first inner step reads θ₀ itself, later ones each task's own copy: 16 / 2 is the
   growth with the inner loop's length);
3. the FIM loss's training step against the plain MSE step (5 × 256 field, batch 512, target ≤ 1.3×).

    python benchmarks/meta_performance.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from time import perf_counter

import torch

from mclnf.eval.memory import peak_mib
from mclnf.fields import Field, FieldConfig
from mclnf.learners import MetaMethod, MetaOptions, meta_method
from mclnf.losses import fim_loss, mse
from mclnf.signals.datasets import load_dataset


def seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = perf_counter()
        fn()
        best = min(best, perf_counter() - t0)
    return best


def outer_step(method: MetaMethod, values: torch.Tensor):
    theta = {k: v.requires_grad_() for k, v in method.init_params(0).items()}
    count = values.shape[0] * (method.opts.tasks if method.opts.method.startswith("mcl-nf") else 1)
    return lambda: method.objective(theta, values, count, {k: torch.ones_like(v) for k, v in theta.items()})[0].backward()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--one-memory", nargs=2, metavar=("META_GRAD", "K"), help=argparse.SUPPRESS)  # child process of section 2
    a = ap.parse_args()
    torch.set_num_threads(2)
    ds = load_dataset("lfw_subset", {})
    layout, field = ds.layout, FieldConfig(2, 1)  # 25 × 25 faces, 5 × 256 sine field
    if a.one_memory:
        step = outer_step(meta_method(layout, field, MetaOptions(method="mcl-nf", meta_grad=a.one_memory[0], inner_steps=int(a.one_memory[1]))), ds.values("train")[:4])
        print(peak_mib(step))
        return
    print(f"# meta-learning performance: lfw_subset 25×25 faces, sine 5×256, torch {torch.__version__}, {torch.get_num_threads()} threads, best of {a.repeats}\n")

    print("## 1. meta-batch vmapped vs a Python loop (second-order, 3 inner steps)\n")
    print("| method | meta-batch | vmap episodes/s | loop episodes/s | ratio |\n|---|---|---|---|---|")
    for name, batch in (("mcl-nf", 8), ("mol", 8), ("oml", 8)):
        values = ds.values("train")[:batch]
        t = {}
        for use in (True, False):
            m = meta_method(layout, field, MetaOptions(method=name, vmap=use))
            t[use] = seconds(outer_step(m, values), a.repeats)
        print(f"| {name} | {batch} | {batch / t[True]:.1f} | {batch / t[False]:.1f} | {t[False] / t[True]:.2f}× |")

    print("\n## 2. peak memory of one outer step (MiB above the resident size before it, the first step of a fresh process; meta-batch 4, mcl-nf)\n")
    print("| meta-gradient | 1 inner step | 2 | 16 | 16 / 1 | 16 / 2 |\n|---|---|---|---|---|---|")
    for grad_kind in ("second-order", "first-order", "emcl"):
        peaks = [float(subprocess.run([sys.executable, __file__, "--one-memory", grad_kind, str(k)], capture_output=True, text=True, check=True).stdout.split()[-1])
                 for k in (1, 2, 16)]  # fmt: skip
        print(f"| {grad_kind} | {peaks[0]:.1f} | {peaks[1]:.1f} | {peaks[2]:.1f} | {peaks[2] / peaks[0]:.2f}× | {peaks[2] / peaks[1]:.2f}× |")

    print("\n## 3. FIM loss step vs plain MSE step (5×256 sine field, batch 512, Adam)\n")
    torch.manual_seed(0)
    f = Field(dataclasses.replace(field, out_dim=3))
    opt = torch.optim.Adam(f.parameters(), 1e-4)
    x, y = torch.rand(512, 2) * 2 - 1, torch.rand(512, 3)

    def step(loss):
        def run():
            for _ in range(20):
                opt.zero_grad()
                loss().backward()
                opt.step()

        return run

    plain = seconds(step(lambda: mse(f(x), y)), a.repeats) / 20
    rows = [("mse", plain)]
    for fisher in ("kfac-diag", "diagonal"):
        rows.append((f"fim ({fisher})", seconds(step(lambda: fim_loss(f, x, y, 1.0, fisher=fisher)), a.repeats) / 20))
    print("| loss | ms/step | × mse |\n|---|---|---|")
    for name, t in rows:
        print(f"| {name} | {1000 * t:.2f} | {t / plain:.2f}× |")


if __name__ == "__main__":
    main()
