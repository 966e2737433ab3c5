"""``mclnf meta-train``: meta-learn a field initialization θ₀ on a dataset's meta-train signals.

Each outer step draws a meta-batch of ``meta_batch`` signals (a permutation fixed by the seed and the
step alone) and takes :func:`mclnf.train.meta_step`: the method's meta-objective, the meta-gradient's
norm clipped, an Adam step on θ₀. Under ``torchrun`` (torch.distributed: gloo on CPU, nccl on GPU)
every process takes a contiguous slice of the same meta-batch and the summed gradients are
all-reduced, so N processes compute what one process computes on the whole meta-batch.

Outputs: ``init.safetensors`` (θ₀ with the method, field and layout as metadata — what
``mclnf meta-test`` reads), ``checkpoint.pt`` every ``checkpoint_every`` steps (θ₀, Adam state, EMCL's
importance; ``--resume`` continues bit-exactly on the same device, and ``--device`` may change on ``--resume``: the
checkpoint loads onto the CPU and moves to the device), ``meta_train.json``, ``meta_train.png``, ``log.jsonl`` (the loss after
adaptation, the meta-gradient's norm before clipping, the learning rate and the norm of θ₀'s update at the logged
outer steps; and ``tensorboard/`` with ``--tensorboard``: :mod:`mclnf.tracking`) and ``run.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from time import perf_counter

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from mclnf.config import MetaTrainConfig, RunOptions, loader_options, resolve_meta
from mclnf.errors import DivergedError, MclnfError
from mclnf.eval.plots import plot_meta_curve
from mclnf.io import load_checkpoint, save_checkpoint, write_text
from mclnf.learners import meta_method
from mclnf.learners.emcl import Importance
from mclnf.options import to_dict
from mclnf.runs import Run, prepare_out, save_init
from mclnf.runtime import Precision, init_distributed, world
from mclnf.sampling import permutation
from mclnf.signals.datasets import MetaDataset, load_dataset
from mclnf.tracking import TENSORBOARD, norm, open_tracker
from mclnf.train import meta_step

RESUMABLE = ("outer_steps", "checkpoint_every", "log_every", "tensorboard", "device", *(f.name for f in dataclasses.fields(RunOptions)))  # may change on --resume


def load(cfg: MetaTrainConfig) -> MetaDataset:
    lists = None if cfg.train_list is None else (cfg.train_list, cfg.test_list)
    return load_dataset(cfg.dataset, loader_options(cfg), cfg.test_fraction, cfg.split_seed, lists, cfg.clip, cfg.block_views)


def meta_batch(n_signals: int, size: int, seed: int, step: int) -> torch.Tensor:
    """The signals of outer step ``step``: ``size`` distinct ones, fixed by (seed, step)."""
    return permutation(n_signals, seed, step, 7)[:size]


def meta_train(cfg: MetaTrainConfig) -> dict | None:
    """Meta-train as ``cfg`` says; returns the record also written to ``meta_train.json`` (None on processes other than rank 0)."""
    cfg = dataclasses.replace(cfg, device=init_distributed(cfg.device))
    rank, size = world()
    ds = load(cfg)  # every input error before the output folder is touched
    cfg = resolve_meta(cfg, ds.layout.kind)
    if cfg.meta_batch > len(ds.train):
        raise MclnfError(f"--meta-batch {cfg.meta_batch}: larger than the {len(ds.train)} meta-train signals")
    if cfg.meta_batch % size:
        raise MclnfError(f"--meta-batch {cfg.meta_batch}: not divisible by the {size} processes")
    device = torch.device(cfg.device)
    method = meta_method(ds.layout, cfg.field_config(ds.layout), cfg)
    method.template.to(device)
    out = Path(cfg.out) if cfg.out else Path("runs") / f"meta-{Path(cfg.dataset).stem}-{cfg.method}"
    if rank == 0:
        prepare_out(out, cfg.resume, cfg.overwrite)
    cfg = dataclasses.replace(cfg, out=out)
    with Run(out, "meta-train", to_dict(cfg), cfg.resume, RESUMABLE) if rank == 0 else contextlib.nullcontext() as run:
        record = outer_loop(cfg, ds, method, rank, size, run)
    if size > 1:  # every process leaves together: a process exiting with gloo's threads alive may abort the others
        dist.barrier()
        dist.destroy_process_group()
    return record


def outer_loop(cfg: MetaTrainConfig, ds: MetaDataset, method, rank: int, size: int, run: Run | None = None) -> dict | None:
    """θ₀ from its seed (or the run's checkpoint), the outer steps with a checkpoint every ``checkpoint_every``, the outputs."""
    device, out = torch.device(cfg.device), cfg.out
    theta = {k: v.to(device).requires_grad_() for k, v in method.init_params(cfg.seed).items()}
    optimizer = torch.optim.Adam(theta.values(), lr=cfg.outer_lr)
    precision = Precision(cfg.precision, device)  # bf16: the meta-objective under autocast; θ₀ and Adam's state float32
    importance = Importance(cfg.emcl_eta, [torch.ones_like(theta[k]) for k in method.fast]) if cfg.meta_grad == "emcl" else None
    resumed = cfg.resume and (out / "checkpoint.pt").is_file()  # a run killed before its first checkpoint starts afresh
    start, elapsed, curve = resume_state(out, cfg, theta, optimizer, importance) if resumed else (0, 0.0, [])
    values = ds.values("train").to(device)
    coords = ds.coords("train")
    coords = None if coords is None else coords.to(device)
    count = cfg.meta_batch * (cfg.tasks if method.modular else 1)  # tasks in the global meta-batch
    lo, hi = rank * cfg.meta_batch // size, (rank + 1) * cfg.meta_batch // size
    bar = tqdm(total=cfg.outer_steps, initial=start, desc=f"meta-train {cfg.method}", disable=not cfg.progress or rank, mininterval=1.0, dynamic_ncols=True)
    last_saved = start or None
    tracker = open_tracker(out, start if cfg.resume else None, cfg.log_every, run.mkdir(out / TENSORBOARD) if cfg.tensorboard else None) if rank == 0 else None
    try:
        for step in range(start + 1, cfg.outer_steps + 1):
            logged = tracker is not None and tracker.logs(step)
            before = [v.detach().clone() for v in theta.values()] if logged else None  # for the update's norm (not timed)
            t0 = perf_counter()
            batch = meta_batch(len(ds.train), cfg.meta_batch, cfg.seed, step)[lo:hi].to(device)
            try:
                loss, grad_norm = meta_step(method, theta, optimizer, values[batch], None if coords is None else coords[batch], count, importance,
                                            method.task_subset(cfg.seed, step), cfg.clip_grad, precision)  # fmt: skip
            except DivergedError as e:
                kept = f"the checkpoint of step {last_saved} is kept (--resume continues from it)" if last_saved else "no checkpoint was written yet"
                raise DivergedError(step, e.loss, last_saved, e.what, where=f" (meta-train {cfg.method})", kept=kept, hint="try a lower --outer-lr or --inner-lr") from None
            elapsed += perf_counter() - t0
            curve.append({"step": step, "loss": loss, "grad_norm": grad_norm, "time_s": elapsed})
            if logged:
                tracker.train_step(step, loss, elapsed, lr=optimizer.param_groups[0]["lr"], grad_norm=grad_norm, update_norm=norm(v - b for v, b in zip(theta.values(), before)),
                                   **method.weight_stats(theta, values[batch[:1]]))  # fmt: skip  (mcl-nf-fim: its weights; not timed)
            bar.update()
            bar.set_postfix(loss=f"{loss:.3g}", refresh=False)
            if rank == 0 and (step % cfg.checkpoint_every == 0 or step == cfg.outer_steps):
                tracker.flush()  # the log holds every step the checkpoint has seen
                save_init(out / "init.safetensors", theta, method, cfg, ds, step)
                save_checkpoint(out / "checkpoint.pt", {"config": to_dict(cfg), "step": step, "elapsed": elapsed, "curve": curve,
                                                        "theta": {k: v.detach().cpu() for k, v in theta.items()}, "optimizer": optimizer.state_dict(),
                                                        "importance": None if importance is None else importance.state_dict(), "rng": torch.get_rng_state()})  # fmt: skip
                last_saved = step
    finally:
        bar.close()
        if tracker is not None:
            tracker.close()
    return write_outputs(cfg, ds, method, theta, curve, start) if rank == 0 else None


def resume_state(out: Path, cfg: MetaTrainConfig, theta: dict, optimizer: torch.optim.Optimizer, importance: Importance | None) -> tuple[int, float, list]:
    """Load the checkpoint of the run in ``out`` into θ₀, the outer optimizer and the importance; returns (step, seconds, curve)."""
    ck = load_checkpoint(out / "checkpoint.pt", ("step", "elapsed", "curve", "theta", "optimizer", "importance", "rng"))
    if ck["step"] > cfg.outer_steps:  # equal: killed before its last outputs, which are written now
        raise MclnfError(f"--outer-steps {cfg.outer_steps}: the run in {out} already reached step {ck['step']}")
    with torch.no_grad():
        for k, v in ck["theta"].items():
            theta[k].copy_(v)
    optimizer.load_state_dict(ck["optimizer"])
    if importance is not None:
        importance.load_state_dict({**ck["importance"], "h": [h.to(theta[next(iter(theta))].device) for h in ck["importance"]["h"]]})
    torch.set_rng_state(ck["rng"])  # scenes: the stratified jitter of the steps to come
    return ck["step"], ck["elapsed"], ck["curve"]


def write_outputs(cfg: MetaTrainConfig, ds: MetaDataset, method, theta: dict, curve: list[dict], start: int) -> dict:
    """``meta_train.png`` and ``meta_train.json``; returns the record."""
    elapsed = curve[-1]["time_s"]
    record = {
        "dataset": cfg.dataset, "kind": ds.layout.kind, "method": cfg.method, "meta_grad": cfg.meta_grad,
        "params": sum(v.numel() for v in theta.values()), "outer_steps": cfg.outer_steps, "meta_batch": cfg.meta_batch, "precision": cfg.precision,
        "signals": {"train": len(ds.train), "test": len(ds.test)}, "train_s": elapsed,
        "episodes_per_s": cfg.meta_batch * (cfg.outer_steps - start) / max(elapsed - (curve[start - 1]["time_s"] if start else 0.0), 1e-9),
        "final_loss": curve[-1]["loss"], "curve": curve, "field": method.field_config.to_dict(), "layout": ds.layout.to_dict(),
        "config": to_dict(cfg), "train_files": ds.train_files, "test_files": ds.test_files, "processes": world()[1],
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }  # fmt: skip
    plot_meta_curve(curve, cfg.out / "meta_train.png", title=f"{cfg.dataset} · {cfg.method} · {cfg.meta_grad}")
    write_text(cfg.out / "meta_train.json", json.dumps(record, indent=1))
    return record  # the CLI prints its summary (once)


def summary(record: dict) -> str:
    """The lines ``mclnf meta-train`` prints at the end."""
    return (f"{record['method']} ({record['meta_grad']}): {record['params']:,} parameters, {record['outer_steps']} outer steps on {record['signals']['train']} signals "
            f"in {record['train_s']:.1f} s, loss after adaptation {record['final_loss']:.4g}\noutputs in {record['config']['out']}\n")  # fmt: skip
