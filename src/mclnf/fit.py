"""Fit one field to one signal and write every output of a run (``mclnf fit``)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from functools import partial
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mclnf.checkpoint import atomic_path, load_checkpoint, save_checkpoint, save_field, write_text
from mclnf.errors import DivergedError, MclnfError
from mclnf.eval.plots import plot_curve
from mclnf.fields import Field, FieldConfig
from mclnf.losses import LOSSES
from mclnf.optim import build_optimizer, default_lr
from mclnf.optim.auto import choose_optimizer
from mclnf.signals import Layout, Signal, load_signal, predict_in_chunks, signal_kind
from mclnf.signals.base import Predict
from mclnf.train import EpochSampler, log_spaced_steps, train

SIGNAL_OPTIONS = {  # the loader options that apply to each kind
    "image": ("resize", "crop", "gray", "pad"),
    "audio": ("start", "duration"),
    "video": ("frames", "start_frame", "resize"),
    "occupancy": ("points", "eval_points"),
    "radiance": ("resize", "holdout", "samples", "importance", "scene_bound", "direction"),
}
DEFAULTS = {"activation": "sine", "width": 256, "depth": 5, "batch_size": 512}  # of options left unset, unless the kind's say otherwise
KIND_DEFAULTS = {  # per-kind defaults of options left unset
    "image": {"resize": 256},  # the papers' 256 × 256
    "audio": {"first_omega0": 3000.0},  # SIREN's audio setting: time in [-1, 1] spans the whole clip
    # NeRF's ReLU + positional encoding (on lego 25.8 dB held-out in 6 minutes; gaussian σ 0.1, the preconditioner paper's NeRF, 22.1), sized for 2 cores
    "radiance": {"activation": "relu-pe", "sigma": 0.1, "width": 128, "depth": 4, "batch_size": 1024},
}
KIND_LR = {("radiance", "adam"): 1e-3}  # NeRF's 5e-4 order; 1e-4 (the image fields') was 4.5 dB behind on lego after 400 steps
RESUMABLE = ("steps", "resume", "overwrite", "progress", "tensorboard", "out")  # may change on --resume
ACTIVATION_OPTIONS = {  # the field options that apply to each activation
    "sine": ("omega0", "first_omega0"), "gaussian": ("sigma",), "wavelet": ("omega0", "s0"), "relu": (), "relu-pe": ("pe_frequencies",),
}  # fmt: skip
RUN_FILES = ("checkpoint.pt", "field.safetensors", "metrics.json", "comparison.md", "cl_bench.json")  # a folder holding one of these holds a run


@dataclass
class FitConfig:
    signal: str
    out: Path | None = None
    activation: str | None = None  # None: the kind's default (DEFAULTS, KIND_DEFAULTS)
    optimizer: str = "adam"
    lr: float | None = None
    steps: int = 2000
    batch_size: int | None = None
    width: int | None = None
    depth: int | None = None
    seed: int = 0
    omega0: float | None = None
    first_omega0: float | None = None
    sigma: float | None = None
    s0: float | None = None
    pe_frequencies: int | None = None
    resize: int | None = None
    crop: tuple[int, int] | None = None
    gray: bool | None = None
    pad: int | None = None
    start: float | None = None
    duration: float | None = None
    frames: int | None = None
    start_frame: int | None = None
    points: int | None = None
    eval_points: int | None = None
    resolution: int | None = None
    holdout: int | None = None
    samples: int | None = None
    importance: int | None = None
    scene_bound: float | None = None
    direction: str | None = None
    device: str = "cpu"
    compile: bool = False
    tensorboard: bool = False
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def resolved(self) -> FitConfig:
        """The config with per-kind defaults filled in and every option checked."""
        kind = signal_kind(self.signal)
        for name, value in DEFAULTS.items():
            if getattr(self, name) is None:
                self = dataclasses.replace(self, **{name: KIND_DEFAULTS.get(kind, {}).get(name, value)})
        for name in sorted({o for opts in ACTIVATION_OPTIONS.values() for o in opts} - set(ACTIVATION_OPTIONS.get(self.activation, ()))):
            if getattr(self, name) is not None:
                raise MclnfError(f"--{name.replace('_', '-')}: does not apply to --activation {self.activation}")
        for name, value in KIND_DEFAULTS.get(kind, {}).items():
            if getattr(self, name) is None and name not in ACTIVATION_SPECIFIC - set(ACTIVATION_OPTIONS[self.activation]):
                self = dataclasses.replace(self, **{name: value})
        for name in {o for opts in SIGNAL_OPTIONS.values() for o in opts} - set(SIGNAL_OPTIONS[kind]):
            if getattr(self, name) not in (None, False):
                raise MclnfError(f"--{name.replace('_', '-')}: does not apply to {kind} signals ({self.signal})")
        if self.resolution is not None and kind != "occupancy":
            raise MclnfError(f"--resolution: does not apply to {kind} signals ({self.signal})")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise MclnfError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        if self.resolution is not None and self.resolution < 2:
            raise MclnfError(f"--resolution {self.resolution}: must be at least 2")
        if self.optimizer == "auto":
            name, lr, _ = choose_optimizer(kind, self.activation)
            self = dataclasses.replace(self, optimizer=name, lr=lr if self.lr is None else self.lr)
        if self.lr is None:  # explicit, so that --resume --lr <the default> is the same run
            self = dataclasses.replace(self, lr=KIND_LR.get((kind, self.optimizer), default_lr(self.optimizer)))
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise MclnfError(f"--device {self.device}: not a device name (cpu, cuda, cuda:N)") from None
        if device.type != "cpu" and not (device.type == "cuda" and (device.index or 0) < torch.cuda.device_count()):
            raise MclnfError(f"--device {self.device}: not available on this machine (use cpu)")
        return self

    def field_config(self, signal: Signal) -> FieldConfig:
        return field_config(self, signal.layout)

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


ACTIVATION_SPECIFIC = {o for opts in ACTIVATION_OPTIONS.values() for o in opts}  # options of some activations only


FIELD_OPTIONS = ("width", "depth", "activation", "omega0", "first_omega0", "sigma", "s0", "pe_frequencies")


def field_config(options, layout: Layout) -> FieldConfig:
    """The field a run's ``options`` (any object with the attributes of FIELD_OPTIONS) describe for signals of ``layout``."""
    return FieldConfig(in_dim=layout.in_dim, out_dim=layout.out_dim, **{k: getattr(options, k) for k in FIELD_OPTIONS})


