"""Evaluation of fields and the figures made from run records."""
