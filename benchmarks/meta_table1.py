"""MCL-NF's Table 1 (and Table 6's compute columns) at CPU scale: meta-train every method, meta-test them beside the
non-meta baselines on the same held-out signals, and print one table.

Presets (``--preset``; each prints its deviations from the paper's protocol, Sec. 5 and Appendix A, with the tables):

* ``celeba32`` — 32 CelebA faces (22 meta-train, 10 meta-test), 178² centre crops resized to 32², four 32 × 8 strips,
  300 outer steps, test-time steps 1 … 128 on 5 faces; every method, mcl-nf also with the first-order and EMCL
  meta-gradients (the earlier CPU-scale run).
* ``faces_utk180`` — ``faces_utk/`` at the paper's 180 × 180 (178² crop padded by 1, four 180 × 45 strips; 1,400
  meta-train / 600 meta-test faces), ``--task-batch 1024``, 600 outer steps, test-time steps 1, 4, 16, 64 on 20
  faces; mcl-nf, mol (both step accountings), maml-cl, oml, second-order, beside ol, cl, er, ewc and mer.
* ``asl112`` — ``video/asl_gestures/`` (Table 5's VoxCeleb2 rows on the data pack's videos): 4-frame clips, every frame's
  centred 480 × 480 window resized to the paper's 112 × 112, one frame a task, ``--task-batch 1024``, 300 outer steps,
  test-time steps 1, 4, 16, 64 on 5 clips, one from each of 5 held-out videos (PSNR and SSIM); mcl-nf, mol, maml-cl, oml
  beside ol, cl, er; the offline references at equal updates per parameter only (``--offline-budget full``).
* ``librispeech1`` — ``librispeech_clips/`` cut into 1 s clips (the paper's LibriSpeech1 rows), four 0.25 s tasks,
  ``--task-batch 1024``, 300 outer steps, test-time steps 1, 4, 16, 64 on 10 clips (PSNR and PESQ); mcl-nf, mol (both
  accountings), maml-cl, oml beside ol, cl and er.
* ``lego_blocks`` — ``nerf/lego_synthetic_400/`` (Table 1's NeRF rows, an object instead of MatrixCity's blocks): the 100
  training views at 100², 12 blocks of 8 adjacent views (8 meta-train / 4 meta-test), 4 tasks of 2 views, EMCL's
  meta-gradient, 500 outer steps, test-time steps 1 … 1024 on 2 of the 4 held-out blocks; mcl-nf, mcl-nf-fim (the
  paper's form, λ 0.1), maml-cl (from mol's θ₀), oml beside random-init ``modular`` and ``cl`` (Adam 1e-3).

``--test-optimizer adam [--test-lr 1e-3]`` scores the meta methods adapting with that optimizer instead (groups
``test-adam-*``; the baselines are the same).
``--meta-grad second-order`` meta-trains every run with that meta-gradient instead of the preset's (runs
``METHOD-second-order``; the baselines' groups are shared).
``--device cuda`` runs every meta-train and meta-test process on the GPU (for the paper's 4096 test-time steps at
180²: ``--preset faces_utk180 --steps 1 16 256 4096 --device cuda``).

Every meta-train run and every meta-test group is its own ``mclnf`` process; ``--jobs N`` runs N of them side by side,
each on one thread (so N cores, N times the throughput). A meta-test group is one run, or one baseline (``--baselines-only``
beside the first run, which defines the dataset, its tasks and the field). maml-cl is not meta-trained: it meta-trains exactly as mol, so it is
scored from mol's θ₀ (``mclnf meta-test MOL_RUN:maml-cl``). A run already in ``--out`` (its ``init.safetensors``) is not trained
again and a group with its ``metrics.json`` is not scored again, so an interrupted benchmark picks up where it stopped.
The merged tables come from the groups' ``metrics.json`` through :mod:`mclnf.eval.tables`, the curve plot through
:func:`mclnf.eval.plots.plot_meta_test`.

    python benchmarks/meta_table1.py [--preset faces_utk180] [--jobs 2] [--out runs/bench-meta-table1] [--outer-steps N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from mclnf.commands.meta_test import budget_note
from mclnf.eval.plots import plot_meta_test
from mclnf.eval.tables import compute_table, table1
from mclnf.learners import META_GRADIENTS, META_METHODS

DATA = Path(os.environ.get("MCLNF_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SECOND = "second-order"
ALL_RUNS = [("mcl-nf", SECOND), ("mol", SECOND), ("maml-cl", SECOND), ("oml", SECOND), ("mcl-nf-fim", SECOND), ("mcl-nf", "first-order"), ("mcl-nf", "emcl")]
SINE = "sine 5 × 256 (mcl-nf modules 5 × 128)"
EMCL_RUNS = [("mcl-nf", "emcl"), ("mcl-nf-fim", "emcl"), ("maml-cl", "emcl"), ("oml", "emcl")]  # Table 1's NeRF rows (maml-cl: from mol's θ₀)
PRESETS = {
    "celeba32": dict(data=str(DATA / "celeba_align" / "*.jpg"), load=["--crop", "178", "178", "--resize", "32"], train=["--outer-lr", "1e-4"], outer_steps=300,
                     steps=[1, 2, 4, 8, 16, 32, 64, 128], signals=5, runs=ALL_RUNS, baselines=["ol", "cl", "er", "ewc", "mer"],
                     deviations="32 faces (22 meta-train / 10 meta-test), 178² crops resized to 32², 4 strips of 32 × 8"),
    "faces_utk180": dict(data=str(DATA / "faces_utk"), load=["--crop", "178", "178", "--resize", "0", "--pad", "1"], train=["--task-batch", "1024"], outer_steps=600,
                         steps=[1, 4, 16, 64], signals=20, runs=ALL_RUNS[:4], baselines=["ol", "cl", "er", "ewc", "mer"],
                         deviations="2,000 faces_utk faces (1,400 meta-train / 600 meta-test) at the paper's 180 × 180, 4 strips of 180 × 45, 1,024 pixels per task per outer step"),
    "librispeech1": dict(data=str(DATA / "librispeech_clips"), load=["--clip", "1"], train=["--task-batch", "1024"], outer_steps=300,
                         steps=[1, 4, 16, 64], signals=10, runs=ALL_RUNS[:4], baselines=["ol", "cl", "er"],
                         deviations="120 LibriSpeech utterances (84 files meta-train / 36 meta-test) cut into 1 s clips, 4 tasks of 0.25 s, 1,024 samples per task per outer step"),
    "asl112": dict(data=str(DATA / "video" / "asl_gestures"), load=["--crop", "480", "480", "--resize", "112", "--clip", "4"], train=["--task-batch", "1024"],
                   test=["--offline-budget", "full"], outer_steps=300, steps=[1, 4, 16, 64], signals=5, runs=ALL_RUNS[:4], baselines=["ol", "cl", "er"],
                   deviations="20 asl_gestures videos (14 files meta-train / 6 meta-test; VoxCeleb2 in the paper) cut into 4-frame clips (228 / 95), 480² centre "
                              "crops resized to the paper's 112 × 112, 4 tasks of one frame, 1,024 pixels per task per outer step"),
    "lego_blocks": dict(data=str(DATA / "nerf" / "lego_synthetic_400"), load=["--resize", "100", "--samples", "32", "--block-views", "8"],
                        train=["--fim-form", "paper", "--fim-lambda", "0.1"], test=["--batch-size", "256", "--baseline-lr", "1e-3"], outer_steps=500,
                        steps=[1, 4, 16, 64, 256, 1024], paper_steps=1024, signals=2, runs=EMCL_RUNS, baselines=["modular", "cl"], baseline_lr="1e-3",
                        field="relu-pe 4 × 128 (mcl-nf modules 4 × 64), 32 samples a ray; mcl-nf-fim: the paper's form (eq. 2), λ 0.1",
                        deviations="one object scene (NeRF-synthetic lego) instead of a city: its 100 training views resized to 100², cut into 12 blocks of "
                                   "8 views adjacent in azimuth (8 meta-train / 4 meta-test, 2 scored), 4 tasks of 2 views a block, 256 rays per task per outer step; "
                                   "256 rays per test-time step", meta_grad_note="EMCL's meta-gradient (second-order: about 1.5× the time per outer step for mcl-nf, 2× for mcl-nf-fim)"),
}  # fmt: skip


def mclnf(args: list[str], log: Path, threads: int | None) -> float:
    """Run ``python -m mclnf ARGS`` (on ``threads`` threads), its output to ``log``; the seconds it took. Stops the benchmark when it fails."""
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}))
    t0 = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run([sys.executable, "-m", "mclnf", *args], stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        sys.exit(f"mclnf {' '.join(args[:2])} failed (exit {code}); see {log}")
    return time.perf_counter() - t0


def in_parallel(jobs: list, n: int) -> list:
    """Call every job (a no-argument function), ``n`` at a time in the order listed; their results in that order."""
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(lambda job: job(), jobs))


def merged_records(meta_groups: list[Path], baseline_groups: list[Path]) -> list[dict]:
    """The meta groups' method records and the baseline groups' baselines (from ``metrics.json``), in the groups' order;
    curves keyed by step again. A baseline group scored before ``--baselines-only`` also holds the run it was scored
    beside, possibly under another meta-gradient or test-time optimizer than this table's: that record is left out."""
    methods = lambda g: json.loads((g / "metrics.json").read_text())["methods"]  # noqa: E731
    records = [r for g in meta_groups for r in methods(g)] + [r for g in baseline_groups for r in methods(g) if r["kind"] != "meta"]
    return [dict(r, curve={int(s): v for s, v in r["curve"].items()}) for r in records]


