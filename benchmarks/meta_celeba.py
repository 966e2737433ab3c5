"""MCL-NF's Table 1, Fig. 2/3 and Table 6 on the CelebA faces of ../shared/data, at CPU scale.

Meta-trains every method (second-order; mcl-nf also with the first-order and EMCL meta-gradients)
through the CLI, then meta-tests them together with the non-meta baselines on the same held-out faces.

Deviations from the paper's protocol (stated in the output): 32 faces (22 meta-train, 10 meta-test)
instead of CelebA's 200k; 178 × 178 centre crops resized to ``--size`` (32) instead of 180 × 180;
``--outer-steps`` (300) outer steps at Adam 1e-4 instead of Learned Init's 1e-5 for far more steps;
test-time optimization up to ``--max-step`` (128) steps per task instead of 4096, on ``--signals`` faces.

    python benchmarks/meta_celeba.py [--out runs/bench-meta-celeba] [--outer-steps 300]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from mclnf.cli import main as cli

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "celeba_align"
RUNS = [("mol", "second-order"), ("maml-cl", "second-order"), ("oml", "second-order"), ("mcl-nf", "second-order"),
        ("mcl-nf-fim", "second-order"), ("mcl-nf", "first-order"), ("mcl-nf", "emcl")]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-meta-celeba"))
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--outer-steps", type=int, default=300)
    ap.add_argument("--max-step", type=int, default=128)
    ap.add_argument("--signals", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(2)
    shutil.rmtree(a.out, ignore_errors=True)
    data = str(DATA / "*.jpg")
    common = ["--crop", "178", "178", "--resize", str(a.size), "--outer-steps", str(a.outer_steps), "--outer-lr", "1e-4", "--quiet"]
    print(f"# MCL-NF Table 1 on CelebA faces (CPU scale), torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"deviations: 32 faces (22 meta-train / 10 meta-test), 178² crops resized to {a.size}², 4 strips, sine 5×256 (mcl-nf modules 5×128), "
          f"{a.outer_steps} outer steps, meta-batch 4, Adam 1e-4, 3 inner SGD steps at 1e-2; test-time steps 1…{a.max_step} per task on the "
          f"first {a.signals} meta-test faces (meta methods: the inner loop's SGD 1e-2; baselines: Adam 1e-4)\n")  # fmt: skip
    runs = []
    print("| method | meta-gradient | outer steps | meta-train s | episodes/s | loss after adaptation |\n|---|---|---|---|---|---|")
    for method, grad in RUNS:
        out = a.out / f"{method}-{grad}"
        t0 = time.perf_counter()
        assert cli(["meta-train", data, "--method", method, "--meta-grad", grad, *common, "--out", str(out)]) == 0
        r = json.loads((out / "meta_train.json").read_text())
        print(f"| {method} | {grad} | {r['outer_steps']} | {time.perf_counter() - t0:.0f} | {r['episodes_per_s']:.1f} | {r['final_loss']:.4g} |", flush=True)
        runs.append(str(out))
    steps = [2**k for k in range(a.max_step.bit_length()) if 2**k <= a.max_step]
    print()
    assert cli(["meta-test", *runs, data, "--steps", *map(str, steps), "--signals", str(a.signals), "--out", str(a.out / "meta-test"), "--quiet"]) == 0
    print((a.out / "meta-test" / "table.md").read_text())
    print(f"figures: {a.out / 'meta-test'}/psnr_vs_step.png, grid_step1.png, grid_step{steps[-1]}.png")


if __name__ == "__main__":
    main()
