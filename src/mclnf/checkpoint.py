"""Files a run leaves behind, each written atomically (temporary file, then rename).

* ``field.safetensors``: the field's weights, with the field config and the signal's layout as
  metadata, so that :func:`load_field` alone re-creates the reconstruction (``mclnf render``).
* ``checkpoint.pt``: weights, optimizer state, step, time and curve, for ``--resume``.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from mclnf import __version__
from mclnf.errors import MclnfError
from mclnf.fields import Field, FieldConfig
from mclnf.signals import Layout


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's (or the writer's) 0600 would make outputs private
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_field(path: Path, field: Field, layout: Layout) -> None:
    meta = {"field": json.dumps(field.config.to_dict()), "layout": json.dumps(layout.to_dict()), "mclnf": __version__}
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in field.state_dict().items()}, str(tmp), metadata=meta)


def load_field(path: Path) -> tuple[Field, Layout]:
    """A field and its signal's layout from ``field.safetensors``, or a run folder holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / "field.safetensors"
    if not path.is_file():
        raise MclnfError(f"{path}: no such file (a run folder must hold field.safetensors)")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
        field = Field(FieldConfig.from_dict(json.loads(meta["field"])))
        field.load_state_dict(state)
        return field, Layout.from_dict(json.loads(meta["layout"]))
    except (SafetensorError, KeyError, ValueError, RuntimeError, OSError) as e:
        raise MclnfError(f"{path}: not a field file written by mclnf ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    if not Path(path).is_file():
        raise MclnfError(f"{path}: no checkpoint to resume from")
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:
        raise MclnfError(f"{path}: corrupt checkpoint ({type(e).__name__})") from None
