"""Run folders, written once for every command: the output folder, ``run.json``, overwrite and resume checks,
the field file, the meta-learned initialization file and the reconstruction.

A run folder holds ``run.json`` (the command, the mclnf version and the resolved config), written when
the run starts, and ``config.yaml``, the resolved options as a ``--config`` file: ``mclnf <command> --config
RUN/config.yaml --out NEW`` repeats the run. Only a folder holding one is a run: ``--overwrite`` replaces nothing else, and
``--resume`` continues only the run its ``run.json`` describes (options named in ``resumable`` may change).
``field.safetensors`` holds a field's weights with its config and its signal's layout as metadata, so that
:func:`load_field` alone re-creates the reconstruction (``mclnf render``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from mclnf import __version__
from mclnf.config import BenchConfig, ContinualConfig, FitConfig, FitManyConfig, MetaTestConfig, MetaTrainConfig, RunOptions
from mclnf.errors import MclnfError
from mclnf.fields import Field, FieldConfig
from mclnf.io import RECORDERS, atomic_path, is_temporary, write_text
from mclnf.learners import META_METHODS, MetaMethod, meta_method
from mclnf.options import flag_name, to_dict
from mclnf.signals import Layout
from mclnf.signals.base import Predict
from mclnf.signals.datasets import MetaDataset
from mclnf.tracking import LOG, TENSORBOARD, JsonLines, Sink, TensorBoard, Tracker

RUN_RECORD = "run.json"
REPLAY = "config.yaml"
NOT_REPLAYED = tuple(f.name for f in dataclasses.fields(RunOptions))  # where and how a run is written, not what it computes
CONFIGS = {"fit": FitConfig, "fit-many": FitManyConfig, "continual": ContinualConfig, "meta-train": MetaTrainConfig, "meta-test": MetaTestConfig, "cl-bench": BenchConfig}


def prepare_out(out: Path, resume: bool, overwrite: bool) -> Path:
    """Check that ``out`` can take a run, before anything is written: with ``resume`` it must hold one
    (``run.json``); otherwise it must be empty — temporary files of killed writes do not count — or,
    with ``overwrite``, hold a run, whose files (those its manifest lists, never others) are removed."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MclnfError(f"--out {out}: exists and is not a folder")
    if resume:
        if not (out / RUN_RECORD).is_file():
            raise MclnfError(f"--resume: {out} holds no mclnf run ({RUN_RECORD}) to resume")
        return out
    if out.is_dir() and any(not is_temporary(p.name) for p in out.iterdir()):
        if not overwrite:
            raise MclnfError(f"--out {out}: folder is not empty; pass --resume to continue its run or --overwrite to replace it")
        if not (out / RUN_RECORD).is_file():  # never touch a folder that is not a run
            raise MclnfError(f"--out {out}: folder holds no mclnf run ({RUN_RECORD}); --overwrite only replaces runs")
        remove_run(out)
    return out


def remove_run(out: Path) -> None:
    """Delete what the run in ``out`` wrote — the files and folders its ``run.json`` lists, temporary files of
    killed writes, ``run.json`` — and nothing else (a file the run did not write stays, and so does its folder)."""
    record = read_record(out)
    root = out.resolve()
    for rel in record.get("files", []):
        path = out / rel
        if path.resolve().is_relative_to(root) and not path.is_dir():
            path.unlink(missing_ok=True)
    dirs = [out / d for d in record.get("dirs", []) if (out / d).resolve().is_relative_to(root)]
    remove_temporaries([out, *dirs])
    (out / RUN_RECORD).unlink()
    for folder in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def remove_temporaries(folders: list[Path]) -> None:
    """Delete the temporary files killed writes left in ``folders`` (:func:`mclnf.io.is_temporary`)."""
    for folder in folders:
        for p in folder.glob(".*") if folder.is_dir() else ():
            if is_temporary(p.name):
                p.unlink(missing_ok=True)


def read_record(out: Path) -> dict:
    try:
        record = json.loads((out / RUN_RECORD).read_text())
        if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
            raise ValueError("no config")
        return record
    except (OSError, ValueError):
        raise MclnfError(f"{out / RUN_RECORD}: not a run record written by this version of mclnf") from None


