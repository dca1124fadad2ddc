"""Sparsity patterns: recipes that turn (weight shape, sparsity, seed) into a `SparseMask`."""

from __future__ import annotations

import inspect

from rbgp.patterns.base import Pattern, SparseMask, check_sparsity, matrix_shape
from rbgp.patterns.baselines import NM, Block, HBsNN, Unstructured
from rbgp.patterns.layout import GroupedLayout
from rbgp.patterns.rbgp import RBGP, stride_permutation
from rbgp.patterns.rbgp4 import RBGP4, RBGP4Plan
from rbgp.patterns.resources import ResourceError

PATTERNS: dict[str, type[Pattern]] = {
    "rbgp4": RBGP4,
    "unstructured": Unstructured,
    "block": Block,
    "nm": NM,
    "hbsnn": HBsNN,
}


def get_pattern(pattern: str | Pattern, **kwargs) -> Pattern:
    """A Pattern from its name (with its parameters as kwargs) or the Pattern itself."""
    if isinstance(pattern, Pattern):
        if kwargs:
            raise ValueError(f"parameters {sorted(kwargs)} given with an already built pattern {pattern!r}")
        return pattern
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; valid: {sorted(PATTERNS)} or a Pattern instance")
    valid = [p for p in inspect.signature(PATTERNS[pattern]).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise TypeError(f"unknown parameter(s) {unknown} for pattern {pattern!r}; valid: {valid}")
    return PATTERNS[pattern](**kwargs)


__all__ = [
    "PATTERNS",
    "Pattern",
    "SparseMask",
    "GroupedLayout",
    "Unstructured",
    "Block",
    "NM",
    "HBsNN",
    "RBGP",
    "RBGP4",
    "RBGP4Plan",
    "ResourceError",
    "get_pattern",
    "check_sparsity",
    "matrix_shape",
    "stride_permutation",
]
