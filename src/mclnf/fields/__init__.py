"""Coordinate networks: activations with their initializations, encodings (positional, multiresolution hash grid), the MLP field."""

from mclnf.fields.activations import ACTIVATIONS
from mclnf.fields.encoding import PositionalEncoding
from mclnf.fields.hashgrid import HashGridEncoding
from mclnf.fields.mlp import ENCODINGS, HASH_OPTIONS, Field, FieldConfig

__all__ = ["ACTIVATIONS", "ENCODINGS", "HASH_OPTIONS", "Field", "FieldConfig", "HashGridEncoding", "PositionalEncoding"]
