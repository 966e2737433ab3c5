"""mclnf: learn neural fields fast and continually."""

__version__ = "0.1.0"
