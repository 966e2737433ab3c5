"""``mclnf meta-train``: meta-learn a field initialization θ₀ on a dataset's meta-train signals.

Each outer step draws a meta-batch of ``meta_batch`` signals (a permutation fixed by the seed and the
step alone), computes the method's meta-objective (:class:`mclnf.meta.methods.MetaMethod`), clips the
meta-gradient's norm and takes an Adam step on θ₀. Under ``torchrun`` (torch.distributed: gloo on
CPU, nccl on GPU) every process takes a contiguous slice of the same meta-batch and the summed
gradients are all-reduced, so N processes compute what one process computes on the whole meta-batch.

Outputs: ``init.safetensors`` (θ₀ with the method, field and layout as metadata — what
``mclnf meta-test`` reads), ``checkpoint.pt`` every ``checkpoint_every`` steps (θ₀, Adam state, EMCL's
importance; ``--resume`` continues bit-exactly), ``meta_train.json`` and ``meta_train.png``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from time import perf_counter

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from tqdm.auto import tqdm

from mclnf import __version__
from mclnf.checkpoint import atomic_path, load_checkpoint, save_checkpoint, write_text
from mclnf.continual.learners import permutation
from mclnf.continual.run import flat
from mclnf.errors import DivergedError, MclnfError
from mclnf.eval.plots import plot_meta_curve
from mclnf.fields import FieldConfig
from mclnf.fit import DEFAULTS, KIND_DEFAULTS, field_config, make_dir, prepare_out
from mclnf.meta.data import MetaDataset, load_dataset
from mclnf.meta.methods import MetaMethod, MetaOptions

LOADER_OPTIONS = ("resize", "crop", "gray", "pad", "start", "duration", "frames", "start_frame", "holdout", "samples", "importance", "scene_bound", "direction")
META_TASK_BATCH = {"radiance": 256}  # rays of each task per outer step: a block's tasks hold thousands
RESUMABLE = ("outer_steps", "checkpoint_every", "resume", "overwrite", "progress", "out")


@dataclass
class MetaTrainConfig:
    dataset: str = "lfw_subset"
    out: Path | None = None
    # field (None: the kind's default, as mclnf fit's)
    activation: str | None = None
    width: int | None = None
    depth: int | None = None
    omega0: float | None = None
    first_omega0: float | None = None
    sigma: float | None = None
    s0: float | None = None
    pe_frequencies: int | None = None
    # data
    resize: int | None = None
    crop: tuple[int, int] | None = None
    gray: bool | None = None
    pad: int | None = None
    start: float | None = None
    duration: float | None = None
    frames: int | None = None
    start_frame: int | None = None
    clip: float | None = None
    block_views: int | None = None
    holdout: int | None = None
    samples: int | None = None
    importance: int | None = None
    scene_bound: float | None = None
    direction: str | None = None
    test_fraction: float = 0.3
    split_seed: int = 0
    train_list: str | None = None
    test_list: str | None = None
    # outer loop
    outer_steps: int = 500
    meta_batch: int = 4
    outer_lr: float = 1e-4  # Learned Init's 1e-5 is for ~10⁵ outer steps; CPU-scale runs take hundreds
    clip_grad: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50
    device: str = "cpu"
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    options: MetaOptions = field(default_factory=MetaOptions)

    def check(self) -> None:
        for name in ("outer_steps", "meta_batch", "checkpoint_every"):
            if isinstance(getattr(self, name), bool) or getattr(self, name) < 1:
                raise MclnfError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        for name in ("outer_lr", "clip_grad"):
            if not 0 < getattr(self, name) < float("inf"):
                raise MclnfError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be a positive finite number")
        if (self.train_list is None) != (self.test_list is None):
            raise MclnfError("--train-list and --test-list: give both or neither")

    def load(self) -> MetaDataset:
        lists = None if self.train_list is None else (self.train_list, self.test_list)
        opts = {k: getattr(self, k) for k in LOADER_OPTIONS if getattr(self, k) not in (None, False)}
        return load_dataset(self.dataset, opts, self.test_fraction, self.split_seed, lists, self.clip, self.block_views)

    def with_kind_defaults(self, kind: str) -> MetaTrainConfig:
        """Unset field options (and scenes' task batch) filled with the signal kind's defaults, as ``mclnf fit`` does."""
        d = {**DEFAULTS, **KIND_DEFAULTS.get(kind, {})}
        cfg = dataclasses.replace(self, **{k: d[k] for k in ("activation", "width", "depth") if getattr(self, k) is None})
        if cfg.activation == "gaussian" and cfg.sigma is None and "sigma" in d:
            cfg = dataclasses.replace(cfg, sigma=d["sigma"])
        if cfg.options.task_batch is None and kind in META_TASK_BATCH:
            cfg = dataclasses.replace(cfg, options=dataclasses.replace(cfg.options, task_batch=META_TASK_BATCH[kind]))
        return cfg

    def field_config(self, ds: MetaDataset) -> FieldConfig:
        first = self.first_omega0
        if first is None and self.activation == "sine":
            first = KIND_DEFAULTS.get(ds.layout.kind, {}).get("first_omega0")
        return field_config(dataclasses.replace(self, first_omega0=first), ds.layout)

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def world() -> tuple[int, int]:
    """(rank, world size) of torch.distributed, (0, 1) when not distributed."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def init_distributed(device: str) -> None:
    """Join the process group ``torchrun`` describes (WORLD_SIZE > 1); nothing otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")


def save_init(path: Path, theta: dict[str, torch.Tensor], method: MetaMethod, cfg: MetaTrainConfig, ds: MetaDataset, step: int) -> None:
    meta = {
        "mclnf": __version__, "step": str(step), "field": json.dumps(method.field_config.to_dict()), "layout": json.dumps(ds.layout.to_dict()),
        "options": json.dumps(asdict(cfg.options)), "config": json.dumps(cfg.to_dict()),
        "train_files": json.dumps(ds.train_files), "test_files": json.dumps(ds.test_files),
    }  # fmt: skip
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in theta.items()}, str(tmp), metadata=meta)


def meta_batch(n_signals: int, size: int, seed: int, step: int) -> torch.Tensor:
    """The signals of outer step ``step``: ``size`` distinct ones, fixed by (seed, step)."""
    return permutation(n_signals, seed, step, 7)[:size]


def meta_train(cfg: MetaTrainConfig) -> dict:
    """Meta-train as ``cfg`` says; returns the record also written to ``meta_train.json`` (None on processes other than rank 0)."""
    cfg.check()
    init_distributed(cfg.device)
    rank, size = world()
    ds = cfg.load()  # every input error before the output folder is touched
    cfg = cfg.with_kind_defaults(ds.layout.kind)
    if cfg.meta_batch > len(ds.train):
        raise MclnfError(f"--meta-batch {cfg.meta_batch}: larger than the {len(ds.train)} meta-train signals")
    if cfg.meta_batch % size:
        raise MclnfError(f"--meta-batch {cfg.meta_batch}: not divisible by the {size} processes")
    device = torch.device(cfg.device)
    method = MetaMethod(ds.layout, cfg.field_config(ds), cfg.options)
    method.template.to(device)
    out = Path(cfg.out) if cfg.out else Path("runs") / f"meta-{Path(cfg.dataset).stem}-{cfg.options.method}"
    if rank == 0:
        prepare_out(out, cfg.resume, cfg.overwrite)
    cfg = dataclasses.replace(cfg, out=out)

    theta = {k: v.to(device).requires_grad_() for k, v in method.init_params(cfg.seed).items()}
    optimizer = torch.optim.Adam(theta.values(), lr=cfg.outer_lr)
    h = {k: torch.ones_like(theta[k]) for k in method.fast}  # emcl's importance (normalized to mean 1)
    start, elapsed, curve = 0, 0.0, []
    if cfg.resume:
        ck = load_checkpoint(out / "checkpoint.pt")
        was, now = flat(ck["config"]), flat(cfg.to_dict())
        changed = [k for k in was if k not in RESUMABLE and now.get(k) != was[k]]
        if changed:
            raise MclnfError(f"--resume: {out} was run with --{changed[0].replace('_', '-')} {was[changed[0]]}, not {now[changed[0]]}")
        if ck["step"] >= cfg.outer_steps:
            raise MclnfError(f"--outer-steps {cfg.outer_steps}: the run in {out} already reached step {ck['step']}")
        with torch.no_grad():
            for k, v in ck["theta"].items():
                theta[k].copy_(v)
        optimizer.load_state_dict(ck["optimizer"])
        h = {k: v.to(device) for k, v in ck["importance"].items()}
        torch.set_rng_state(ck["rng"])  # scenes: the stratified jitter of the steps to come
        start, elapsed, curve = ck["step"], ck["elapsed"], ck["curve"]
    if rank == 0:
        make_dir(out)

    values = ds.values("train").to(device)
    coords = ds.coords("train")
    coords = None if coords is None else coords.to(device)
    per_signal = cfg.options.tasks if cfg.options.method.startswith("mcl-nf") else 1
    count = cfg.meta_batch * per_signal  # tasks in the global meta-batch
    lo, hi = rank * cfg.meta_batch // size, (rank + 1) * cfg.meta_batch // size
    bar = tqdm(total=cfg.outer_steps, initial=start, desc=f"meta-train {cfg.options.method}", disable=not cfg.progress or rank, mininterval=1.0, dynamic_ncols=True)
    last_saved = start or None

    def checkpoint(step: int) -> None:
        if rank == 0:
            save_init(out / "init.safetensors", theta, method, cfg, ds, step)
            save_checkpoint(out / "checkpoint.pt", {"config": cfg.to_dict(), "step": step, "elapsed": elapsed, "curve": curve,
                                                    "theta": {k: v.detach().cpu() for k, v in theta.items()}, "optimizer": optimizer.state_dict(),
                                                    "importance": {k: v.cpu() for k, v in h.items()}, "rng": torch.get_rng_state()})  # fmt: skip

    try:
        for step in range(start + 1, cfg.outer_steps + 1):
            t0 = perf_counter()
            batch = meta_batch(len(ds.train), cfg.meta_batch, cfg.seed, step)[lo:hi].to(device)
            optimizer.zero_grad(set_to_none=True)
            subset = method.task_subset(cfg.seed, step)
            obj, loss_sum, importance = method.objective(theta, values[batch], count, h, None if coords is None else coords[batch], subset)
            obj.backward()
            stats = torch.cat([loss_sum.reshape(1)] + [importance[k].reshape(-1) for k in method.fast])
            if size > 1:
                for p in theta.values():
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                dist.all_reduce(stats)
            loss = float(stats[0]) / count
            if not torch.isfinite(stats[:1]).all() or not all(torch.isfinite(p.grad).all() for p in theta.values() if p.grad is not None):
                kept = f"the checkpoint of step {last_saved} is kept (--resume continues from it)" if last_saved else "no checkpoint was written yet"
                raise DivergedError(step, loss, last_saved, where=f" (meta-train {cfg.options.method})", kept=kept,
                                    hint="try a lower --outer-lr or --inner-lr")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(theta.values(), cfg.clip_grad))
            optimizer.step()
            if cfg.options.meta_grad == "emcl":  # h ← β h + (1 − β) |g ⊙ θ₀| / mean
                taylor = stats[1:] / count
                taylor = taylor / taylor.mean().clamp_min(torch.finfo(taylor.dtype).tiny)
                beta, offset = cfg.options.emcl_beta, 0
                for k in method.fast:
                    n = h[k].numel()
                    h[k] = beta * h[k] + (1 - beta) * taylor[offset : offset + n].reshape(h[k].shape)
                    offset += n
            elapsed += perf_counter() - t0
            curve.append({"step": step, "loss": loss, "grad_norm": grad_norm, "time_s": elapsed})
            bar.update()
            bar.set_postfix(loss=f"{loss:.3g}", refresh=False)
            if step % cfg.checkpoint_every == 0 or step == cfg.outer_steps:
                checkpoint(step)
                last_saved = step
    finally:
        bar.close()

    record = {
        "dataset": cfg.dataset, "kind": ds.layout.kind, "method": cfg.options.method, "meta_grad": cfg.options.meta_grad,
        "params": sum(v.numel() for v in theta.values()), "outer_steps": cfg.outer_steps, "meta_batch": cfg.meta_batch,
        "signals": {"train": len(ds.train), "test": len(ds.test)}, "train_s": elapsed,
        "episodes_per_s": cfg.meta_batch * (cfg.outer_steps - start) / max(elapsed - (curve[start - 1]["time_s"] if start else 0.0), 1e-9),
        "final_loss": curve[-1]["loss"], "curve": curve, "field": method.field_config.to_dict(), "layout": ds.layout.to_dict(),
        "config": cfg.to_dict(), "train_files": ds.train_files, "test_files": ds.test_files, "processes": size,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }  # fmt: skip
    if rank == 0:
        plot_meta_curve(curve, out / "meta_train.png", title=f"{cfg.dataset} · {cfg.options.method} · {cfg.options.meta_grad}")
        write_text(out / "meta_train.json", json.dumps(record, indent=1))
        if cfg.progress:
            print(f"meta-trained {cfg.options.method} ({cfg.options.meta_grad}) for {cfg.outer_steps} outer steps in {elapsed:.1f} s; loss after adaptation {loss:.4g}", file=sys.stderr)
    return record if rank == 0 else None
