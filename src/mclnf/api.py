"""The Python API: :func:`fit` a field to a signal, :func:`load` one, and the :class:`Field` that both return.

Built on the commands' own machinery: :func:`fit` *is* ``mclnf fit`` (the same config, training loop,
run folder and outputs), :meth:`Field.train` is its ``--resume`` with more steps, :func:`load` and
:meth:`Field.save` are the run folder's ``field.safetensors``. Errors are :class:`~mclnf.errors.MclnfError`
naming the option as its flag (``--steps 0: must be a positive integer``). See ``docs/api.md``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import weakref
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from torch import Tensor

from mclnf.commands import fit as fit_command
from mclnf.config import FitConfig, load_configured_signal
from mclnf.errors import MclnfError
from mclnf.fields import Field as Network
from mclnf.options import check_positive_int, parse_options
from mclnf.runs import RUN_RECORD, load_field, read_record, save_field, write_reconstruction
from mclnf.runtime import check_device
from mclnf.signals import Layout, Signal

FIT_OPTIONS = [(FitConfig, ())]


class Field:
    """A neural field fitted to a signal, as :func:`fit` and :func:`load` return it.

    Attributes: ``network`` (the :class:`torch.nn.Module`, :class:`mclnf.fields.Field`: coordinates
    (N, ``layout.in_dim``) in [-1, 1] → values (N, ``layout.out_dim``)), ``layout`` (how its values
    make the signal's own form), ``config`` (the resolved :class:`~mclnf.config.FitConfig` of its run;
    ``None`` for a field file alone), ``run`` (the run folder, or ``None``) and ``record`` (the run's
    ``metrics.json``; ``{}`` without one)."""

    def __init__(self, network: Network, layout: Layout, config: FitConfig | None = None, run: Path | None = None, record: dict | None = None):
        self.network, self.layout, self.config, self.run = network, layout, config, run
        self.record = record or {}
        self._signal: Signal | None = None

    @property
    def kind(self) -> str:
        """The kind of signal: image, audio, video, occupancy or radiance."""
        return self.layout.kind

    @property
    def params(self) -> int:
        """The number of parameters of the network."""
        return self.network.num_params

    @property
    def steps(self) -> int | None:
        """The training steps taken (``None`` for a field file alone)."""
        return self.config.steps if self.config else None

    @property
    def metrics(self) -> dict[str, float | None]:
        """The run's final metrics as training recorded them (the loss, then the kind's metrics); ``{}`` without a run."""
        return dict(self.record.get("final", {}))

    @property
    def signal(self) -> Signal:
        """The signal the field was fitted to, loaded (once) with its run's options."""
        if self._signal is None:
            if self.config is None:
                raise MclnfError("this field has no signal: it was loaded from a field file alone (load its run folder)")
            self._signal = load_configured_signal(self.config)
        return self._signal

    def evaluate(self) -> dict[str, float | None]:
        """The field's metrics on its signal (PSNR and SSIM for images and video, PSNR and PESQ for audio,
        IoU and accuracy for meshes, held-out views' PSNR and SSIM for scenes); ``None`` where a metric is undefined."""
        signal = self.signal
        return signal.layout.metrics(signal.layout.predict(self.network, signal.eval_coords), signal.eval_values)  # as mclnf fit's evaluations

    def render(self, path: str | os.PathLike | None = None, *, resolution: int | None = None) -> Any:
        """The reconstruction: without ``path``, as an array (images (H, W, C), audio (N, C), video (T, H, W, C) in the
        signal's value range; scenes: the held-out views (V, H, W, 3)) or, for meshes, a :class:`trimesh.Trimesh`;
        with ``path``, written there in the signal's own format (``.png``, ``.wav``, ``.mp4``, ``.ply``) and its path
        returned. ``resolution``: the marching-cubes grid of a mesh (default: its run's)."""
        layout = self.layout
        if resolution is not None:
            if not hasattr(layout, "resolution"):
                raise MclnfError(f"resolution: does not apply to {layout.kind} fields")
            check_positive_int(SimpleNamespace(resolution=resolution), "resolution")
            layout = dataclasses.replace(layout, resolution=resolution)
        predict = partial(layout.observe, self.network)
        if path is None:
            native = layout.reconstruct(predict)
            return native.numpy() if isinstance(native, Tensor) else native
        path = Path(path)
        if path.suffix.lower() != layout.suffix:
            raise MclnfError(f"{path}: a {layout.kind} field renders to {layout.suffix}, not {path.suffix or '(no suffix)'}")
        return write_reconstruction(predict, layout, path)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the field (weights, architecture and signal layout) to a ``.safetensors`` file, as a run's
        ``field.safetensors``: :func:`load` and ``mclnf render`` read it. Returns the path."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise MclnfError(f"{path}: a field is saved as a .safetensors file")
        save_field(path, self.network, self.layout)
        return path

    def train(self, steps: int) -> Field:
        """Train ``steps`` more steps in the field's run folder, continuing its optimizer where it stopped: the result is
        bit-exactly that of a run started with the total number of steps (``mclnf fit --resume --steps TOTAL``). Returns the field."""
        check_positive_int(SimpleNamespace(steps=steps), "steps")
        if self.config is None or self.run is None or not (self.run / "checkpoint.pt").is_file():
            raise MclnfError("this field has no run to continue (a field file alone has no optimizer state); fit it with mclnf.fit")
        fit_command.fit(dataclasses.replace(self.config, steps=self.config.steps + steps, resume=True, overwrite=False, out=self.run))
        trained = load(self.run)
        self.network, self.layout, self.config, self.record = trained.network, trained.layout, trained.config, trained.record
        return self

    def __repr__(self) -> str:
        quality = "  ".join(f"{k} {v:.4g}" for k, v in self.metrics.items() if isinstance(v, float) and k != "loss")
        where = f", run {self.run}" if self.run else ""
        steps = f", {self.steps} steps" if self.steps else ""
        return f"<mclnf.Field: {self.kind}, {self.params:,} parameters{steps}{', ' + quality if quality else ''}{where}>"


