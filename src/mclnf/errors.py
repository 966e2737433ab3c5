"""Errors that mclnf raises for the user, not for the programmer."""


class MclnfError(Exception):
    """A problem with the user's input or options; the CLI prints it as one line and exits 2."""


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, step: int, loss: float, last_good_step: int | None, what: str = "loss", where: str = "", kept: str | None = None, hint: str = "try a lower --lr"):
        self.step, self.loss, self.last_good_step, self.what = step, loss, last_good_step, what
        if kept is None:
            kept = f"the last good checkpoint (step {last_good_step}) is kept" if last_good_step else "no checkpoint was written yet"
        became = f"loss became {loss}" if what == "loss" else f"{what} became non-finite"
        super().__init__(f"training diverged{where}: {became} at step {step}; {kept}; {hint}")