def load_fit_signal(cfg: FitConfig) -> Signal:
    options = {name: getattr(cfg, name) for name in SIGNAL_OPTIONS[signal_kind(cfg.signal)]}
    if "points" in options:
        options["seed"] = cfg.seed
    signal = load_signal(cfg.signal, **options)
    if cfg.resolution is not None:
        signal.layout = dataclasses.replace(signal.layout, resolution=cfg.resolution)
    return signal


def evaluate(field: Field, signal: Signal) -> dict[str, float]:
    device = next(field.parameters()).device
    pred = signal.layout.predict(lambda x: field(x.to(device)).cpu(), signal.eval_coords)
    return signal.layout.metrics(pred, signal.eval_values)


def write_reconstruction(predict: Predict, layout: Layout, path: Path) -> Path:
    """The signal as ``predict`` (its samples → values: a field observed through the layout, a learner's
    prediction) reconstructs it, written atomically to ``path``."""
    native = layout.reconstruct(predict)
    with atomic_path(path) as tmp:
        layout.save(native, tmp)
    return path


def prepare_out(out: Path, resume: bool, overwrite: bool, resume_file: str = "checkpoint.pt") -> Path:
    """Check that ``out`` can take a run: resumable (it holds ``resume_file``) or empty; ``overwrite``
    empties it, but only if it holds a run. Nothing is created here."""
    if out.exists() and not out.is_dir():
        raise MclnfError(f"--out {out}: exists and is not a folder")
    if resume:
        if not (out / resume_file).is_file():
            raise MclnfError(f"--resume: {out} holds no {resume_file} to resume from")
    elif out.exists() and any(out.iterdir()):
        if not overwrite:
            raise MclnfError(f"--out {out}: folder is not empty; pass --resume to continue its run or --overwrite to replace it")
        if not any((out / name).exists() for name in RUN_FILES):  # never delete a folder that is not a run
            raise MclnfError(f"--out {out}: folder holds no mclnf run ({', '.join(RUN_FILES)}); --overwrite only replaces runs")
        shutil.rmtree(out)
    return out


def make_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MclnfError(f"--out {out}: cannot create the folder ({e.strerror or type(e).__name__})") from None


