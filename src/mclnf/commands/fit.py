"""``mclnf fit``: fit one field to one signal and write every output of a run.

Outputs in ``--out``: ``field.safetensors`` and ``checkpoint.pt`` (at every evaluation: log-spaced steps, or
every ``--eval-every``; ``--resume`` continues bit-exactly), ``metrics.json`` (the run record), the reconstruction
in the signal's own form, ``curve.png``, the layout's extra outputs (scenes: views and a turntable), ``log.jsonl``
(and ``tensorboard/``: :mod:`mclnf.tracking`) and ``run.json``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from functools import partial
from pathlib import Path

import torch

from mclnf.config import FitConfig, RunOptions, load_configured_signal, resolve
from mclnf.errors import DivergedError, MclnfError
from mclnf.eval.plots import plot_curve
from mclnf.fields import Field
from mclnf.io import load_checkpoint, save_checkpoint, write_text
from mclnf.losses import LOSSES
from mclnf.optim import build_optimizer
from mclnf.optim.auto import SAFE, BlewUp, Guard, choose_optimizer
from mclnf.options import to_dict
from mclnf.runs import REPLAY, Run, prepare_out, read_record, replay_text, save_field, write_reconstruction
from mclnf.runtime import Precision
from mclnf.sampling import EpochSampler
from mclnf.signals import Signal, signal_kind
from mclnf.signals.occupancy_grid import OccupancyGrid
from mclnf.tracking import TENSORBOARD, open_tracker
from mclnf.train import evaluation_steps, train

# may change on --resume: the result stays (a new --device: up to the devices' rounding; the checkpoint loads onto the CPU and moves)
RESUMABLE = ("steps", "eval_every", "log_every", "tensorboard", "device", *(f.name for f in dataclasses.fields(RunOptions)))
AUTO_RESTART = "auto_restart"  # run.json: --optimizer auto's choice blew up and the run restarted with the safe one


def evaluate(field: Field, signal: Signal, grid: OccupancyGrid | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The field's prediction of the evaluation samples (skipping ``grid``'s empty cells), and its metrics."""
    device = next(field.parameters()).device
    predict = grid.skip(field) if grid is not None else field
    pred = signal.layout.predict(lambda x: predict(x.to(device)).cpu(), signal.eval_coords)
    return pred, signal.layout.metrics(pred, signal.eval_values)


def resume_state(out: Path, cfg: FitConfig, field: Field, optimizer: torch.optim.Optimizer, suffix: str, guard: Guard | None = None,
                 grid: OccupancyGrid | None = None, precision: Precision | None = None) -> tuple[int, float, list]:  # fmt: skip
    """Load the checkpoint of the run in ``out`` into ``field`` and ``optimizer`` (and ``guard``'s first loss, ``grid``'s estimate,
    ``precision``'s fp16 loss scale); returns (step, seconds, curve)."""
    ck = load_checkpoint(out / "checkpoint.pt", ("step", "elapsed", "curve", "field", "optimizer", "rng"))
    if guard is not None:
        guard.first = ck.get("auto_first_loss")
    if grid is not None:
        if "occupancy_grid" not in ck:
            raise MclnfError(f"--occupancy-grid: the run in {out} was trained without one; resume it without --occupancy-grid")
        grid.load_state_dict(ck["occupancy_grid"])
    if precision is not None and "precision" in ck:  # fp16: the loss scale continues where it stopped
        precision.load_state_dict(ck["precision"])
    if ck["step"] > cfg.steps:  # equal: killed before its last outputs, which are written now
        raise MclnfError(f"--steps {cfg.steps}: the run in {out} already reached step {ck['step']}")
    field.load_state_dict(ck["field"])
    optimizer.load_state_dict(ck["optimizer"])
    torch.set_rng_state(ck["rng"])  # radiance: the stratified jitter of the steps to come
    for name in ("metrics.json", "curve.png", f"reconstruction{suffix}"):  # outputs of the shorter run
        (out / name).unlink(missing_ok=True)
    return ck["step"], ck["elapsed"], ck["curve"]


