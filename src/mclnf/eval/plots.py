"""Figures drawn from run records (never from live objects)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import ScalarFormatter  # noqa: E402

from mclnf.io import atomic_path  # noqa: E402

LABELS = {"loss": "training loss", "psnr": "PSNR (dB)", "ssim": "SSIM", "pesq": "PESQ (wide-band MOS)", "iou": "IoU", "accuracy": "accuracy"}


def label(metric: str) -> str:
    """A metric's axis label: ``PSNR (dB)``, ``SSIM``, ``IoU``, …; ``psnr_at_step_16``: ``PSNR (dB) at step 16``."""
    base, _, where = metric.partition("_at_")
    return LABELS.get(base, base.replace("_", " ")) + (f" at {where.replace('_', ' ')}" if where else "")


def plot_curve(curve: list[dict], path: Path, title: str = "", log_steps: bool = True, x_label: str = "step", x_seconds: str = "training time (s)") -> None:
    """Every quantity the curve records (the training loss and each metric), one column each: against training
    steps (top, ``x_label``; log scale when the evaluations are log-spaced) and against training seconds (bottom, ``x_seconds``)."""
    names = [k for k in curve[0] if k not in ("step", "time_s") and any(isinstance(c.get(k), (int, float)) for c in curve)]
    fig, axes = plt.subplots(2, len(names), figsize=(max(4.6, 3.4 * len(names)), 5.6), squeeze=False, constrained_layout=True)
    for j, name in enumerate(names):
        points = [(c["step"], c["time_s"], c[name]) for c in curve if isinstance(c.get(name), (int, float))]
        steps, seconds, values = zip(*points)
        for ax, x, xlabel in ((axes[0][j], steps, x_label), (axes[1][j], seconds, x_seconds)):
            ax.plot(x, values, "o-", ms=3)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(label(name))
            ax.grid(alpha=0.3)
            if name == "loss" and min(values) > 0 and max(values) > 10 * min(values):
                ax.set_yscale("log")
        if log_steps:
            axes[0][j].set_xscale("log", base=2)
            axes[0][j].xaxis.set_major_formatter(ScalarFormatter())  # 1, 4, 16, … rather than 2⁰, 2², 2⁴, …
        axes[0][j].set_title(f"{label(name)}: {values[-1]:.4g} at {x_label} {steps[-1]}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def plot_matrix(R: list[list[float]], metric: str, path: Path, title: str = "") -> None:
    """The continual matrix R[i][j] (quality on task j after learning task i) as an annotated heat map."""
    T = len(R)
    annotate = T <= 20  # longer streams: the colours alone
    fig, ax = plt.subplots(figsize=(min(1.2 + 0.75 * T, 16), min(1.0 + 0.65 * T, 14)), constrained_layout=True)
    im = ax.imshow(R, cmap="viridis")
    for i in range(T if annotate else 0):
        for j in range(T):
            ax.text(j, i, f"{R[i][j]:.3g}", ha="center", va="center", fontsize=8 if T <= 10 else 5, color="w" if R[i][j] < (max(map(max, R)) + min(map(min, R))) / 2 else "k")
    ticks = range(0, T, max(1, T // 20))
    ax.set_xticks(ticks, [str(j + 1) for j in ticks])
    ax.set_yticks(ticks, [str(i + 1) for i in ticks])
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after learning task i")
    fig.colorbar(im, ax=ax, label="accuracy (%)" if metric == "accuracy" else label(metric))
    ax.set_title(title, fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def plot_comparison(records: list[dict], path: Path, title: str = "") -> None:
    """Learners side by side: whole-signal quality after each task, and final quality per task."""
    metric = records[0]["metric"]
    name = label(metric)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    for r in records:
        T = len(r["R"])
        a.plot(range(1, T + 1), r["whole_after_task"], "o-", label=r["learner"])
        b.plot(range(1, T + 1), r["R"][-1], "o-", label=r["learner"])
    a.set_xlabel("after learning task")
    a.set_ylabel(f"whole signal {name}")
    b.set_xlabel("task")
    b.set_ylabel(f"{name} after the last task")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    b.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def plot_meta_curve(curve: list[dict], path: Path, title: str = "") -> None:
    """Meta-training: the loss after adaptation and the meta-gradient norm against outer steps."""
    steps = [c["step"] for c in curve]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    a.plot(steps, [c["loss"] for c in curve])
    a.set_yscale("log")
    a.set_ylabel("loss after the inner loop")
    b.plot(steps, [c["grad_norm"] for c in curve])
    b.set_yscale("log")
    b.set_ylabel("meta-gradient norm (before clipping)")
    for ax in (a, b):
        ax.set_xlabel("outer step")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def plot_meta_test(records: list[dict], metric: str, path: Path, title: str = "") -> None:
    """Meta-test: ``metric`` (mean over signals) against test-time steps per task, one line per method."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
    for r in records:
        steps = sorted(r["curve"])
        ax.plot(steps, [r["curve"][s][metric] for s in steps], "o-" if r["kind"] == "meta" else "s--", ms=3, label=r["name"])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("test-time optimization steps per task")
    ax.set_ylabel(label(metric))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title, fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def psnr(pred, target) -> float:
    """PSNR (dB, data range 1) of ``pred`` clipped to [0, 1] against ``target``, as the image metrics compute it."""
    mse = float(((pred.clamp(0, 1) - target) ** 2).mean())
    return math.inf if mse == 0 else -10 * math.log10(mse)


def plot_reconstruction_grid(records: list[dict], signals: list, layout, step: int, path: Path) -> None:
    """Images: the ground truth and every method's reconstruction after ``step`` steps per task (rows), per signal
    (columns), each reconstruction titled with its PSNR against the truth."""
    rows, cols = len(records) + 1, len(signals)
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols + 1.3, 1.65 * rows + 0.3), squeeze=False, constrained_layout=True)
    gray = layout.channels == 1
    for j, s in enumerate(signals):
        truth = layout.to_array(s.values)
        images = [truth] + [r["recon"][(step, j)] for r in records]
        for i, (img, name) in enumerate(zip(images, ["ground truth"] + [r["name"] for r in records])):
            ax = axes[i][j]
            ax.imshow(img.clamp(0, 1).squeeze(-1).numpy() if gray else img.clamp(0, 1).numpy(), cmap="gray" if gray else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i:
                ax.set_title(f"{psnr(img, truth):.1f} dB", fontsize=7, pad=2)
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.suptitle(f"after {step} step{'s' if step > 1 else ''} per task (PSNR of each reconstruction)", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def plot_times(labels: list[str], seconds: list[float], errors: list[float], path: Path, title: str = "") -> None:
    """Training time per method as bars with their spread over seeds (EMCL's Fig. 2)."""
    fig, ax = plt.subplots(figsize=(1.5 + 0.8 * len(labels), 3.4), constrained_layout=True)
    ax.bar(range(len(labels)), seconds, yerr=errors, capsize=3, color="tab:blue")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylabel("training time (s)")
    ax.set_title(title, fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
