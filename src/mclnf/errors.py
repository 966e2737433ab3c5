"""Errors that mclnf raises for the user, not for the programmer."""


class MclnfError(Exception):
    """A problem with the user's input or options; the CLI prints it as one line and exits 2."""


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, step: int, loss: float, last_good_step: int | None):
        self.step, self.loss, self.last_good_step = step, loss, last_good_step
        kept = f"the last good checkpoint (step {last_good_step}) is kept" if last_good_step else "no checkpoint was written yet"
        super().__init__(f"training diverged: loss became {loss} at step {step}; lower --lr. {kept}")