def fit_config(values: dict, source: str) -> FitConfig:
    """A :class:`FitConfig` from option names → values (the API's keywords, a run record's config)."""
    return FitConfig(**parse_options(values, FIT_OPTIONS, "fit", source))


def fit(signal: str | os.PathLike, **options) -> Field:
    """Fit a field to ``signal`` exactly as ``mclnf fit SIGNAL`` does, and return it.

    ``signal``: an image file or a scikit-image name (``"camera"``), an audio clip, a video, a mesh or a scene
    of posed images. ``options``: any option of ``mclnf fit`` by its name (``steps=500``, ``activation="gaussian"``,
    ``crop=(178, 178)``, ``progress=False`` or ``quiet=True``; see ``mclnf fit --help``). ``out``: the run folder
    that receives every output of the command (default: a temporary folder, removed with the returned field)."""
    cfg = fit_config({**options, "signal": signal}, "mclnf.fit")
    temporary = None
    if cfg.out is None:
        temporary = Path(tempfile.mkdtemp(prefix="mclnf-fit-"))
        cfg = dataclasses.replace(cfg, out=temporary)
    try:
        fit_command.fit(cfg)
        field = load(cfg.out)
    except BaseException:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    if temporary is not None:
        weakref.finalize(field, shutil.rmtree, temporary, ignore_errors=True)
    return field


def load(path: str | os.PathLike) -> Field:
    """The field in a ``mclnf fit`` run folder (with its options and metrics: it can :meth:`~Field.evaluate` and
    :meth:`~Field.train`) or in a ``.safetensors`` field file (:meth:`~Field.render` only, unless the file is its run's)."""
    path = Path(path)
    network, layout = load_field(path)
    run = path if path.is_dir() else path.parent
    if (path.is_file() and path.name != "field.safetensors") or not (run / RUN_RECORD).is_file() or read_record(run).get("command") != "fit":
        return Field(network, layout)
    metrics = run / "metrics.json"
    record = json.loads(metrics.read_text()) if metrics.is_file() else {}
    config = read_record(run)["config"]
    try:
        check_device(config.get("device", "cpu"))
    except MclnfError:  # fitted on a GPU this machine lacks: evaluated and trained further on the CPU
        config = {**config, "device": "cpu"}
    return Field(network, layout, fit_config(config, str(run / RUN_RECORD)), run, record)