def per_step_table(records: list[dict], metric: str) -> str:
    """``metric`` (mean over signals) at every scored step count, one row per method."""
    steps = sorted(records[0]["curve"])
    rows = [f"| {r['name']} | " + " | ".join("–" if r["curve"][s][metric] is None else f"{r['curve'][s][metric]:.4g}" for s in steps) + " |" for r in records]
    return f"| method | {' | '.join(f'step {s}' for s in steps)} |\n|{'---|' * (len(steps) + 1)}\n" + "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="faces_utk180")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-meta-table1"))
    ap.add_argument("--jobs", type=int, default=2, help="mclnf processes side by side, one thread each (1: one process on every thread)")
    ap.add_argument("--outer-steps", type=int, default=None, help="override the preset's")
    ap.add_argument("--signals", type=int, default=None, help="meta-test signals; override the preset's")
    ap.add_argument("--steps", type=int, nargs="+", default=None, help="test-time steps per task; override the preset's")
    ap.add_argument("--methods", nargs="+", default=None, help="score only these of the preset's meta methods (maml-cl still meta-trains as mol)")
    ap.add_argument("--baselines", nargs="*", default=None, help="override the preset's baselines")
    ap.add_argument("--test-optimizer", default=None, help="the meta methods' test-time optimizer (default: the inner loop's SGD); scored in test-OPTIMIZER-* groups")
    ap.add_argument("--test-lr", default=None, help="with --test-optimizer: its learning rate (default: the optimizer's)")
    ap.add_argument("--meta-grad", choices=META_GRADIENTS, default=None, help="every run's meta-gradient instead of the preset's (runs and groups are named by it)")
    ap.add_argument("--device", default=None, help="every mclnf process's --device (cpu or cuda[:N]; default: theirs, the CPU)")
    a = ap.parse_args()
    p = PRESETS[a.preset]
    outer, signals, steps = a.outer_steps or p["outer_steps"], a.signals or p["signals"], a.steps or p["steps"]
    out, threads = a.out / a.preset, (1 if a.jobs > 1 else None)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    print(f"# MCL-NF Table 1, preset {a.preset}: torch {torch.__version__}, {a.jobs} process(es) side by side{', one thread each' if threads else ''}")
    test_opt = f"{a.test_optimizer} {a.test_lr or 'at its default rate'}" if a.test_optimizer else "the inner loop's SGD 1e-2"
    grad_note = f"every run's meta-gradient {a.meta_grad}" if a.meta_grad else p.get("meta_grad_note")
    print(f"deviations from the paper: {p['deviations']}; {p.get('field', SINE)}; {grad_note + '; ' if grad_note else ''}{outer} outer steps (the paper: 500k), meta-batch 4, "
          f"3 inner SGD steps at 1e-2; test-time steps {', '.join(map(str, steps))} per task (the paper: to {p.get('paper_steps', 4096)}) on the first {signals} meta-test signals "
          f"(meta methods: {test_opt}; baselines: Adam {p.get('baseline_lr', '1e-4')})\n")  # fmt: skip

    baselines = p["baselines"] if a.baselines is None else a.baselines
    scored = list(dict.fromkeys((m, a.meta_grad or g) for m, g in p["runs"] if a.methods is None or m in a.methods))
    trained = list(dict.fromkeys((META_METHODS[m].meta_training(), g) for m, g in scored))  # maml-cl: mol's θ₀ (mol scored only when selected)
    runs = [out / f"{m}-{g}" for m, g in trained]
    todo = [(r, m, g) for r, (m, g) in zip(runs, trained) if not (r / "init.safetensors").is_file()]
    device = ["--device", a.device] if a.device else []
    train = lambda r, m, g: lambda: mclnf(["meta-train", p["data"], *p["load"], *p["train"], *device, "--method", m, "--meta-grad", g, "--outer-steps", str(outer),  # noqa: E731
                                           "--quiet", "--overwrite", "--out", str(r)], out / "logs" / f"{r.name}.log", threads)  # fmt: skip
    in_parallel([train(*t) for t in todo], a.jobs)
    print("| method | meta-gradient | outer steps | meta-train s | episodes/s | loss after adaptation |\n|---|---|---|---|---|---|")
    for m, g in dict.fromkeys(trained + scored):
        if (m, g) not in trained:
            print(f"| {m} | {g} | {META_METHODS[m].meta_training()}'s θ₀ | – | – | – |")
            continue
        j = json.loads((out / f"{m}-{g}" / "meta_train.json").read_text())
        print(f"| {m} | {g} | {j['outer_steps']} | {j['train_s']:.0f} | {j['episodes_per_s']:.1f} | {j['final_loss']:.4g} |")
    specs = [f"{out}/{m}-{g}" if (m, g) in trained else f"{out}/{META_METHODS[m].meta_training()}-{g}:{m}" for m, g in scored]

    test = ["--steps", *map(str, steps), "--signals", str(signals), *p.get("test", []), *device, "--quiet", "--overwrite"]
    prefix, meta_opt = "", []  # the meta methods' groups and figure under another test-time optimizer: "adam-…"
    if a.test_optimizer:
        prefix, meta_opt = f"{a.test_optimizer}-", ["--test-optimizer", a.test_optimizer, *(["--test-lr", a.test_lr] if a.test_lr else [])]
    meta_groups = [(out / f"test-{prefix}{m}-{g}", [spec, p["data"], "--baselines", *meta_opt]) for spec, (m, g) in zip(specs, scored)]
    baseline_groups = [(out / f"test-{b}", [str(runs[0]), p["data"], "--baselines", b, "--baselines-only"]) for b in baselines]
    groups = meta_groups + baseline_groups
    score = lambda g, args: lambda: mclnf(["meta-test", *args, *test, "--out", str(g)], out / "logs" / f"{g.name}.log", threads)  # noqa: E731
    seconds = in_parallel([score(g, args) if not (g / "metrics.json").is_file() else (lambda: 0.0) for g, args in groups], a.jobs)
    records = merged_records([g for g, _ in meta_groups], [g for g, _ in baseline_groups])
    metrics = list(records[0]["summary"])
    print(f"\nmeta-test: {len(groups)} groups, {sum(seconds):.0f} process-seconds in this invocation (groups scored before are read back)\n")
    print(per_step_table(records, metrics[0]))
    print(table1(records, metrics) + budget_note(records, json.loads((runs[0] / "meta_train.json").read_text())["config"]["tasks"]))
    print(compute_table(records, metrics[0]))
    figure = out / f"{prefix}{metrics[0]}_vs_step.png"
    plot_meta_test(records, metrics[0], figure, title=f"{a.preset} · {signals} meta-test signals")
    print(f"figure: {figure}; each group's tables, grids and reconstructions in {out}/test-*/")


if __name__ == "__main__":
    main()