def fit(cfg: FitConfig) -> dict:
    """Fit a field as ``cfg`` says; returns the run record also written to ``metrics.json``.

    ``--optimizer auto`` (:mod:`mclnf.optim.auto`) whose choice is not the safe one (Adam at its default learning
    rate) is watched by a :class:`~mclnf.optim.auto.Guard` over its first steps; a blow-up restarts the run from
    the initial weights with the safe choice — exactly a plain ``--optimizer adam`` run — saying so in one line.
    ``run.json`` and ``config.yaml`` then hold the safe choice (``--resume`` continues with it, ``--config``
    repeats it) and ``metrics.json``'s ``auto`` records the choice and the restart.

    Without ``--precision`` the steps run in the measured default of the signal's kind and field
    (:func:`mclnf.config.default_precision`: bf16 for sine images where bf16 is native, else fp32), and ``--resume``
    continues in the run's recorded precision."""
    auto, given_lr, given_precision = cfg.optimizer == "auto", cfg.lr, cfg.precision
    kind = signal_kind(cfg.signal)
    cfg = resolve(cfg, kind)
    signal = load_configured_signal(cfg)  # every input error is raised before the output folder is touched
    safe = resolve(dataclasses.replace(cfg, optimizer=SAFE, lr=None, precision=given_precision), kind)  # its own default precision: a plain adam run's
    guard, record = None, {}  # record: what joins metrics.json (auto's choice and restart)
    if auto:
        reason = choose_optimizer(kind, cfg.activation)[2]
        print(f"--optimizer auto: {cfg.optimizer} (lr {cfg.lr:g}): {reason}")
        if cfg.optimizer != SAFE or (given_lr is None and cfg.lr != safe.lr):  # a choice other than the safe one: guarded
            guard = Guard(cfg.optimizer)
        record = {"auto": {"optimizer": cfg.optimizer, "lr": cfg.lr, "reason": reason, "guarded": guard is not None, "restart": None}}
    field, optimizer = new_field(cfg, signal)  # a field the options cannot make is an input error too
    out = prepare_out(cfg.out or Path("runs") / f"fit-{Path(cfg.signal).stem}-{cfg.activation}", cfg.resume, cfg.overwrite)
    restart = read_record(out).get(AUTO_RESTART) if guard is not None and cfg.resume else None
    if restart:  # the run had restarted with the safe choice before it stopped
        print(f"--optimizer auto: this run restarted with {SAFE} (lr {safe.lr:g}) after {restart['optimizer']} blew up at step {restart['step']}; continuing with {SAFE}")
        cfg, guard = safe, None
        record["auto"]["restart"] = restart
        field, optimizer = new_field(cfg, signal)
    if cfg.resume and given_precision is None:  # --resume keeps the run's precision (runs from before --precision: fp32)
        recorded = read_record(out)["config"].get("precision", "fp32")
        cfg, safe = dataclasses.replace(cfg, precision=recorded), dataclasses.replace(safe, precision=recorded)
    cfg, safe = dataclasses.replace(cfg, out=out), dataclasses.replace(safe, out=out, resume=False)
    with Run(out, "fit", to_dict(cfg), cfg.resume, RESUMABLE) as run:
        if restart:
            keep_restart(run, restart)  # a resumed run's record starts anew
        try:
            return fit_in(run, cfg, signal, field, optimizer, guard=guard, extra=record)
        except (BlewUp, DivergedError) as e:
            if guard is None or (isinstance(e, DivergedError) and e.step > guard.steps):
                raise
            blew = e if isinstance(e, BlewUp) else BlewUp(cfg.optimizer, e.step, guard.first, e.loss, e.what)
            print(f"--optimizer auto: {blew}; restarting with {SAFE} (lr {safe.lr:g}) from the initial weights")
            record["auto"]["restart"] = restart = {**blew.to_dict(), "lr": cfg.lr, "restarted_with": {"optimizer": SAFE, "lr": safe.lr}}
            keep_restart(run, restart, safe)
            for name in ("checkpoint.pt", "field.safetensors"):  # the guarded attempt's: nothing of it is continued
                (out / name).unlink(missing_ok=True)
            return fit_in(run, safe, signal, *new_field(safe, signal), fresh=True, extra=record)


def new_field(cfg: FitConfig, signal: Signal) -> tuple[Field, torch.optim.Optimizer]:
    """The field ``cfg`` starts from (seeded by ``cfg.seed``, on ``cfg.device``) and its optimizer."""
    torch.manual_seed(cfg.seed)
    field = Field(cfg.field_config(signal.layout)).to(cfg.device)
    return field, build_optimizer(cfg.optimizer, field, cfg.lr, seed=cfg.seed)


def keep_restart(run: Run, restart: dict, cfg: FitConfig | None = None) -> None:
    """Record in ``run.json`` that ``--optimizer auto``'s choice blew up and the run restarted (with ``cfg``, which
    then replaces the run's recorded config and ``config.yaml``: ``--resume`` continues it, ``--config`` repeats it)."""
    if cfg is not None:
        run.record["config"] = json.loads(json.dumps(to_dict(cfg)))
        write_text(run.out / REPLAY, replay_text("fit", to_dict(cfg)))
    run.record[AUTO_RESTART] = restart
    run.save()


