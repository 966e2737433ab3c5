"""Shared test helpers: the real-data pack beside the repository (../shared/data, or $MCLNF_DATA)."""

import os
from pathlib import Path

import pytest

from mclnf.cli import main

DATA = Path(os.environ.get("MCLNF_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def pytest_configure(config):
    if not (DATA / "README.md").is_file():
        raise pytest.UsageError(f"the test data pack is missing: {DATA} (put ../shared beside the repository or set MCLNF_DATA)")


def cli(*args) -> int:
    """``mclnf ARGS`` in this process; its exit status."""
    try:
        return main([str(a) for a in args])
    except SystemExit as e:
        return e.code


def one_line(err: str) -> str:
    """The single line a user error prints (no traceback)."""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    return lines[0]
