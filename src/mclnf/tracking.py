"""What a training run reports while it trains, and where it goes: ``log.jsonl`` always, TensorBoard with ``--tensorboard``.

A :class:`Tracker` takes the training loss with the learning rate and the norms of the gradient and of
the update (at the logged steps: :meth:`Tracker.logs`), and the metrics and reconstructions of every
evaluation, and hands them to its sinks — anything with the small :class:`Sink` interface:

- :class:`JsonLines` writes ``log.jsonl``, one JSON object a line:
  ``{"event": "train", "step", "loss", "lr", "grad_norm", "update_norm", "time_s"}`` at the logged steps and
  ``{"event": "eval", "step", "time_s", <metric>: value, …}`` at every evaluation (``time_s``: training seconds);
- :class:`TensorBoard` writes scalars ``train/<name>`` and ``eval/<metric>``, the reconstruction as an
  image (``reconstruction``; a video's first, middle and last frames side by side, a scene's first held-out
  views) or as audio, and the ground truth (``truth``) at the first evaluation of each session.

Logged steps: every ``log_every``-th, or by default every step up to step 999, every 10th up to 9,999,
every 100th up to 99,999, … — about 900 lines a decade, so a log stays small however long the run.
The rule depends on the step alone, so a resumed run logs what an uninterrupted one logs.

Resuming from a checkpoint of step S (:func:`open_tracker`): ``log.jsonl`` keeps its lines of steps
up to S and drops the rest (a killed run wrote on past its checkpoint), and TensorBoard purges the
events after S, so the resumed run's log continues the interrupted one exactly. The commands flush the
tracker before every checkpoint, so the log always holds every step its checkpoint has seen.
Every file is recorded in the run's manifest (:data:`mclnf.io.RECORDERS`): ``--overwrite`` removes it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol

import numpy as np
import torch
from torch import Tensor

from mclnf.io import RECORDERS, atomic_path

LOG = "log.jsonl"
TENSORBOARD = "tensorboard"


@dataclass
class Media:
    """A picture (``data`` H × W × C in [0, 1]) or a sound (``data`` mono samples in [-1, 1] at ``sample_rate``) to log."""

    name: str
    data: np.ndarray
    sample_rate: int | None = None  # audio


class Sink(Protocol):
    """Where a tracker's reports go. ``event`` is ``train`` or ``eval``; ``values`` the numbers to plot
    (None: undefined, skipped by plots); ``info`` what places them (``time_s``, a continual run's ``task``)."""

    wants_media: bool

    def scalars(self, event: str, step: int, values: dict[str, float | None], info: dict[str, Any]) -> None: ...

    def media(self, step: int, media: list[Media]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def record(path: Path) -> None:
    """Tell the run being written (its manifest) of ``path``."""
    for r in RECORDERS:
        r(Path(path))


class JsonLines:
    """``log.jsonl``: one JSON object per report, appended; on resume from step ``resume_step`` (None: a new
    run) the lines of later steps — and a line a killed write cut short — are dropped first."""

    wants_media = False

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = Path(path)
        if resume_step is not None and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines() if (step := _step_of(line)) is not None and step <= resume_step]
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(f"{line}\n" for line in kept))
        self.file = open(self.path, "a")  # noqa: SIM115 (held open for the whole run)
        record(self.path)

    def scalars(self, event: str, step: int, values: dict[str, float | None], info: dict[str, Any]) -> None:
        self.file.write(json.dumps({"event": event, "step": step, **info, **values}) + "\n")

    def media(self, step: int, media: list[Media]) -> None:
        pass

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _step_of(line: str) -> int | None:
    try:
        step = json.loads(line)["step"]
        return step if isinstance(step, int) else None
    except (ValueError, KeyError, TypeError):
        return None


