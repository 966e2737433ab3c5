"""Figures drawn from run records (never from live objects)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mclnf.checkpoint import atomic_path  # noqa: E402


def plot_curve(curve: list[dict], metric: str, path: Path, title: str = "") -> None:
    """``metric`` against training steps (log scale) and against training seconds, side by side."""
    steps = [c["step"] for c in curve]
    seconds = [c["time_s"] for c in curve]
    values = [c.get(metric) for c in curve]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    a.plot(steps, values, "o-")
    a.set_xscale("log", base=2)
    a.set_xlabel("step")
    b.plot(seconds, values, "o-")
    b.set_xlabel("training time (s)")
    for ax in (a, b):
        ax.set_ylabel(metric.upper() + (" (dB)" if metric == "psnr" else ""))
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
