"""Compute for grouped-sparse (RBGP) weights: one weight object (`SparseWeight`), two entry points
(`rbgp_linear`, `rbgp_conv2d`) that own all dispatch, the reference, the torch paths, the Triton kernels.

The Triton modules (`triton_kernels`, `triton_launch`, `triton_ops`) are imported lazily, on first use of
backend "triton" or of `rbgp.ops.triton_linear`: importing rbgp never imports triton.
"""

from rbgp.ops.conv import ConvArgs, plan_conv, rbgp_conv2d
from rbgp.ops.dispatch import BACKENDS, HAS_TRITON, rbgp_linear, resolve_backend
from rbgp.ops.grouped import GroupedLinearFunction
from rbgp.ops.layout import LayoutTensors
from rbgp.ops.reference import dense_weight, grouped_values, reference_linear
from rbgp.ops.weight import SparseWeight, quantize_rows

__all__ = [
    "BACKENDS",
    "HAS_TRITON",
    "ConvArgs",
    "LayoutTensors",
    "GroupedLinearFunction",
    "SparseWeight",
    "quantize_rows",
    "dense_weight",
    "grouped_values",
    "plan_conv",
    "reference_linear",
    "rbgp_conv2d",
    "rbgp_linear",
    "resolve_backend",
]  # and triton_linear, lazily


def __getattr__(name: str):
    if name == "triton_linear":
        from rbgp.ops.triton_ops import triton_linear

        return triton_linear
    raise AttributeError(f"module 'rbgp.ops' has no attribute {name!r}")
