"""EMCL from the paper's text (Zou & Lin, IJCNN 2022): the readings of its open passages, Table III
(ACC/BWT beside La-MAML), Fig. 2 (training time, side by side in one process), Table IV (ablations)
and the many-permutations stream, on permuted MNIST.

Each part runs its learners one after another in one process, so the times within a part are side by
side; run parts in separate processes with ``OMP_NUM_THREADS=1`` (or alone) and compare ratios only.
Deviation (printed with every table): only the MNIST test set is available offline, so each task's
training samples come from its first 8,000 digits and every task is tested on the last 2,000.

    python benchmarks/emcl_tables.py readings      # seed 0: every reading of an open passage, one at a time
    python benchmarks/emcl_tables.py table3        # emcl, emcl (ours), lamaml: 3 seeds, time ratios
    python benchmarks/emcl_tables.py ablations     # Table IV: w/o PGD, w/o inner reg., EMCL-SI; 3 seeds (EMCL's row: table3)
    python benchmarks/emcl_tables.py many          # many-permutations, all 100 tasks: emcl, ours, lamaml, er; seed 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from mclnf.commands.cl_bench import method_options, run_one
from mclnf.eval.tables import table3
from mclnf.signals.classification import load_benchmark

OURS = dict(emcl_meta_grad="lookahead", emcl_meta_rate="bounded")  # the change labelled as ours (docs/cl-bench.md)
# (what the reading is, its option values): each alone against the default
READINGS = [
    ("default: Table II, η 0.999, α = α₀r/ĥ, replay in every inner step", {}),
    ("η 0.9 (the previous default)", dict(emcl_eta=0.9)),
    ("η 0.9999", dict(emcl_eta=0.9999)),
    ("eq. 8 compounded: α^j = (r/ĥ^j) α^{j−1}", dict(emcl_meta_rate="compound")),
    ("no replay (the text lists replay only for GEM, A-GEM, MER, La-MAML)", dict(emcl_replay="none")),
    ("inner steps on b[κ] alone, replay only in Ω and the meta-loss", dict(emcl_replay="meta")),
    ("replayed rows as inner steps of their own (b = incoming ∪ replay)", dict(emcl_replay="samples")),
    ("raw h (no mean-normalization)", dict(emcl_scale="raw")),
    ("eq. 16: γ as the gradient step", dict(emcl_gradient_step="gamma")),
    ("r = 1/3: α₀rλ = 1, θ₀ lands on θ_k", dict(emcl_r=1 / 3)),
    ("γ = β = 0.15: the closed form exact", dict(emcl_gamma=0.15)),
    ("one glance (Alg. 1 has none)", dict(glances=1)),
    ("α bounded, α = α₀ min(1, r/ĥ)", dict(emcl_meta_rate="bounded")),
    ("lookahead meta-gradient ∇L(θ_k), α = α₀r/ĥ", dict(emcl_meta_grad="lookahead")),
    ("ours: lookahead meta-gradient, α bounded", OURS),
]
NOTE = "MNIST test set only: each task's training samples drawn from its first 8,000 digits, tested on the last 2,000 (the paper: 60,000 / 10,000)."


def run(bench: str, method: str, seed: int, overrides: dict, label: str) -> dict:
    r = run_one(load_benchmark(bench, None, seed), method, method_options(bench, method, seed, overrides))
    r["label"] = label
    r.pop("options")
    done = "diverged " + r["diverged"] if "diverged" in r else f"ACC {r['acc']:.2f}  BWT {r['bwt']:.2f}  mean R[j][j] {diagonal(r):.2f}  {r['train_s']:.1f} s"
    print(f"{label} seed {seed}: {done}", file=sys.stderr, flush=True)
    return r


def diagonal(r: dict) -> float:
    """Mean R[j][j]: how well each task is learned when it ends."""
    return statistics.fmean(r["R"][j][j] for j in range(len(r["R"])))


def ratios(records: list[dict], reference: str = "lamaml") -> str:
    done = [r for r in records if "diverged" not in r]
    mean = {n: statistics.fmean(r["train_s"] for r in done if r["label"] == n) for n in dict.fromkeys(r["label"] for r in done)}
    return "".join(f"time ratio {n} / {reference}: {t / mean[reference]:.2f}\n" for n, t in mean.items() if n != reference and reference in mean)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=("readings", "table3", "ablations", "many"))
    p.add_argument("--seeds", type=int, default=3)
    a = p.parse_args()
    print(f"# EMCL {a.part} — torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    records = []
    if a.part == "readings":
        for text, over in READINGS:
            r = run("mnist-permutations", "emcl", 0, over, text)
            records.append(r)
            cells = f"diverged ({r['diverged']})" if "diverged" in r else f"{r['acc']:.2f} | {r['bwt']:.2f} | {diagonal(r):.2f}"
            print(f"| {text} | {json.dumps(over) if over else '–'} | {cells} |", flush=True)
        return
    if a.part in ("table3", "ablations"):
        variants = [("emcl", "emcl", {}), ("emcl (ours)", "emcl", OURS), ("lamaml", "lamaml", {})] if a.part == "table3" else \
            [("w/o PGD", "emcl", dict(emcl_pgd=False)), ("w/o inner reg.", "emcl", dict(emcl_reg=False)), ("EMCL-SI", "emcl", dict(emcl_importance="si"))]  # fmt: skip
        for seed in range(a.seeds):
            records += [run("mnist-permutations", method, seed, over, label) for label, method, over in variants]
        print(table3("mnist-permutations", 20, records, NOTE) + ("\n" + ratios(records) if a.part == "table3" else ""))
        return
    variants = [("emcl", "emcl", {}), ("emcl (ours)", "emcl", OURS), ("lamaml", "lamaml", {}), ("er", "er", {})]
    records = [run("many-permutations", method, 0, over, label) for label, method, over in variants]
    print(table3("many-permutations", 100, records, NOTE) + "\n" + ratios(records))


if __name__ == "__main__":
    main()
