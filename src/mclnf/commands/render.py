"""``mclnf render``: re-create a fitted field's reconstruction from its ``field.safetensors``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from mclnf.errors import MclnfError
from mclnf.options import option
from mclnf.runs import load_field, write_reconstruction


@dataclass(kw_only=True)
class RenderConfig:
    """render"""

    run: Path = option(dataclasses.MISSING, "a run folder (or its field.safetensors)", positional=True)
    out: Path | None = option(None, "output file (default: RUN/render.<png|wav|mp4|ply>)")
    resolution: int | None = option(None, "occupancy: marching-cubes grid (default: the run's)")


def render(cfg: RenderConfig) -> Path:
    """Write the reconstruction of the field in ``cfg.run``; returns its path."""
    field, layout = load_field(cfg.run)
    if cfg.resolution is not None:
        if not hasattr(layout, "resolution"):
            raise MclnfError(f"--resolution: does not apply to {layout.kind} fields")
        layout = dataclasses.replace(layout, resolution=cfg.resolution)
    run_dir = cfg.run if cfg.run.is_dir() else cfg.run.parent
    if cfg.out is not None:
        if cfg.out.suffix.lower() != layout.suffix:
            raise MclnfError(f"--out {cfg.out}: a {layout.kind} field renders to {layout.suffix}, not {cfg.out.suffix or '(no suffix)'}")
        if not cfg.out.parent.is_dir():
            raise MclnfError(f"--out {cfg.out}: no such folder {cfg.out.parent}")
    return write_reconstruction(partial(layout.observe, field), layout, cfg.out or run_dir / f"render{layout.suffix}")