def fit_in(run: Run, cfg: FitConfig, signal: Signal, field: Field, optimizer: torch.optim.Optimizer, *, guard: Guard | None = None, fresh: bool = False,
           extra: dict | None = None) -> dict:  # fmt: skip
    """The training and the outputs of :func:`fit`, in its run folder (continued from its checkpoint, if it has one;
    ``fresh``: from the start, dropping what the folder's log holds). ``guard`` watches the training losses;
    ``extra`` joins the run record."""
    out, layout = run.out, signal.layout
    resumed = cfg.resume and not fresh and (out / "checkpoint.pt").is_file()  # a run killed before its first checkpoint starts afresh
    grid = OccupancyGrid(layout, cfg.occupancy_grid, seed=cfg.seed) if cfg.occupancy_grid else None
    precision = Precision(cfg.precision, cfg.device)
    start, elapsed, curve = resume_state(out, cfg, field, optimizer, layout.suffix, guard, grid, precision) if resumed else (0, 0.0, [])
    tracker = open_tracker(out, start if cfg.resume or fresh else None, cfg.log_every, run.mkdir(out / TENSORBOARD) if cfg.tensorboard else None)

    def on_eval(step: int, loss: float, seconds: float) -> dict:
        pred, metrics = evaluate(field, signal, grid)
        curve.append({"step": step, "loss": loss, "time_s": seconds, **metrics, **({"occupied": grid.fraction} if grid is not None else {})})
        tracker.evaluation(step, metrics, seconds, layout=layout, pred=pred, truth=signal.eval_values)  # flushed before the checkpoint
        save_field(out / "field.safetensors", field, layout)
        save_checkpoint(out / "checkpoint.pt", {
            "config": to_dict(cfg), "step": step, "elapsed": seconds, "curve": curve,
            "field": field.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
            **({"auto_first_loss": guard.first} if guard is not None else {}),
            **({"precision": precision.state_dict()} if precision.scaler is not None else {}),  # fp16: the loss scale
            **({"occupancy_grid": grid.state_dict()} if grid is not None else {}),
        })  # fmt: skip
        return {layout.primary_metric: metrics[layout.primary_metric]}

    loss_of = LOSSES[layout.loss]
    model = torch.compile(field, dynamic=False) if cfg.compile else field  # evaluation stays eager
    if grid is not None:
        model = grid.skip(model)
    sampler = EpochSampler(signal.coords.to(cfg.device), signal.values.to(cfg.device), cfg.batch_size, cfg.seed)
    with tracker:
        elapsed = train(
            optimizer, lambda x, y: loss_of(layout.observe(model, x), y), sampler, cfg.steps, start_step=start, elapsed=elapsed,
            eval_steps=evaluation_steps(cfg.steps, cfg.eval_every), on_eval=on_eval, last_good_step=start or None,
            progress=cfg.progress, desc=f"fit {Path(cfg.signal).name}", tracker=tracker, watch=guard, precision=precision,
            update=None if grid is None else lambda: (optimizer.step(), grid.step(field)),
        )  # fmt: skip
    return write_outputs(cfg, field, signal, curve, elapsed, extra, grid)


def write_outputs(cfg: FitConfig, field: Field, signal: Signal, curve: list[dict], elapsed: float, extra: dict | None = None,
                  grid: OccupancyGrid | None = None) -> dict:  # fmt: skip
    """The reconstruction, the extra outputs (rendered skipping ``grid``'s empty cells), ``curve.png`` and ``metrics.json``
    (with ``extra``); returns the run record."""
    layout, out = signal.layout, cfg.out
    record = {
        "signal": cfg.signal, "kind": layout.kind, "activation": cfg.activation, "optimizer": cfg.optimizer,
        "lr": cfg.lr, "params": field.num_params, "steps": cfg.steps, "batch_size": cfg.batch_size, "seed": cfg.seed, "precision": cfg.precision,
        "wall_time_s": elapsed, "final": {k: v for k, v in curve[-1].items() if k not in ("step", "time_s")},
        "curve": curve, "field": field.config.to_dict(), "layout": layout.to_dict(), "config": to_dict(cfg),
        "torch": torch.__version__, "threads": torch.get_num_threads(), **(extra or {}),
    }  # fmt: skip
    field.cpu()
    predict = field if grid is None else grid.skip(field)
    try:
        record["reconstruction"] = write_reconstruction(partial(layout.observe, predict), layout, out / f"reconstruction{layout.suffix}").name
    except MclnfError as e:  # e.g. an occupancy field with no surface yet: the run itself is fine
        record["reconstruction"] = None
        print(f"warning: no reconstruction written: {e}", file=sys.stderr)
    record["outputs"] = layout.extra_outputs(predict, signal, out)
    plot_curve(curve, out / "curve.png", title=f"{Path(cfg.signal).name} · {cfg.activation} · {cfg.optimizer} {cfg.lr:g}", log_steps=cfg.eval_every is None)
    write_text(out / "metrics.json", json.dumps(record, indent=1))
    return record


def summary(record: dict) -> str:
    """The lines ``mclnf fit`` prints at the end."""
    final = "  ".join(f"{k} {v:.4g}" for k, v in record["final"].items() if isinstance(v, float))
    return (f"{record['signal']}: {record['kind']}, {record['params']:,} parameters, {record['steps']} steps in {record['wall_time_s']:.1f} s  →  {final}\n"
            f"outputs in {record['config']['out']}\n")  # fmt: skip
