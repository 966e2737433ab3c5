"""Memory estimates checked before allocating, so an impossible size is refused in one line instead of failing
inside an allocation."""

from __future__ import annotations

import os

from mclnf.errors import MclnfError


def physical_memory() -> int:
    """Bytes of this machine's memory (0 where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check_fits(nbytes: float, what: str) -> None:
    """Refuse ``what`` (a phrase naming the option: "--width 10000000: a field of …") when it needs more
    bytes than the machine has."""
    total = physical_memory()
    if total and nbytes > total:
        raise MclnfError(f"{what} needs about {nbytes / 2**30:,.1f} GiB; this machine has {total / 2**30:,.1f} GiB")
