"""Compute for grouped-sparse (RBGP) weights: reference, generic torch path, one dispatch point."""

from rbgp.ops.dispatch import BACKENDS, rbgp_linear, resolve_backend
from rbgp.ops.grouped import GroupedLinearFunction
from rbgp.ops.layout import LayoutTensors
from rbgp.ops.reference import dense_weight, grouped_values, reference_linear

__all__ = ["BACKENDS", "LayoutTensors", "GroupedLinearFunction", "dense_weight", "grouped_values",
           "reference_linear", "rbgp_linear", "resolve_backend"]
