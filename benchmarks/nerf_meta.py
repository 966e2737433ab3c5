"""Meta-continual NeRF on lego's blocks of views (MCL-NF's MatrixCity protocol at CPU scale).

Meta-trains mcl-nf (second-order and EMCL's closed-form meta-gradient), maml-cl and oml through the
CLI on the meta-train blocks (70 %), measures the allocated peak memory of one outer step of each
(``mclnf.eval.memory.allocated_peak_mib``), then meta-tests them with the random-init ``modular``
learner (and ``cl``) on the held-out blocks, each block arriving as 2 tasks of 4 views.

Deviations from the paper (printed): one object scene (lego, 100 views) instead of a city; its 87
training views resized to ``--size`` (32) px and cut into 10 blocks of 8 views adjacent in azimuth
(7 meta-train / 3 meta-test); 32 samples per ray in the scene box; a 4 × 128 relu-pe field (mcl-nf
modules 4 × 91); ``--outer-steps`` (200) outer steps with 256 rays per task and step; test-time steps
1 … ``--max-step`` (256) per task with 256 rays a step on the first ``--signals`` (1) meta-test blocks.

    python benchmarks/nerf_meta.py [--out /tmp/nerf_meta] [--outer-steps 200] [--max-step 256]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch

from mclnf.cli import main as cli
from mclnf.commands.meta_train import load
from mclnf.config import MetaTrainConfig
from mclnf.eval.memory import allocated_peak_mib
from mclnf.learners import meta_method
from mclnf.learners.emcl import Importance

DATA = Path(os.environ.get("MCLNF_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
RUNS = [("mcl-nf", "second-order"), ("mcl-nf", "emcl"), ("maml-cl", "second-order"), ("oml", "second-order")]


def outer_step_peak(out: Path) -> float:
    """Allocated peak (MiB) of one outer step (objective and its backward) of the run in ``out``."""
    cfg = MetaTrainConfig(**{**json.loads((out / "meta_train.json").read_text())["config"], "crop": None})
    ds = load(cfg)
    method = meta_method(ds.layout, cfg.field_config(ds.layout), cfg)
    theta = {k: v.requires_grad_() for k, v in method.init_params(0).items()}
    h = dict(zip(method.fast, Importance(cfg.emcl_eta, [torch.ones_like(theta[k]) for k in method.fast]).normalized()))
    values, coords = ds.values("train")[: cfg.meta_batch], ds.coords("train")[: cfg.meta_batch]
    count = cfg.meta_batch * (cfg.tasks if method.modular else 1)
    return allocated_peak_mib(lambda: method.objective(theta, values, count, h, coords, method.task_subset(0, 1))[0].backward())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/nerf_meta"))
    ap.add_argument("--scene", type=Path, default=DATA / "nerf" / "lego_100.npz")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--outer-steps", type=int, default=200)
    ap.add_argument("--max-step", type=int, default=256)
    ap.add_argument("--signals", type=int, default=1)
    a = ap.parse_args()
    shutil.rmtree(a.out, ignore_errors=True)
    scene = str(a.scene)
    common = ["--resize", str(a.size), "--samples", "32", "--block-views", "8", "--tasks", "2", "--outer-steps", str(a.outer_steps), "--quiet"]
    print(f"# meta-continual NeRF on {a.scene.name}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"deviations: one object scene instead of a city; 87 training views at {a.size}² in 10 blocks of 8 adjacent views (7 meta-train / 3 meta-test), "
          f"2 tasks of 4 views a block; 32 samples a ray; relu-pe 4×128 (mcl-nf modules 4×91); {a.outer_steps} outer steps, meta-batch 4, "
          f"256 rays a task a step, Adam 1e-4, 3 inner SGD steps at 1e-2; test-time steps 1…{a.max_step} per task, 256 rays a step, on "
          f"{a.signals} meta-test block(s) (meta methods: SGD 1e-2; modular and cl: Adam 1e-3)\n")  # fmt: skip
    runs = []
    print("| method | meta-gradient | outer steps | meta-train s | episodes/s | loss after adaptation | outer-step peak (MiB) |\n|---|---|---|---|---|---|---|")
    for method, grad in RUNS:
        out = a.out / f"{method}-{grad}"
        t0 = time.perf_counter()
        assert cli(["meta-train", scene, "--method", method, "--meta-grad", grad, *common, "--out", str(out)]) == 0
        r = json.loads((out / "meta_train.json").read_text())
        peak = outer_step_peak(out)
        print(f"| {method} | {grad} | {r['outer_steps']} | {time.perf_counter() - t0:.0f} | {r['episodes_per_s']:.1f} | {r['final_loss']:.4g} | {peak:.1f} |", flush=True)
        runs.append(str(out))
    steps = [2**k for k in range(a.max_step.bit_length()) if 2**k <= a.max_step]
    print()
    assert cli(["meta-test", *runs, scene, "--steps", *map(str, steps), "--signals", str(a.signals), "--batch-size", "256",
                "--baselines", "modular", "cl", "--baseline-lr", "1e-3", "--out", str(a.out / "meta-test"), "--quiet"]) == 0  # fmt: skip
    print((a.out / "meta-test" / "table.md").read_text())
    print((a.out / "meta-test" / "compute.md").read_text())


if __name__ == "__main__":
    main()
