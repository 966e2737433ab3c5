"""Coordinate networks: activations with their initializations, positional encoding, the MLP field."""

from mclnf.fields.activations import ACTIVATIONS
from mclnf.fields.encoding import PositionalEncoding
from mclnf.fields.mlp import Field, FieldConfig

__all__ = ["ACTIVATIONS", "Field", "FieldConfig", "PositionalEncoding"]