class Run:
    """A run folder being written, as a context: ``run.json`` holds the command, the mclnf version, the
    resolved config and the manifest of every file and folder the run wrote (updated as each is written,
    through :func:`mclnf.io.atomic_path`), so ``--overwrite`` removes exactly those.

    On ``resume`` the config must be the one the run was started with (but the ``resumable`` options);
    the first option that differs is named. Temporary files of killed writes are removed on entry."""

    def __init__(self, out: Path, command: str, config: dict, resume: bool, resumable: tuple[str, ...] = (), replay: dict | None = None):
        self.out, self.root = Path(out), Path(out).resolve()
        replay = config if replay is None else replay  # the options config.yaml holds (default: config)
        config = json.loads(json.dumps(config))  # as run.json holds it (tuples as lists)
        self.files: set[str] = set()
        self.dirs: set[str] = set()
        if resume:
            was = read_record(self.out)
            if was.get("command") != command:
                raise MclnfError(f"--resume: {out} holds a {was.get('command')} run, not a {command} run")
            changed = [k for k, v in was["config"].items() if k not in resumable and config.get(k) != v]
            if changed:
                k = changed[0]
                raise MclnfError(f"--resume: {out} was run with {flag_name(k)} {was['config'][k]}, not {config.get(k)}")
            self.files, self.dirs = set(was.get("files", [])), set(was.get("dirs", []))
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MclnfError(f"--out {out}: cannot create the folder ({e.strerror or type(e).__name__})") from None
        remove_temporaries([self.out, *(self.out / d for d in self.dirs)])
        self.record = {"command": command, "mclnf": __version__, "config": config}
        self.save()
        write_text(self.out / REPLAY, replay_text(command, replay))
        self.written(self.out / REPLAY)

    def save(self) -> None:
        write_text(self.out / RUN_RECORD, json.dumps({**self.record, "files": sorted(self.files), "dirs": sorted(self.dirs)}, indent=1))

    def written(self, path: Path) -> None:
        """Add ``path`` to the manifest if it lies in the run folder (called for every file written)."""
        path = Path(path).resolve()
        if path.is_relative_to(self.root) and path != self.root / RUN_RECORD:
            rel = str(path.relative_to(self.root))
            if rel not in self.files:
                self.files.add(rel)
                self.save()

    def expect(self, files: list[Path], dirs: list[Path] = ()) -> None:
        """Add ``files`` and ``dirs`` in the run folder to the manifest at once, before they are written: the outputs
        that other processes of the run write (``torchrun``), which this one's :meth:`written` does not see."""
        self.files |= {str(Path(p).resolve().relative_to(self.root)) for p in files}
        self.dirs |= {str(Path(d).resolve().relative_to(self.root)) for d in dirs}
        self.save()

    def mkdir(self, path: Path) -> Path:
        """Create the folder ``path`` inside the run folder, as the run's."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        rel = str(path.resolve().relative_to(self.root))
        if rel not in self.dirs:
            self.dirs.add(rel)
            self.save()
        return path

    def __enter__(self) -> Run:
        RECORDERS.append(self.written)
        return self

    def __exit__(self, *exc) -> None:
        RECORDERS.remove(self.written)


def replay_text(command: str, config: dict) -> str:
    """``config.yaml``: the command's CLI options in ``config`` as a ``--config`` file, floats written exactly. Left
    out: the run options (:data:`NOT_REPLAYED`) and fields that are no CLI option (always at their default on
    the CLI); a dict-valued field is options given one by one (cl-bench's overrides)."""
    cls = CONFIGS.get(command)
    cli = {f.name for f in dataclasses.fields(cls) if f.metadata.get("cli")} if cls else set(config)
    options = {}
    for k, v in json.loads(json.dumps(config)).items():  # tuples as lists, paths as text
        if isinstance(v, dict):
            options.update(v)
        elif k in cli and k not in NOT_REPLAYED:
            options[k] = v
    head = f"# mclnf {command}: the resolved options of this run; `mclnf {command} --config config.yaml --out NEW` repeats it\n"
    return head + yaml.dump(options, Dumper=ReplayDumper, sort_keys=False, allow_unicode=True, width=1000)


class ReplayDumper(yaml.SafeDumper):
    """One option a line, a list on its line (``crop: [178, 178]``)."""


ReplayDumper.add_representer(list, lambda dumper, v: dumper.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def save_tensors(path: Path, tensors: dict[str, Tensor], meta: dict) -> None:
    """``tensors`` and ``meta`` in a safetensors file, written atomically. The metadata is one JSON value with
    sorted keys under the key ``mclnf`` (safetensors keeps metadata in a hash map, whose order varies from
    process to process), so identical runs write identical bytes."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata={"mclnf": json.dumps({"version": __version__, **meta}, sort_keys=True)})


def read_tensors(path: Path, what: str, build):
    """``build(tensors, meta)`` of the safetensors file ``path`` (meta JSON-decoded); any failure is one
    error naming the file and ``what`` it should have been."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["mclnf"])
        return build(load_file(str(path)), meta)
    except (SafetensorError, KeyError, ValueError, TypeError, RuntimeError, OSError, MclnfError) as e:
        raise MclnfError(f"{path}: not {what} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def save_field(path: Path, field: Field, layout: Layout) -> None:
    save_tensors(path, field.state_dict(), {"field": field.config.to_dict(), "layout": layout.to_dict()})


def load_field(path: Path) -> tuple[Field, Layout]:
    """A field and its signal's layout from ``field.safetensors``, or a run folder holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / "field.safetensors"
    if not path.is_file():
        raise MclnfError(f"{path}: no such file (a run folder must hold field.safetensors)")

    def build(state, meta):
        field = Field(FieldConfig.from_dict(meta["field"]))
        field.load_state_dict(state)
        return field, Layout.from_dict(meta["layout"])

    return read_tensors(path, "a field file written by mclnf", build)


def write_reconstruction(predict: Predict, layout: Layout, path: Path) -> Path:
    """The signal as ``predict`` (its samples → values: a field observed through the layout, a learner's
    prediction) reconstructs it, written atomically to ``path``."""
    native = layout.reconstruct(predict)
    with atomic_path(path) as tmp:
        layout.save(native, tmp)
    return path


@dataclass
class MetaRun:
    """A meta-learned initialization as ``init.safetensors`` holds it (written by ``mclnf meta-train``)."""

    path: Path
    theta: dict[str, Tensor]
    method: MetaMethod
    config: MetaTrainConfig
    test_files: list[str]
    base_field: FieldConfig  # the field before the method's module width

    @property
    def name(self) -> str:
        return self.config.method if self.config.meta_grad == "second-order" else f"{self.config.method} ({self.config.meta_grad})"


def save_init(path: Path, theta: dict[str, Tensor], method: MetaMethod, cfg: MetaTrainConfig, ds: MetaDataset, step: int) -> None:
    """θ₀ with everything :func:`load_init` needs as metadata: the method, its field, the layout, the config and the split."""
    meta = {"step": step, "field": method.field_config.to_dict(), "layout": ds.layout.to_dict(), "config": to_dict(cfg), "train_files": ds.train_files, "test_files": ds.test_files}
    save_tensors(path, theta, meta)


def load_init(path: Path, as_method: str | None = None) -> MetaRun:
    """The initialization in a meta-train run folder (or its ``init.safetensors``), checked against its own description;
    ``as_method``: that of another method that meta-trains alike (``maml-cl`` for a ``mol`` run: :attr:`MetaMethod.trains_as`)."""
    path = Path(path)
    file = path / "init.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise MclnfError(f"{path}: no init.safetensors (not a meta-train run folder)")

    def build(theta, meta):
        crop = None if meta["config"]["crop"] is None else tuple(meta["config"]["crop"])
        cfg = MetaTrainConfig(**{**meta["config"], "crop": crop, "device": "cpu"})  # θ₀ trained on a GPU loads on any machine: readers have their own --device
        return theta, cfg, Layout.from_dict(meta["layout"]), FieldConfig.from_dict(meta["field"]), meta["test_files"]

    theta, cfg, layout, field_cfg, test_files = read_tensors(file, "an initialization written by mclnf meta-train (of this version)", build)
    if as_method is not None:
        training = META_METHODS[cfg.method].meta_training()
        if as_method not in META_METHODS or META_METHODS[as_method].meta_training() != training:
            same = sorted(m for m, c in META_METHODS.items() if c.meta_training() == training)
            raise MclnfError(f"{path}:{as_method}: a {cfg.method} run's θ₀ can be tested as {' or '.join(same)} only (the methods that meta-train as it does)")
        cfg = dataclasses.replace(cfg, method=as_method)
    base = dataclasses.replace(field_cfg, width=cfg.width)
    method = meta_method(layout, base, cfg)
    if method.field_config != field_cfg or set(theta) != set(dict(method.template.named_parameters())):
        raise MclnfError(f"{file}: its parameters do not match its own field description")
    return MetaRun(path, theta, method, cfg, test_files, base)


def open_part_log(run: Run, cfg, name: str) -> Tracker:
    """The tracker of one part of a run (cl-bench: a method and seed; meta-test: a method): ``logs/<name>.log.jsonl`` and, with
    ``cfg.tensorboard``, ``tensorboard/<name>/``, both started afresh (an interrupted run left lines and events of the steps it takes again)."""
    folder = run.mkdir(run.out / "logs")
    sinks: list[Sink] = [JsonLines(folder / f"{name}.{LOG}", resume_step=0)]  # resumed from step 0: keeps no line
    if cfg.tensorboard:
        board = run.mkdir(run.mkdir(run.out / TENSORBOARD) / name)  # both the run's: --overwrite removes them
        for stale in board.glob("events.out.tfevents.*"):
            stale.unlink()
        sinks.append(TensorBoard(board))
    return Tracker(sinks, cfg.log_every)
