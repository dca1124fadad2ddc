"""The sparse weight as the ops read it: values, layout tables and the conv channel table in one object."""

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
    copied), so `.to()`, `load_state_dict` and FSDP's parameter swaps are always seen."""

    values: torch.Tensor
    layout: LayoutTensors
    channels: torch.Tensor | None = None

    def dense(self) -> torch.Tensor:
        """The masked dense (out, in) matrix, differentiable in `values` (see `dense_weight`)."""
        return dense_weight(self.values, self.layout)
