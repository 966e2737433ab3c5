"""``--optimizer auto``: Adam, the safe default, unless measurements on held-out images show something else wins —
and a guard that restarts with Adam when a choice other than the safe one blows up early.

**The rule.** For every (signal kind, activation) auto chooses exactly what ``--optimizer adam`` gets — Adam at its
default learning rate (1e-4; scenes 1e-3, :data:`mclnf.config.KIND_LR`) — except for the entries of
:data:`EXCEPTIONS`. An entry needs measurements on images that were *not* used to choose it (held-out images) on
which it ends above that default, every one of them, at the default budget (2000 steps). The table, in full:

- exception: image × relu-pe → adam 0.001 — held out, 256², 2000 steps: kodak/kodim01 26.65 vs 22.43 dB, kodim05
  23.28 vs 18.75 (and 25.70 vs 22.22 on div2k/00.png, where it was first seen)
  — and on the whole benchmark set (benchmarks/auto_check.py: 24 kodak + 16 div2k images, 256², 2000 steps, seed 0):
  median +4.53 dB over Adam 1e-4, min +2.59, worse on 0 of 40

Everything else: Adam at its default rate. No curvature-aware optimizer qualifies.

**The evidence** (docs/preconditioners.md). On the 40 photos (5000 steps, seed 0) the paper's ESGD ended below Adam
on 11–12 of 40 photos for each of sine, gaussian and wavelet fields (a first step that throws the field far from its
initialization, and a bad outcome that depends on the random draws). ``esgd-robust`` (ESGD with a learning-rate
warm-up) removes most of that, but not all: for wavelet fields it ended above Adam on every photo of the GPU study
at 2000 and 5000 steps, yet through ``mclnf fit`` (its own random draws) 1.50 dB below Adam on div2k/07 at 2000 steps
(benchmarks/auto_check.py --candidate wavelet esgd-robust 0.15: median +1.71 dB, worse on 1 of 40) — so it is not
chosen; for gaussian fields 4 of the 24 held-out kodak photos ended below Adam at 2000 steps; for sine fields it is
no faster than Adam; on relu-pe it diverged on 3 of 40. Audio, video, occupancy and scenes were not studied on a set
(occupancy: Adam 1e-4 had the best IoU at equal time on the bunny; lego: Adam 1e-3 ended 1.3 dB above ESGD,
docs/radiance.md).

**The guard.** When auto's choice is not the safe one (the exception above; any future entry), :class:`Guard`
watches the first :data:`GUARD_STEPS` training losses: a loss above :data:`GUARD_FACTOR` × the first one, or a
non-finite one, raises :class:`BlewUp`, and ``mclnf fit`` restarts from the initial weights with the safe choice
(:func:`mclnf.commands.fit.fit`), saying so in one line and recording it in ``metrics.json``. Runs that went on to
do well stayed below the factor (held-out single-photo runs: at most 1.02× the first loss in their first 100 steps;
the paper's ESGD's first step on div2k/00.png: about 3–6×, PSNR 13 → 5–8 dB); the blow-ups seen were 45× and
16,000×. An optimizer chosen by name is never guarded: its divergence stops the run (exit status 1, the last good
checkpoint kept).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SAFE = "adam"  # the default optimizer, at its default learning rate for the signal's kind
GUARD_STEPS = 100  # the guard watches steps 1 … GUARD_STEPS
GUARD_FACTOR = 10.0  # a loss above GUARD_FACTOR × the first one is a blow-up

# (kind, activation) → (optimizer, learning rate, the held-out measurement it rests on): the only pairs for which
# auto does not choose the safe default. An entry needs runs on images not used to choose it (docs/preconditioners.md).
EXCEPTIONS: dict[tuple[str, str], tuple[str, float, str]] = {
    ("image", "relu-pe"): ("adam", 1e-3, "Adam 1e-3 ended 4.2–4.5 dB above Adam 1e-4 on held-out photos (kodim01 26.65 vs 22.43 dB, kodim05 23.28 vs 18.75; docs/preconditioners.md)"),
}


def choose_optimizer(kind: str, activation: str) -> tuple[str, float | None, str]:
    """(optimizer, learning rate, reason) that ``--optimizer auto`` uses for a field of ``activation`` fitted to a
    ``kind`` signal: an :data:`EXCEPTIONS` entry, else the safe default (learning rate None: the optimizer's default
    for the kind, as ``--optimizer adam`` without ``--lr``)."""
    if (kind, activation) in EXCEPTIONS:
        return EXCEPTIONS[kind, activation]
    return SAFE, None, f"the safe default: no measurement on held-out signals shows another optimizer ending above Adam for {activation} {kind} fields (docs/preconditioners.md)"


class BlewUp(Exception):
    """The guarded optimizer's loss rose above :data:`GUARD_FACTOR` × its first value, or became non-finite, within
    the first :data:`GUARD_STEPS` steps (``what``: ``loss``, or ``parameters`` when they became non-finite)."""

    def __init__(self, optimizer: str, step: int, first: float | None, loss: float, what: str = "loss"):
        self.optimizer, self.step, self.first, self.loss, self.what = optimizer, step, first, loss, what
        if what == "loss":
            was = "" if first is None else f"{first:.4g} → "
            super().__init__(f"{optimizer} blew up at step {step} (loss {was}{loss:.4g})")
        else:
            super().__init__(f"{optimizer} blew up at step {step} ({what} became non-finite)")

    def to_dict(self) -> dict:
        return {"optimizer": self.optimizer, "step": self.step, "first_loss": self.first, "loss": self.loss if math.isfinite(self.loss) else str(self.loss), "what": self.what}


@dataclass
class Guard:
    """Watches the training losses of steps 1 … ``steps`` (call it with each step's loss): a loss above ``factor``
    × the first one, or a non-finite one, raises :class:`BlewUp` naming ``optimizer``. ``first``: the loss of step 1
    (kept in the run's checkpoint, so a resumed run is watched against it)."""

    optimizer: str
    steps: int = GUARD_STEPS
    factor: float = GUARD_FACTOR
    first: float | None = None

    def __call__(self, step: int, loss: float) -> None:
        if step > self.steps:
            return
        if self.first is None and math.isfinite(loss):
            self.first = loss
        if not math.isfinite(loss) or loss > self.factor * self.first:
            raise BlewUp(self.optimizer, step, self.first, loss)
