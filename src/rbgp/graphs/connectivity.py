"""End-to-end connectivity of a stack of sparse layers (input-output path coverage).

Per-layer expansion does not tell whether a network mixes: aligned block structure across layers
never does (research notes 4.3). This measures the composed reachability directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np

from .bipartite import BipartiteGraph
from .product import ProductGraph

Layer = Union[np.ndarray, BipartiteGraph, ProductGraph]


def _as_mask(layer: Layer, pos: int) -> np.ndarray:
    if isinstance(layer, (BipartiteGraph, ProductGraph)):
        return layer.biadjacency().astype(np.float32)
    arr = np.asarray(layer)
    if arr.ndim != 2:
        raise ValueError(f"layer {pos} must be a 2-D (out, in) mask, got shape {arr.shape}")
    return (arr != 0).astype(np.float32)


def path_coverage(layers: Sequence[Layer]) -> float:
    """Fraction of (input, output) pairs of the whole stack joined by at least one path.

    `layers` are in forward order, each an (out, in) 0/1 mask or graph; layer k's `in` must equal
    layer k-1's `out`. Reachability is propagated with float32 matrix products, re-binarised after
    every layer so counts never exceed the layer width (exact in float32, no overflow).
    """
    if len(layers) == 0:
        raise ValueError("path_coverage needs at least one layer, got none")
    reach = _as_mask(layers[0], 0)  # (out_k, in_0): which outputs of layer k each input reaches
    prev_shape = reach.shape
    for pos in range(1, len(layers)):
        mask = _as_mask(layers[pos], pos)
        if mask.shape[1] != prev_shape[0]:
            raise ValueError(
                f"layer {pos} has shape {mask.shape} (out, in) but layer {pos - 1} has shape "
                f"{prev_shape}: layer {pos} must take {prev_shape[0]} inputs"
            )
        prev_shape = mask.shape
        if reach.size and reach.min() > 0:  # everything reached: only dead outputs can miss
            alive = mask.max(axis=1, initial=0) > 0
            reach = np.repeat(alive[:, None], reach.shape[1], axis=1).astype(np.float32)
        else:
            reach = ((mask @ reach) > 0).astype(np.float32)
    return float(reach.mean()) if reach.size else 0.0
