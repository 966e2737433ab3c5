"""``mclnf fit-many``: fit a field to every signal of a folder, many fields in each training step.

The folder's signals — one kind, one size after the loader options (images after ``--resize``/``--crop``, audio
clips cut to one ``--duration``, videos of one ``--frames``) — are fitted as independent fields,
``--signals-per-batch`` of them stacked into every training step (:mod:`mclnf.stacked`): each field is the one
``mclnf fit SIGNAL`` with the same options fits (same initialization, same mini-batches), up to float
rounding. Under ``torchrun --nproc_per_node=N`` the processes share the folder, each taking every N-th signal;
the first writes the summary once all are done.

Outputs in ``--out``: a folder per signal, named after its file, with ``field.safetensors`` (``mclnf render``
reads it), the reconstruction and ``metrics.json`` (written last: a signal whose folder has one is done, and
``--resume`` skips it); ``summary.csv`` (signal, the kind's metrics, seconds: its share of its stack's training
time); ``run.json`` (listing every file the run writes, so ``--overwrite`` removes those and nothing else) and
``config.yaml``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
from collections import Counter
from functools import partial
from pathlib import Path
from time import perf_counter

import torch
import torch.distributed as dist

from mclnf.config import FitConfig, FitManyConfig, RunOptions, loader_options, resolve
from mclnf.errors import MclnfError
from mclnf.io import write_text
from mclnf.options import to_dict
from mclnf.runs import Run, prepare_out, save_field, write_reconstruction
from mclnf.runtime import Precision, init_distributed, on_device, world
from mclnf.signals import signal_kind
from mclnf.signals.datasets import folder_files, load_alike
from mclnf.stacked import default_stack, fit_stacked, stacks

RESUMABLE = ("signals_per_batch", "device", *(f.name for f in dataclasses.fields(RunOptions)))  # may change on --resume: each field stays what it was
SUMMARY, METRICS, FIELD = "summary.csv", "metrics.json", "field.safetensors"
ALIKE = {  # the kinds whose signals share their samples (a grid), and the options that make them one size
    "image": " (give --resize, or --crop, so that every image has one size)",
    "audio": " (give --duration, so that every clip has one length, and use clips of one sample rate)",
    "video": " (give --frames and --resize, so that every video has one shape)",
}
SHOWN_ROWS = 20  # rows of the printed table; summary.csv holds them all


def fit_many(cfg: FitManyConfig) -> dict | None:
    """Fit every signal of ``cfg.folder`` as ``cfg`` says; returns the summary record (None on processes other than the first)."""
    cfg = dataclasses.replace(cfg, device=init_distributed(cfg.device, "gloo"))  # only barriers and small messages pass between the processes
    rank, size = world()
    try:
        record = fit_folder(cfg, rank, size)
        if size > 1:  # every process leaves together: one exiting with gloo's threads alive may abort the others
            dist.barrier()
        return record
    finally:
        if size > 1:
            dist.destroy_process_group()


def fit_folder(cfg: FitManyConfig, rank: int, size: int) -> dict | None:
    """:func:`fit_many` in process ``rank`` of ``size``: its share of the folder, then (the first) the summary."""
    files = folder_files(cfg.folder)  # every input error is raised before the output folder is touched
    kind = signal_kind(files[0])
    if kind not in ALIKE:
        raise MclnfError(f"{files[0]}: {kind} signals do not share their samples and are not fitted together; fit each with mclnf fit")
    cfg = resolve_as_fit(cfg, files[0], kind)
    mine = list(range(rank, len(files), size))  # this process's share: every size-th signal
    signals = load_alike(files, loader_options(cfg, kind), keep={0, *mine}, hint=ALIKE[kind])
    layout = signals[0].layout
    field_config = cfg.field_config(layout)
    device = cfg.device
    out = Path(cfg.out or Path("runs") / f"fit-many-{Path(cfg.folder).resolve().name}-{cfg.activation}")
    cfg = dataclasses.replace(cfg, out=out)
    names = folder_names(files)
    outputs = (FIELD, METRICS, f"reconstruction{layout.suffix}")
    run, error = None, None
    if rank == 0:
        try:
            prepare_out(out, cfg.resume, cfg.overwrite)
            run = Run(out, "fit-many", to_dict(cfg), cfg.resume, RESUMABLE)
            run.expect([out / n / f for n in names for f in outputs], [out / n for n in names])  # every process's outputs
        except MclnfError as e:
            error = str(e)
    error = from_first(error, size)  # the other processes wait for the output folder
    if error:
        raise MclnfError(error)
    todo = [i for i in mine if not (cfg.resume and (out / names[i] / METRICS).is_file())]
    per_stack = cfg.signals_per_batch or default_stack(field_config, cfg.batch_size, len(signals[0]), max(1, len(todo)), device)
    precision = Precision(cfg.precision, device)
    t0 = perf_counter()
    with run if run is not None else contextlib.nullcontext():
        done = 0
        for stack in stacks(todo, per_stack):
            desc = f"fit-many {done + 1}-{done + len(stack)}/{len(todo)} (loss: the stack's sum)"
            fields, losses, seconds = fit_stacked([signals[i] for i in stack], field_config, optimizer=cfg.optimizer, lr=cfg.lr, steps=cfg.steps, batch_size=cfg.batch_size,
                                                  seed=cfg.seed, device=device, precision=precision, progress=cfg.progress and rank == 0, desc=desc)  # fmt: skip
            for k, i in enumerate(stack):
                extra = {"loss": losses[k], "stack": {"signals": len(stack), "train_s": seconds}, "process": rank}
                write_signal(cfg, out / names[i], signals[i], fields.field(k), seconds / len(stack), extra, device)
                signals[i] = None  # its samples are no longer needed
            done += len(stack)
        fitted = from_all(len(todo), size)
        if rank != 0:
            return None
        rows = [summary_row(out / n, Path(f).name) for n, f in zip(names, files)]
        write_text(out / SUMMARY, summary_csv(rows))
    return {"signals": len(files), "fitted": fitted, "processes": size, "signals_per_batch": per_stack, "seconds": perf_counter() - t0, "rows": rows, "out": str(out)}


def resolve_as_fit(cfg: FitManyConfig, signal: str, kind: str) -> FitManyConfig:
    """``cfg`` with the defaults ``mclnf fit`` resolves for ``signal`` with the same options (:func:`mclnf.config.resolve`:
    the kind's defaults, every option checked against the kind), so that each field is the one ``mclnf fit`` fits."""
    shared = {f.name for f in dataclasses.fields(FitConfig)} & {f.name for f in dataclasses.fields(FitManyConfig)}
    as_fit = resolve(FitConfig(signal=signal, **{k: getattr(cfg, k) for k in shared}), kind)
    return dataclasses.replace(cfg, **{k: getattr(as_fit, k) for k in shared} | {"precision": as_fit.precision or "fp32"})


def from_first(value, size: int):
    """``value`` as the first process has it, on every process (a broadcast; waits for the first)."""
    if size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def from_all(count: int, size: int) -> int:
    """The sum of every process's ``count`` (after all of them have finished their share)."""
    if size == 1:
        return count
    total = torch.tensor([count])
    dist.all_reduce(total)
    return int(total)


def folder_names(files: list[str]) -> list[str]:
    """The output folder of each file: its name without the suffix, or with it where two files share a stem."""
    stems = Counter(Path(f).stem for f in files)
    return [Path(f).stem if stems[Path(f).stem] == 1 else Path(f).name for f in files]


def write_signal(cfg: FitManyConfig, folder: Path, signal, field, seconds: float, extra: dict, device: str) -> None:
    """One signal's outputs: the field, its reconstruction, then ``metrics.json`` (last: the mark of a finished signal)."""
    layout = signal.layout
    folder.mkdir(parents=True, exist_ok=True)
    predict = on_device(field, device)
    metrics = layout.metrics(layout.predict(predict, signal.eval_coords), signal.eval_values)
    save_field(folder / FIELD, field, layout)
    reconstruction = write_reconstruction(partial(layout.observe, predict), layout, folder / f"reconstruction{layout.suffix}")
    record = {
        "signal": signal.name, "kind": layout.kind, "activation": cfg.activation, "optimizer": cfg.optimizer, "lr": cfg.lr,
        "params": field.num_params, "steps": cfg.steps, "batch_size": cfg.batch_size, "seed": cfg.seed, "wall_time_s": seconds,
        "final": {"loss": extra.pop("loss"), **metrics}, "reconstruction": reconstruction.name, "field": field.config.to_dict(),
        "layout": layout.to_dict(), "config": to_dict(cfg), "torch": torch.__version__, "threads": torch.get_num_threads(), **extra,
    }  # fmt: skip
    write_text(folder / METRICS, json.dumps(record, indent=1))


def summary_row(folder: Path, name: str) -> dict:
    """A signal's row of the summary, from its ``metrics.json``: signal, the kind's metrics, seconds."""
    try:
        record = json.loads((folder / METRICS).read_text())
    except (OSError, ValueError):
        raise MclnfError(f"{folder / METRICS}: missing or unreadable; rerun with --resume to fit the signals not done") from None
    return {"signal": name, **{k: v for k, v in record["final"].items() if k != "loss"}, "seconds": record["wall_time_s"]}


def summary_csv(rows: list[dict]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return text.getvalue()


def summary(record: dict) -> str:
    """What ``mclnf fit-many`` prints at the end: a markdown table (the first rows and the mean) and where the outputs are."""
    rows = record["rows"]
    columns = list(rows[0])
    cell = lambda v: "–" if v is None else f"{v:.2f}" if isinstance(v, float) and abs(v) >= 1 else f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    head = ["signal", *(c.upper() for c in columns[1:-1]), "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows[:SHOWN_ROWS]]
    if len(rows) > SHOWN_ROWS:
        lines.append(f"| … {len(rows) - SHOWN_ROWS} more in {SUMMARY} |" + " |" * (len(head) - 1))
    means = {c: [r[c] for r in rows if isinstance(r[c], float) and math.isfinite(r[c])] for c in columns[1:]}
    lines.append("| **mean** | " + " | ".join(cell(sum(v) / len(v)) if v else "–" for v in means.values()) + " |")
    rate = f", {record['fitted'] / record['seconds']:.2f} signals/s" if record["fitted"] else ""
    before = record["signals"] - record["fitted"]
    return ("\n".join(lines) + f"\n{record['signals']} signals ({record['fitted']} fitted now{f', {before} done before' if before else ''}) on {record['processes']} "
            f"process{'es' if record['processes'] > 1 else ''}, {record['signals_per_batch']} per step: {record['seconds']:.1f} s{rate}\noutputs in {record['out']}\n")  # fmt: skip
