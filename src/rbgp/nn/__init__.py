"""Sparse layers and `sparsify(model)`."""

from rbgp.nn.masked import MaskedConv2d, MaskedLinear
from rbgp.nn.rbgp_layers import RBGPConv2d, RBGPLinear
from rbgp.nn.sparsify import SPARSE_TYPES, LayerReport, SparsifyReport, sparsify

__all__ = ["RBGPLinear", "RBGPConv2d", "MaskedLinear", "MaskedConv2d", "sparsify", "SparsifyReport",
           "LayerReport", "SPARSE_TYPES"]
