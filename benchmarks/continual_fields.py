"""Every continual learner on the MCL-NF paper's three task streams, several seeds (its Table 1 baselines).

Run: ``python benchmarks/continual_fields.py [--steps 500] [--seeds 3] [--out runs/bench-continual]``.

Streams (4 tasks each, equal steps per task for every learner; ``ol`` gets the same total, 4 × steps):

* (a) CelebA: faces 000001, 000002, … (one per seed), 178×178 centre crop + 1-pixel zero padding =
  180×180, four 180×45 strips — the paper's setup;
* (b) bikes.mp4: 16 frames, scaled to 128 px on the longer side (128×54; the paper's videos are larger), 4 chunks of 4 frames;
* (c) LibriSpeech: the first 3 s of 198-209-0000, 3436-172162-0000, 5703-47212-0000 (one per seed), 4 segments of 0.75 s.

Field: sine 5 × 256 (modular: 4 modules of width 128, about the same parameters), Adam 1e-4, batch 512.
For each stream it prints mean ± std over seeds of the final whole-signal PSNR and BWT, the per-step
time of each learner against ``cl`` measured in the same runs (``er``/``ewc`` overhead), and whether
the paper's pattern holds: ``cl`` forgets (final PSNR far below ``ol``, strongly negative BWT), ``ewc``
forgets less than ``cl``, ``er`` close to ``ol``, ``modular`` BWT exactly 0 and final PSNR ≥ ``ol``'s.
Deviations from the paper: fewer steps per task (default 500), smaller video, 3-s audio clips.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from mclnf.commands.continual import continual
from mclnf.config import ContinualConfig
from mclnf.learners import CONTINUAL_LEARNERS
from mclnf.runtime import keep_freed_memory

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CLIPS = ("198-209-0000", "3436-172162-0000", "5703-47212-0000")


def streams(seeds: int) -> dict[str, list[dict]]:
    """Per stream, one ContinualConfig keyword set per seed."""
    faces = sorted((DATA / "celeba_align").glob("*.jpg"))
    return {
        "celeba 180×180, 4 strips": [dict(signal=str(faces[s]), crop=(178, 178), resize=0, pad=1, seed=s) for s in range(seeds)],
        "bikes 16 frames 128 px, 4 chunks": [dict(signal=str(DATA / "video" / "bikes.mp4"), frames=16, resize=128, seed=s) for s in range(seeds)],
        "librispeech 3 s, 4 segments": [dict(signal=str(DATA / "librispeech" / f"{CLIPS[s % 3]}.wav"), duration=3.0, seed=s) for s in range(seeds)],
    }


def mean_std(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=500, help="steps per task")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--streams", nargs="+", choices=("celeba", "bikes", "librispeech"), default=("celeba", "bikes", "librispeech"))
    p.add_argument("--out", type=Path, default=Path("runs/bench-continual"))
    a = p.parse_args(argv)
    keep_freed_memory()
    print(f"# continual fields: {a.steps} steps per task, {a.seeds} seeds, sine 5×256 (modular 4×128), Adam 1e-4, batch 512, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    for name, runs in streams(a.seeds).items():
        if name.split()[0] not in a.streams:
            continue
        records = [continual(ContinualConfig(**kw, out=a.out / name.split()[0] / f"seed{kw['seed']}", learner="all", steps=a.steps,
                                             overwrite=True, progress=False))  # fmt: skip
                   for kw in runs]
        by = {n: [r for rs in records for r in rs if r["learner"] == n] for n in CONTINUAL_LEARNERS}
        final = {n: [r["final"]["psnr"] for r in rs] for n, rs in by.items()}
        bwt = {n: [r["bwt"] for r in rs] for n, rs in by.items()}
        print(f"\n## {name}\n")
        print("| learner | final PSNR (dB) | BWT (dB) | params | ms/step | × cl step | after-task s |\n|---|---|---|---|---|---|---|")
        for n, rs in by.items():
            ratio = statistics.mean(r["step_ms"] / c["step_ms"] for r, c in zip(rs, by["cl"]))
            print(f"| {n} | {mean_std(final[n])} | {mean_std(bwt[n])} | {rs[0]['params']:,} | {statistics.mean(r['step_ms'] for r in rs):.2f} "
                  f"| {ratio:.2f}× | {statistics.mean(r['after_task_s'] for r in rs):.1f} |")  # fmt: skip
        m = {n: statistics.mean(v) for n, v in final.items()}
        b = {n: statistics.mean(v) for n, v in bwt.items()}
        checks = [
            ("cl forgets: final ≥ 3 dB below ol and BWT ≤ −3 dB", m["cl"] <= m["ol"] - 3 and b["cl"] <= -3),
            ("ewc forgets less than cl (higher BWT)", b["ewc"] > b["cl"]),
            ("er close to ol (final within 1 dB)", m["er"] >= m["ol"] - 1),
            ("modular BWT exactly 0 in every run", all(v == 0 for v in bwt["modular"])),
            ("modular final ≥ ol's", m["modular"] >= m["ol"]),
        ]
        for text, ok in checks:
            print(f"- {'holds' if ok else 'DOES NOT hold'}: {text}")


if __name__ == "__main__":
    main()