def read_log(path: Path) -> list[dict]:
    """The reports in a ``log.jsonl`` (or the run folder holding it)."""
    path = Path(path)
    path = path / LOG if path.is_dir() else path
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class TensorBoard:
    """A TensorBoard event file in ``folder``; on resume from step ``resume_step`` the events of later steps are purged."""

    wants_media = True

    def __init__(self, folder: Path, resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter  # imported only when asked for: it takes a second

        self.folder = Path(folder)
        self.writer = SummaryWriter(str(self.folder), purge_step=None if resume_step is None else resume_step + 1)
        self.record()

    def record(self) -> None:
        for p in self.folder.glob("events.out.tfevents.*"):
            record(p)

    def scalars(self, event: str, step: int, values: dict[str, float | None], info: dict[str, Any]) -> None:
        for k, v in values.items():
            if v is not None:
                self.writer.add_scalar(f"{event}/{k}", v, step)

    def media(self, step: int, media: list[Media]) -> None:
        for m in media:
            if m.sample_rate is None:
                self.writer.add_image(m.name, m.data, step, dataformats="HWC")
            else:
                self.writer.add_audio(m.name, torch.from_numpy(m.data), step, sample_rate=m.sample_rate)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
        self.record()


def default_log_every(step: int) -> int:
    """Steps between logged steps around ``step``: 1 below 1,000, 10 below 10,000, 100 below 100,000, …"""
    return 10 ** max(0, len(str(step)) - 3)


class Tracker:
    """The reports of one training run, to every sink. :meth:`at` gives a view whose steps, training
    seconds and ``info`` are shifted (a continual run's tasks: one log, steps counted over the stream)."""

    def __init__(self, sinks: Iterable[Sink], log_every: int | None = None, *, offset: int = 0, seconds: float = 0.0, info: dict | None = None):
        self.sinks, self.log_every = list(sinks), log_every
        self.offset, self.seconds, self.info = offset, seconds, dict(info or {})
        self.shown_truth = [False]  # shared by the views

    def at(self, offset: int, seconds: float = 0.0, **info) -> Tracker:
        view = Tracker(self.sinks, self.log_every, offset=offset, seconds=seconds, info={**self.info, **info})
        view.shown_truth = self.shown_truth
        return view

    def logs(self, step: int) -> bool:
        """Whether training step ``step`` is logged."""
        step += self.offset
        return step % (self.log_every or default_log_every(step)) == 0

    def train_step(self, step: int, loss: float, seconds: float, **stats: float | None) -> None:
        """The training loss of step ``step`` (and ``lr``, ``grad_norm``, ``update_norm``, …), ``seconds`` of training so far."""
        for sink in self.sinks:
            sink.scalars("train", step + self.offset, {"loss": loss, **stats}, {**self.info, "time_s": self.seconds + seconds})

    def evaluation(self, step: int, metrics: dict[str, float | None], seconds: float, *, layout=None, pred: Tensor | None = None, truth: Tensor | None = None) -> None:
        """The metrics of an evaluation at step ``step``, and the reconstruction ``pred`` (and the ground truth,
        the first time) as media of ``layout``'s kind, then a flush: what a checkpoint of this step has seen is on disk."""
        step += self.offset
        for sink in self.sinks:
            sink.scalars("eval", step, metrics, {**self.info, "time_s": self.seconds + seconds})
        if layout is not None and pred is not None and any(s.wants_media for s in self.sinks):
            media = previews(layout, pred, "reconstruction")
            if truth is not None and not self.shown_truth[0]:
                media += previews(layout, truth, "truth")
                self.shown_truth[0] = True
            for sink in self.sinks:
                if sink.wants_media:
                    sink.media(step, media)
        self.flush()

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_tracker(out: Path, resume_step: int | None, log_every: int | None = None, tensorboard: Path | None = None) -> Tracker:
    """The tracker of the run in ``out``: ``out/log.jsonl`` and, given its folder (created as the run's), TensorBoard.
    ``resume_step``: the step of the checkpoint a resumed run continues from (0: none, it starts afresh); None for a new run."""
    sinks: list[Sink] = [JsonLines(Path(out) / LOG, resume_step)]
    if tensorboard is not None:
        sinks.append(TensorBoard(tensorboard, resume_step))
    return Tracker(sinks, log_every)


def norm(tensors: Iterable[Tensor]) -> float:
    """The 2-norm of ``tensors`` taken together."""
    squares = [t.detach().float().square().sum() for t in tensors if t is not None]
    return math.sqrt(float(torch.stack(squares).sum())) if squares else 0.0


def previews(layout, values: Tensor, name: str) -> list[Media]:
    """The values of a signal of ``layout`` at its evaluation samples as media: an image, a video's first, middle and
    last frames side by side, a scene's first four held-out views side by side, a mono waveform; nothing for a mesh
    (its evaluation points are scattered)."""
    values = values.detach().float().cpu()
    if layout.kind == "image":
        picture = layout.to_array(values)
    elif layout.kind == "video":
        frames = layout.to_array(values)
        picture = torch.cat([frames[i] for i in sorted({0, len(frames) // 2, len(frames) - 1})], 1)
    elif layout.kind == "radiance":
        picture = torch.cat(list(layout.as_views(values)[:4].permute(0, 2, 3, 1)), 1)
    elif layout.kind == "audio":
        return [Media(name, values.mean(1).clamp(-1, 1).numpy(), sample_rate=layout.sample_rate)]
    else:
        return []
    return [Media(name, picture.clamp(0, 1).numpy())]
