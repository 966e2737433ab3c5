"""``mclnf fit``: fit one field to one signal and write every output of a run.

Outputs in ``--out``: ``field.safetensors`` and ``checkpoint.pt`` (at log-spaced steps; ``--resume``
continues bit-exactly), ``metrics.json`` (the run record), the reconstruction in the signal's own form,
``curve.png``, the layout's extra outputs (scenes: views and a turntable) and ``run.json``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from functools import partial
from pathlib import Path

import torch

from mclnf.config import FitConfig, RunOptions, load_configured_signal, resolve
from mclnf.errors import MclnfError
from mclnf.eval.plots import plot_curve
from mclnf.fields import Field
from mclnf.io import load_checkpoint, save_checkpoint, write_text
from mclnf.losses import LOSSES
from mclnf.optim import build_optimizer
from mclnf.optim.auto import choose_optimizer
from mclnf.options import to_dict
from mclnf.runs import Run, prepare_out, save_field, write_reconstruction
from mclnf.sampling import EpochSampler
from mclnf.signals import Signal, signal_kind
from mclnf.train import log_spaced_steps, train

RESUMABLE = ("steps", "tensorboard", *(f.name for f in dataclasses.fields(RunOptions)))  # may change on --resume


def evaluate(field: Field, signal: Signal) -> dict[str, float]:
    device = next(field.parameters()).device
    pred = signal.layout.predict(lambda x: field(x.to(device)).cpu(), signal.eval_coords)
    return signal.layout.metrics(pred, signal.eval_values)


def resume_state(out: Path, cfg: FitConfig, field: Field, optimizer: torch.optim.Optimizer, suffix: str) -> tuple[int, float, list]:
    """Load the checkpoint of the run in ``out`` into ``field`` and ``optimizer``; returns (step, seconds, curve)."""
    ck = load_checkpoint(out / "checkpoint.pt", ("step", "elapsed", "curve", "field", "optimizer", "rng"))
    if ck["step"] > cfg.steps:  # equal: killed before its last outputs, which are written now
        raise MclnfError(f"--steps {cfg.steps}: the run in {out} already reached step {ck['step']}")
    field.load_state_dict(ck["field"])
    optimizer.load_state_dict(ck["optimizer"])
    torch.set_rng_state(ck["rng"])  # radiance: the stratified jitter of the steps to come
    for name in ("metrics.json", "curve.png", f"reconstruction{suffix}"):  # outputs of the shorter run
        (out / name).unlink(missing_ok=True)
    return ck["step"], ck["elapsed"], ck["curve"]


def fit(cfg: FitConfig) -> dict:
    """Fit a field as ``cfg`` says; returns the run record also written to ``metrics.json``."""
    auto = cfg.optimizer == "auto"
    kind = signal_kind(cfg.signal)
    cfg = resolve(cfg, kind)
    signal = load_configured_signal(cfg)  # every input error is raised before the output folder is touched
    if auto:
        print(f"--optimizer auto: {cfg.optimizer} (lr {cfg.lr:g}): {choose_optimizer(kind, cfg.activation)[2]}")
    layout = signal.layout
    field_cfg = cfg.field_config(layout)
    torch.manual_seed(cfg.seed)
    field = Field(field_cfg).to(cfg.device)
    optimizer = build_optimizer(cfg.optimizer, field, cfg.lr, seed=cfg.seed)
    out = prepare_out(cfg.out or Path("runs") / f"fit-{Path(cfg.signal).stem}-{cfg.activation}", cfg.resume, cfg.overwrite)
    cfg = dataclasses.replace(cfg, out=out)
    with Run(out, "fit", to_dict(cfg), cfg.resume, RESUMABLE) as run:
        return fit_in(run, cfg, signal, field, optimizer)


def fit_in(run: Run, cfg: FitConfig, signal: Signal, field: Field, optimizer: torch.optim.Optimizer) -> dict:
    """The training and the outputs of :func:`fit`, in its run folder (continued from its checkpoint, if it has one)."""
    out, layout = run.out, signal.layout
    resumed = cfg.resume and (out / "checkpoint.pt").is_file()  # a run killed before its first checkpoint starts afresh
    start, elapsed, curve = resume_state(out, cfg, field, optimizer, layout.suffix) if resumed else (0, 0.0, [])
    writer = None
    if cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run.mkdir(out / "tensorboard")))

    def on_eval(step: int, loss: float, seconds: float) -> None:
        metrics = evaluate(field, signal)
        curve.append({"step": step, "loss": loss, "time_s": seconds, **metrics})
        if writer is not None:
            for k, v in {"loss": loss, **metrics}.items():
                if v is not None:
                    writer.add_scalar(f"fit/{k}", v, step)
        save_field(out / "field.safetensors", field, layout)
        save_checkpoint(out / "checkpoint.pt", {
            "config": to_dict(cfg), "step": step, "elapsed": seconds, "curve": curve,
            "field": field.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
        })  # fmt: skip

    loss_of = LOSSES[layout.loss]
    model = torch.compile(field, dynamic=False) if cfg.compile else field  # evaluation stays eager
    sampler = EpochSampler(signal.coords.to(cfg.device), signal.values.to(cfg.device), cfg.batch_size, cfg.seed)
    try:
        elapsed = train(
            optimizer, lambda x, y: loss_of(layout.observe(model, x), y), sampler, cfg.steps, start_step=start, elapsed=elapsed,
            eval_steps=log_spaced_steps(cfg.steps), on_eval=on_eval, last_good_step=start or None,
            progress=cfg.progress, desc=f"fit {Path(cfg.signal).name}",
        )  # fmt: skip
    finally:
        if writer is not None:
            writer.close()
            for p in (out / "tensorboard").rglob("*"):
                if p.is_file():
                    run.written(p)
    return write_outputs(cfg, field, signal, curve, elapsed)


def write_outputs(cfg: FitConfig, field: Field, signal: Signal, curve: list[dict], elapsed: float) -> dict:
    """The reconstruction, the extra outputs, ``curve.png`` and ``metrics.json``; returns the run record."""
    layout, out = signal.layout, cfg.out
    record = {
        "signal": cfg.signal, "kind": layout.kind, "activation": cfg.activation, "optimizer": cfg.optimizer,
        "lr": cfg.lr, "params": field.num_params, "steps": cfg.steps, "batch_size": cfg.batch_size, "seed": cfg.seed,
        "wall_time_s": elapsed, "final": {k: v for k, v in curve[-1].items() if k not in ("step", "time_s")},
        "curve": curve, "field": field.config.to_dict(), "layout": layout.to_dict(), "config": to_dict(cfg),
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


def summary(record: dict) -> str:
    """The lines ``mclnf fit`` prints at the end."""
    final = "  ".join(f"{k} {v:.4g}" for k, v in record["final"].items() if isinstance(v, float))
    return (f"{record['signal']}: {record['kind']}, {record['params']:,} parameters, {record['steps']} steps in {record['wall_time_s']:.1f} s  →  {final}\n"
            f"outputs in {record['config']['out']}\n")  # fmt: skip
