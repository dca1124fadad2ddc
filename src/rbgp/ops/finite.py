"""Inf and NaN inputs propagated as the dense product propagates them, at the cost of one sum."""

from __future__ import annotations

import torch


def surely_finite(x: torch.Tensor) -> bool:
    """True when x holds no inf or NaN, known from one sum (a finite sum has only finite terms: an inf
    or NaN term makes it inf or NaN). False when the sum is not finite (an inf or NaN, or an overflow
    of finite terms), and always while compiling or tracing, where a branch on data has no place; the
    exact flags (`nonfinite_rows`) are added then."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    return bool(torch.isfinite(x.detach().sum()))


def nonfinite_rows(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """0, or NaN where a slice of x along `dim` holds an inf or NaN (x * 0 is NaN exactly for those)."""
    return x.detach().mul(0).sum(dim, keepdim=True)
