"""Shared test helpers: the real-data pack beside the repository (../shared/data, or $MCLNF_DATA)."""

import os
from pathlib import Path

import pytest

DATA = Path(os.environ.get("MCLNF_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def pytest_configure(config):
    if not (DATA / "README.md").is_file():
        raise pytest.UsageError(f"the test data pack is missing: {DATA} (put ../shared beside the repository or set MCLNF_DATA)")
