"""Shared test helpers: the real-data pack beside the repository (../shared/data)."""

from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
