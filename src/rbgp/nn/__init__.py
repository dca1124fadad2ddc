"""Sparse layers, `sparsify(model)`, `densify(model)` and loading sparsified models."""

from rbgp.nn.densify import densify
from rbgp.nn.experts import SplitExperts
from rbgp.nn.masked import MaskedConv2d, MaskedLinear
from rbgp.nn.oneshot import prune_oneshot
from rbgp.nn.pretrained import from_pretrained, load_state
from rbgp.nn.rbgp_layers import RBGPConv1d, RBGPConv2d, RBGPLinear
from rbgp.nn.sparsify import (
    SPARSE_TYPES,
    LayerReport,
    SparsifyReport,
    convertible_layers,
    count_parameters,
    sparsify,
)
from rbgp.nn.stored import StoredLinear, store_values_

__all__ = [
    "RBGPLinear",
    "RBGPConv2d",
    "RBGPConv1d",
    "SplitExperts",
    "MaskedLinear",
    "MaskedConv2d",
    "sparsify",
    "densify",
    "SparsifyReport",
    "LayerReport",
    "SPARSE_TYPES",
    "count_parameters",
    "convertible_layers",
    "from_pretrained",
    "load_state",
    "store_values_",
    "StoredLinear",
    "prune_oneshot",
]
