"""Files written atomically (a temporary file beside the target, then a rename) and checkpoints.

The bottom layer of the house: signals, eval and the commands write through it, it imports nothing of
mclnf but its errors.
"""

from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

from mclnf.errors import MclnfError

RECORDERS: list[Callable[[Path], None]] = []  # told of every file written here (the run folders being written: mclnf.runs.Run)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    except OSError as e:
        raise MclnfError(f"{path}: cannot write here ({e.strerror or type(e).__name__})") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's (or the writer's) 0600 would make outputs private
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for record in RECORDERS:
        record(path)


def is_temporary(name: str) -> bool:
    """Whether ``name`` is one of :func:`atomic_path`'s temporary files (left behind by a killed write)."""
    m = re.fullmatch(r"\.(?P<base>.+)\.[a-z0-9_]{8}(?P<suffix>\.[^.]*)?", name)
    return m is not None and m["base"].endswith(m["suffix"] or "")


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, keys: tuple[str, ...] = ()) -> dict:
    """A checkpoint written by :func:`save_checkpoint`, loaded onto the CPU with ``weights_only=True``, holding ``keys``."""
    if not Path(path).is_file():
        raise MclnfError(f"{path}: no checkpoint to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # the command moves it to its --device
    except Exception as e:
        raise MclnfError(f"{path}: corrupt checkpoint ({type(e).__name__})") from None
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise MclnfError(f"{path}: not a checkpoint of this run (it has no {missing[0]!r}); remove it or start a new --out")
    return state
