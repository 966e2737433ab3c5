"""Files written atomically (a temporary file beside the target, then a rename) and checkpoints.

The bottom layer of the house: signals, eval and the commands write through it, it imports nothing of
mclnf but its errors.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from mclnf.errors import MclnfError


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


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by :func:`save_checkpoint`, loaded with ``weights_only=True``."""
    if not Path(path).is_file():
        raise MclnfError(f"{path}: no checkpoint to resume from")
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:
        raise MclnfError(f"{path}: corrupt checkpoint ({type(e).__name__})") from None
