"""Compute for grouped-sparse (RBGP) weights: reference, generic torch path, Triton kernels, one dispatch point.

The Triton modules (`triton_kernels`, `triton_launch`, `triton_ops`) are imported lazily, on first use of
backend "triton" or of `rbgp.ops.triton_linear`: importing rbgp never imports triton.
"""

from rbgp.ops.dispatch import BACKENDS, HAS_TRITON, rbgp_linear, resolve_backend
from rbgp.ops.grouped import GroupedLinearFunction
from rbgp.ops.layout import LayoutTensors
from rbgp.ops.reference import dense_weight, grouped_values, reference_linear

__all__ = ["BACKENDS", "HAS_TRITON", "LayoutTensors", "GroupedLinearFunction", "dense_weight", "grouped_values",
           "reference_linear", "rbgp_linear", "resolve_backend"]  # and triton_linear, lazily


def __getattr__(name: str):
    if name == "triton_linear":
        from rbgp.ops.triton_ops import triton_linear

        return triton_linear
    raise AttributeError(f"module 'rbgp.ops' has no attribute {name!r}")
