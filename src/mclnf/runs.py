"""Run folders, written once for every command: the output folder, ``run.json``, overwrite and resume checks,
the field file, the meta-learned initialization file and the reconstruction.

A run folder holds ``run.json`` (the command, the mclnf version and the resolved config), written when
the run starts. Only a folder holding one is a run: ``--overwrite`` replaces nothing else, and
``--resume`` continues only the run its ``run.json`` describes (options named in ``resumable`` may change).
``field.safetensors`` holds a field's weights with its config and its signal's layout as metadata, so that
:func:`load_field` alone re-creates the reconstruction (``mclnf render``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from mclnf import __version__
from mclnf.config import MetaTrainConfig
from mclnf.errors import MclnfError
from mclnf.fields import Field, FieldConfig
from mclnf.io import atomic_path, write_text
from mclnf.learners import MetaMethod, meta_method
from mclnf.options import flag_name, to_dict
from mclnf.signals import Layout
from mclnf.signals.base import Predict
from mclnf.signals.datasets import MetaDataset

RUN_RECORD = "run.json"


def prepare_out(out: Path, resume: bool, overwrite: bool, resume_file: str = "checkpoint.pt") -> Path:
    """Check that ``out`` can take a run: resumable (it holds ``resume_file``) or empty; ``overwrite``
    empties it, but only if it holds a run (``run.json``). Nothing is created here."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MclnfError(f"--out {out}: exists and is not a folder")
    if resume:
        if not (out / resume_file).is_file():
            raise MclnfError(f"--resume: {out} holds no {resume_file} to resume from")
    elif out.exists() and any(out.iterdir()):
        if not overwrite:
            raise MclnfError(f"--out {out}: folder is not empty; pass --resume to continue its run or --overwrite to replace it")
        if not (out / RUN_RECORD).is_file():  # never delete a folder that is not a run
            raise MclnfError(f"--out {out}: folder holds no mclnf run ({RUN_RECORD}); --overwrite only replaces runs")
        shutil.rmtree(out)
    return out


def start_run(out: Path, command: str, config: dict, resume: bool, resumable: tuple[str, ...]) -> None:
    """Create ``out`` and write its ``run.json``; on ``resume``, first check that ``config`` is the
    one the run was started with (but the ``resumable`` options), naming the first option that differs."""
    config = json.loads(json.dumps(config))  # as run.json holds it (tuples as lists)
    if resume:
        try:
            was = json.loads((out / RUN_RECORD).read_text())
        except (OSError, ValueError):
            raise MclnfError(f"--resume: {out} holds no readable {RUN_RECORD}; it was not started by this version of mclnf") from None
        if was.get("command") != command:
            raise MclnfError(f"--resume: {out} holds a {was.get('command')} run, not a {command} run")
        changed = [k for k, v in was["config"].items() if k not in resumable and config.get(k) != v]
        if changed:
            k = changed[0]
            raise MclnfError(f"--resume: {out} was run with {flag_name(k)} {was['config'][k]}, not {config.get(k)}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MclnfError(f"--out {out}: cannot create the folder ({e.strerror or type(e).__name__})") from None
    write_text(out / RUN_RECORD, json.dumps({"command": command, "mclnf": __version__, "config": config}, indent=1))


def save_tensors(path: Path, tensors: dict[str, Tensor], meta: dict) -> None:
    """``tensors`` and ``meta`` (values JSON-encoded) in a safetensors file, written atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata={"mclnf": __version__, **{k: json.dumps(v) for k, v in meta.items()}})


def read_tensors(path: Path, what: str, build):
    """``build(tensors, meta)`` of the safetensors file ``path`` (meta JSON-decoded); any failure is one
    error naming the file and ``what`` it should have been."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items() if k != "mclnf"}
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


def load_init(path: Path) -> MetaRun:
    """The initialization in a meta-train run folder (or its ``init.safetensors``), checked against its own description."""
    path = Path(path)
    file = path / "init.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise MclnfError(f"{path}: no init.safetensors (not a meta-train run folder)")

    def build(theta, meta):
        cfg = MetaTrainConfig(**{**meta["config"], "crop": None if meta["config"]["crop"] is None else tuple(meta["config"]["crop"])})
        return theta, cfg, Layout.from_dict(meta["layout"]), FieldConfig.from_dict(meta["field"]), meta["test_files"]

    theta, cfg, layout, field_cfg, test_files = read_tensors(file, "an initialization written by mclnf meta-train (of this version)", build)
    base = dataclasses.replace(field_cfg, width=cfg.width)
    method = meta_method(layout, base, cfg)
    if method.field_config != field_cfg or set(theta) != set(dict(method.template.named_parameters())):
        raise MclnfError(f"{file}: its parameters do not match its own field description")
    return MetaRun(path, theta, method, cfg, test_files, base)