def fit(cfg: FitConfig) -> dict:
    """Fit a field as ``cfg`` says; returns the run record also written to ``metrics.json``."""
    auto = cfg.optimizer == "auto"
    cfg = cfg.resolved()
    signal = load_fit_signal(cfg)  # every input error is raised before the output folder is touched
    if auto:
        print(f"--optimizer auto: {cfg.optimizer} (lr {cfg.lr:g}): {choose_optimizer(signal.kind, cfg.activation)[2]}")
    field_cfg = cfg.field_config(signal)
    torch.manual_seed(cfg.seed)
    field = Field(field_cfg).to(cfg.device)
    optimizer = build_optimizer(cfg.optimizer, field, cfg.lr, seed=cfg.seed)
    out = prepare_out(Path(cfg.out) if cfg.out else Path("runs") / f"fit-{Path(cfg.signal).stem}-{cfg.activation}", cfg.resume, cfg.overwrite)
    cfg = dataclasses.replace(cfg, out=out)

    start, elapsed, curve = 0, 0.0, []
    if cfg.resume:
        ck = load_checkpoint(out / "checkpoint.pt")
        changed = [k for k, v in ck["config"].items() if k not in RESUMABLE and cfg.to_dict().get(k) != v]
        if changed:
            k = changed[0]
            raise MclnfError(f"--resume: {out} was run with --{k.replace('_', '-')} {ck['config'][k]}, not {cfg.to_dict()[k]}")
        if ck["step"] >= cfg.steps:
            raise MclnfError(f"--steps {cfg.steps}: the run in {out} already reached step {ck['step']}")
        field.load_state_dict(ck["field"])
        optimizer.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["rng"])  # radiance: the stratified jitter of the steps to come
        start, elapsed, curve = ck["step"], ck["elapsed"], ck["curve"]
        for name in ("metrics.json", "curve.png", f"reconstruction{signal.layout.suffix}"):  # outputs of the shorter run
            (out / name).unlink(missing_ok=True)
    make_dir(out)

    layout = signal.layout
    writer = None
    if cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))

    def on_eval(step: int, loss: float, seconds: float) -> None:
        metrics = evaluate(field, signal)
        curve.append({"step": step, "loss": loss, "time_s": seconds, **metrics})
        if writer is not None:
            for k, v in {"loss": loss, **metrics}.items():
                if v is not None:
                    writer.add_scalar(f"fit/{k}", v, step)
        save_field(out / "field.safetensors", field, layout)
        save_checkpoint(out / "checkpoint.pt", {
            "config": cfg.to_dict(), "step": step, "elapsed": seconds, "curve": curve,
            "field": field.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
        })  # fmt: skip

    loss_of = LOSSES[layout.loss]
    model = torch.compile(field, dynamic=False) if cfg.compile else field  # evaluation stays eager
    device = cfg.device
    sampler = EpochSampler(signal.coords.to(device), signal.values.to(device), cfg.batch_size, cfg.seed)
    try:
        elapsed = train(
            optimizer, lambda x, y: loss_of(layout.observe(model, x), y), sampler, cfg.steps, start_step=start, elapsed=elapsed,
            eval_steps=log_spaced_steps(cfg.steps), on_eval=on_eval, last_good_step=start or None,
            progress=cfg.progress, desc=f"fit {Path(cfg.signal).name}",
        )  # fmt: skip
    finally:
        if writer is not None:
            writer.close()

    record = {
        "signal": cfg.signal, "kind": layout.kind, "activation": cfg.activation, "optimizer": cfg.optimizer,
        "lr": cfg.lr, "params": field.num_params, "steps": cfg.steps, "batch_size": cfg.batch_size, "seed": cfg.seed,
        "wall_time_s": elapsed, "final": {k: v for k, v in curve[-1].items() if k not in ("step", "time_s")},
        "curve": curve, "field": field_cfg.to_dict(), "layout": layout.to_dict(), "config": cfg.to_dict(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }  # fmt: skip
    field.cpu()
    try:
        record["reconstruction"] = write_reconstruction(partial(layout.observe, field), layout, out / f"reconstruction{layout.suffix}").name
    except MclnfError as e:  # e.g. an occupancy field with no surface yet: the run itself is fine
        record["reconstruction"] = None
        print(f"warning: no reconstruction written: {e}", file=sys.stderr)
    record["outputs"] = layout.extra_outputs(field, signal, out)
    plot_curve(curve, layout.primary_metric, out / "curve.png", title=f"{Path(cfg.signal).name} · {cfg.activation} · {cfg.optimizer} {cfg.lr:g}")
    write_text(out / "metrics.json", json.dumps(record, indent=1))
    return record


__all__ = ["DivergedError", "FitConfig", "fit"]
