"""Pictures that read alone: every curve a metric with its proper label, PSNR on every reconstruction tile,
labelled rows and a depth colour bar on the scene views."""

import math

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.figure import Figure

import mclnf.eval.plots as plots
from mclnf.signals import load_signal
from mclnf.signals.radiance import plot_views


@pytest.fixture
def figures(monkeypatch):
    """The figures the plots draw, kept open."""
    kept, save = [], Figure.savefig

    def savefig(fig, *args, **kwargs):
        kept.append(fig)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    yield kept
    plt.close("all")


def curve(steps, **metrics):
    return [{"step": s, "loss": 0.1 / s**2, "time_s": 0.01 * s, **{k: v(s) for k, v in metrics.items()}} for s in steps]


def test_curve_shows_every_metric_with_its_label(tmp_path, figures):
    plots.plot_curve(curve([1, 2, 4, 8, 10], psnr=lambda s: 10 + s, ssim=lambda s: s / 10), tmp_path / "c.png")
    (fig,) = figures
    top = fig.axes[:3]
    assert [ax.get_ylabel() for ax in top] == ["training loss", "PSNR (dB)", "SSIM"]
    assert [ax.get_ylabel() for ax in fig.axes[3:]] == ["training loss", "PSNR (dB)", "SSIM"]
    assert [ax.get_xscale() for ax in top] == ["log"] * 3 and fig.axes[3].get_xlabel() == "training time (s)"
    assert top[0].get_yscale() == "log"  # the loss spans a decade
    assert "20 at step 10" in top[1].get_title()


def test_curve_of_occupancy_and_of_evenly_spaced_evaluations(tmp_path, figures):
    c = curve([5, 10, 15], iou=lambda s: s / 20, accuracy=lambda s: s / 16)
    c[0]["iou"] = None  # undefined at one evaluation: left out, not plotted as zero
    plots.plot_curve(c, tmp_path / "c.png", log_steps=False)
    (fig,) = figures
    assert [ax.get_ylabel() for ax in fig.axes[:3]] == ["training loss", "IoU", "accuracy"]
    assert fig.axes[0].get_xscale() == "linear" and fig.axes[0].get_yscale() == "linear"  # the loss spans less than a decade
    assert list(fig.axes[1].lines[0].get_xdata()) == [10, 15]


def test_labels():
    assert [plots.label(m) for m in ("psnr", "ssim", "iou", "pesq", "loss", "grad_norm")] == ["PSNR (dB)", "SSIM", "IoU", "PESQ (wide-band MOS)", "training loss", "grad norm"]
    assert plots.label("psnr_at_step_16") == "PSNR (dB) at step 16"


def test_curve_against_outer_steps_names_its_axes(tmp_path, figures):
    """meta_outer_curve.py's figure: x labelled as given, the metric at a step count labelled as that metric."""
    plots.plot_curve(curve([50, 100, 200], psnr_at_step_1=lambda s: s / 10), tmp_path / "c.png", x_label="outer step", x_seconds="meta-train time (s)")
    (fig,) = figures
    assert fig.axes[1].get_ylabel() == "PSNR (dB) at step 1" and fig.axes[1].get_xlabel() == "outer step"
    assert fig.axes[3].get_xlabel() == "meta-train time (s)" and "20 at outer step 200" in fig.axes[1].get_title()


def test_reconstruction_grid_titles_every_tile_with_its_psnr(tmp_path, figures):
    signals = [load_signal("camera", resize=16), load_signal("astronaut", resize=16, gray=True)]
    layout = signals[0].layout
    torch.manual_seed(0)
    recon = {(1, j): layout.to_array(s.values) + 0.1 * torch.randn(16, 16, 1) for j, s in enumerate(signals)}
    records = [{"name": "a", "recon": recon}, {"name": "b", "recon": {k: v * 0 + 0.5 for k, v in recon.items()}}]
    plots.plot_reconstruction_grid(records, signals, layout, 1, tmp_path / "g.png")
    (fig,) = figures
    axes = fig.axes  # row by row: truth, a, b
    assert [ax.get_ylabel() for ax in axes[::2]] == ["ground truth", "a", "b"]
    expected = -10 * math.log10(float(((recon[(1, 1)].clamp(0, 1) - layout.to_array(signals[1].values)) ** 2).mean()))
    assert axes[3].get_title() == f"{expected:.1f} dB" and axes[1].get_title() == ""
    assert all(ax.get_title().endswith(" dB") for ax in axes[2:])


def test_scene_views_have_row_labels_psnr_and_a_depth_colour_bar(tmp_path, figures):
    torch.manual_seed(0)
    truth = torch.rand(10, 12, 12, 3)
    render = (truth + 0.1 * torch.randn_like(truth)).clamp(0, 1)
    plot_views(truth, render, torch.rand(10, 12, 12) * 4 + 2, (2.0, 6.0), tmp_path / "v.png")
    (fig,) = figures
    images = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(images) == 2 * 3 * 8  # two bands of ≤ 8 views, three rows each
    assert [images[8 * r].get_ylabel() for r in range(6)] == ["truth", "render", "depth"] * 2
    psnr = -10 * math.log10(float(((render[9] - truth[9]) ** 2).mean()))
    assert images[8 * 4 + 1].get_title() == f"{psnr:.2f} dB" and images[8 * 3 + 1].get_title() == "view 10"
    (bar,) = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert "depth" in bar.get_ylabel() and bar.get_ylim() == (2.0, 6.0)
    assert fig.get_size_inches()[0] >= 12  # larger than the 8 × 12-pixel strip of before
