"""EMCL's Table III (ACC/BWT of every method), Fig. 2 (training time) and Table IV (ablations) on the
two MNIST benchmarks, through ``mclnf cl-bench``; figures are printed and left in ``--out``.

Deviations (printed with every table): only the MNIST test set is available offline, so each task's
training samples come from its first 8,000 digits and every task is tested on the last 2,000;
``many-permutations`` runs ``--many-tasks`` (default 20) of its 100 tasks unless told otherwise, and
``--many-seeds`` seeds. All methods of one table run in one process, one after another, so their
times are measured side by side.

    python benchmarks/emcl_tables.py [--out runs/bench-emcl] [--seeds 3] [--many-tasks 100]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mclnf.cli import main as cli

ABLATIONS = [("emcl", []), ("emcl-no-pgd", ["--emcl-no-pgd"]), ("emcl-no-reg", ["--emcl-no-reg"]), ("emcl-si", ["--emcl-importance", "si"])]


def run(*args) -> None:
    code = cli([str(a) for a in args])
    if code not in (0, 1):  # 1: a diverged run (reported by the CLI)
        raise SystemExit(f"mclnf {' '.join(map(str, args))}: exit {code}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("runs/bench-emcl"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--many-tasks", type=int, default=20)
    p.add_argument("--many-seeds", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(2)
    print(f"# EMCL Table III / Fig. 2 / Table IV — torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    perm = a.out / "mnist-permutations"
    run("cl-bench", "mnist-permutations", "--method", "all", "--seeds", a.seeds, "--out", perm, *(["--resume"] if (perm / "cl_bench.json").is_file() else []), "--quiet")
    for name, flags in ABLATIONS:
        out = a.out / f"ablation-{name}"
        run("cl-bench", "mnist-permutations", "--method", "emcl", "--seeds", a.seeds, "--out", out, *flags, *(["--resume"] if (out / "cl_bench.json").is_file() else []), "--quiet")
    many = a.out / "many-permutations"
    run("cl-bench", "many-permutations", "--method", "all", "--seeds", a.many_seeds, "--tasks", a.many_tasks, "--out", many, *(["--resume"] if (many / "cl_bench.json").is_file() else []), "--quiet")
    print("\n# Table IV (ablations, mnist-permutations)\n")
    for name, _ in ABLATIONS:
        table = a.out / f"ablation-{name}" / "table.md"
        rows = [line for line in table.read_text().splitlines() if line.startswith("| emcl")] if table.is_file() else []
        print(f"{name}: " + (rows[0] if rows else "diverged (no table)"))


if __name__ == "__main__":
    main()
