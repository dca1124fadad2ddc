"""The sparse weight as the ops read it: values, layout tables, the conv channel table and, for int8
values, their per-row scales, in one object."""

from __future__ import annotations

from typing import NamedTuple

import torch

from rbgp.ops.layout import LayoutTensors
from rbgp.ops.reference import dense_weight


class SparseWeight(NamedTuple):
    """A grouped-sparse (out, in) weight: `values` (G, R, K) on `layout` (its index lists, kernel
    tables, static facts and workspace, see `LayoutTensors`); for a conv whose row groups read whole
    input channels, `channels`, the padded (G, C') channel table of `rbgp.ops.channel_conv`. A layer
    builds it from its parameters and buffers on every call (a tuple of references: nothing is
    copied), so `.to()`, `load_state_dict` and FSDP's parameter swaps are always seen. int8 `values`
    come with `scales` (G, R) fp32, one per row: the weight is values * scales (`quantize_rows`)."""

    values: torch.Tensor
    layout: LayoutTensors
    channels: torch.Tensor | None = None
    scales: torch.Tensor | None = None

    def dense(self) -> torch.Tensor:
        """The masked dense (out, in) matrix, differentiable in `values` (see `dense_weight`)."""
        return dense_weight(self.float_values(), self.layout)

    def float_values(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The values in floating point `dtype` (default: fp32 for int8 values, times their row scales;
        the values' own dtype otherwise)."""
        if self.values.dtype != torch.int8:
            return self.values if dtype is None else self.values.to(dtype)
        if self.scales is None:
            raise ValueError("int8 values need their per-row scales (G, R)")
        return (self.values.to(torch.float32) * self.scales.to(torch.float32)[..., None]).to(dtype or torch.float32)


def quantize_rows(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, fp32 scales (G, R)) for float values (G, R, K): per-row symmetric, scale =
    max|row| / 127, symbols -127..127, |w - w_hat| <= scale / 2 (the rule of `rbgp.compress`'s
    "int8"); zeros stay zero. Refuses non-finite values."""
    v = values.detach().to(torch.float32)
    if not torch.isfinite(v).all():
        raise ValueError("cannot quantise non-finite values to int8")
    scales = v.abs().amax(-1) / 127
    q = torch.round(v / torch.where(scales > 0, scales, 1.0)[..., None]).clamp_(-127, 127)
    return q.to(torch.int8), scales
