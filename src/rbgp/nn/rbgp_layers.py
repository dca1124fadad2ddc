"""RBGPLinear and RBGPConv2d: layers that store only their non-zero weights.

The weight of an RBGP layer is kept as dense `(groups, rows_per_group, nnz_per_row)` values plus its
factor graphs (a few hundred bytes); `dense_weight()` rebuilds the masked (out, in) matrix on demand.
Compute goes through `rbgp.ops.rbgp_linear` (the one dispatch point); a conv is the same product on its
im2col matrix.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from rbgp.ops import BACKENDS, LayoutTensors, dense_weight, grouped_values, rbgp_linear
from rbgp.ops.im2col import im2col_feature_major
from rbgp.patterns import RBGP4, Pattern, SparseMask, get_pattern, matrix_shape


def build_structure(weight_shape: tuple[int, ...], sparsity: float, pattern: str | Pattern | None,
                    seed: int) -> SparseMask:
    """The SparseMask of an RBGP layer; refuses patterns that have no grouped layout."""
    pattern = RBGP4() if pattern is None else get_pattern(pattern)
    mask = pattern.build(tuple(weight_shape), sparsity, seed)
    if mask.layout is None:
        raise ValueError(
            f"pattern {pattern!r} has no grouped (product) layout; RBGP layers take RBGP/RBGP4 patterns, "
            f"use MaskedLinear/MaskedConv2d for {mask.kind!r} masks"
        )
    return mask


class _RBGPBase(nn.Module):
    """Shared storage, initialisation and state handling of RBGP layers."""

    def _setup(self, weight_shape: tuple[int, ...], sparsity: float | None, pattern, seed: int, bias: bool,
               backend: str, device=None, dtype=None, structure: SparseMask | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; valid: {list(BACKENDS)}")
        self.backend = backend
        self.structure = structure if structure is not None else build_structure(weight_shape, sparsity, pattern, seed)
        layout = LayoutTensors.from_layout(self.structure.layout, device=device)
        self.register_buffer("row_index", layout.row_index, persistent=False)
        self.register_buffer("col_index", layout.col_index, persistent=False)
        self.register_buffer("row_order", layout.row_order, persistent=False)
        self.values = nn.Parameter(torch.empty(layout.values_shape, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(weight_shape[0], device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    @property
    def layout(self) -> LayoutTensors:
        return LayoutTensors(self.row_index, self.col_index, self.row_order, self.structure.shape[1])

    @property
    def nnz_per_row(self) -> int:
        return self.values.shape[2]

    @property
    def density(self) -> float:
        return self.structure.density

    def reset_parameters(self) -> None:
        """Kaiming normal scaled to the real fan-in: std = sqrt(2 / nnz_per_row)."""
        with torch.no_grad():
            self.values.normal_(0.0, math.sqrt(2.0 / self.nnz_per_row))
            if self.bias is not None:
                bound = 1.0 / math.sqrt(self.nnz_per_row)
                self.bias.uniform_(-bound, bound)

    def dense_matrix(self) -> torch.Tensor:
        """The masked (out, in*kh*kw) weight matrix."""
        return dense_weight(self.values, self.layout)

    @property
    def mask(self) -> torch.Tensor:
        """The true 0/1 mask in the weight's shape (bool)."""
        return torch.as_tensor(self.structure.weight_mask(), device=self.values.device)

    def load_dense_(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Take the entries of a dense weight that lie on the pattern (the rest are dropped)."""
        with torch.no_grad():
            matrix = weight.reshape(self.structure.shape).to(self.values)
            self.values.copy_(grouped_values(matrix, self.layout))
            if bias is not None and self.bias is not None:
                self.bias.copy_(bias)

    def structure_fingerprint(self) -> str:
        """sha256 of the index lists: two layers with the same fingerprint have the same mask."""
        h = hashlib.sha256()
        for t in (self.row_index, self.col_index):
            h.update(t.detach().cpu().numpy().astype("<i8").tobytes())
        return h.hexdigest()

    def get_extra_state(self) -> dict:
        return {"fingerprint": self.structure_fingerprint(), "shape": list(self.structure.weight_shape)}

    def set_extra_state(self, state: dict) -> None:
        mine = self.structure_fingerprint()
        if not isinstance(state, dict) or state.get("fingerprint") != mine:
            raise ValueError(
                f"state_dict was saved from a layer with a different sparsity structure "
                f"(saved {state.get('fingerprint') if isinstance(state, dict) else state!r}, this layer {mine}); "
                f"build the layer with the same shape, sparsity, pattern and seed"
            )

    def extra_repr(self) -> str:
        s = self.structure
        return (f"weight={tuple(s.weight_shape)}, sparsity={s.sparsity:.4f}, nnz_per_row={self.nnz_per_row}, "
                f"groups={self.values.shape[0]}x{self.values.shape[1]} rows, bias={self.bias is not None}, "
                f"backend={self.backend!r}")


class RBGPLinear(_RBGPBase):
    """A linear layer whose weight follows an RBGP pattern (RBGP4 planned by default)."""

    def __init__(self, in_features: int, out_features: int, sparsity: float = 0.9, *,
                 pattern: str | Pattern | None = None, seed: int = 0, bias: bool = True,
                 backend: str = "auto", device=None, dtype=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._setup((out_features, in_features), sparsity, pattern, seed, bias, backend, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rbgp_linear(x, self.values, self.layout, self.bias, self.backend)

    def dense_weight(self) -> torch.Tensor:
        """The masked dense (out, in) weight."""
        return self.dense_matrix()

    @classmethod
    def from_dense(cls, module: nn.Linear, sparsity: float = 0.9, *, pattern: str | Pattern | None = None,
                   seed: int = 0, keep_weights: bool = True, backend: str = "auto") -> RBGPLinear:
        """An RBGPLinear shaped like `module`; with keep_weights its weights on the pattern are kept."""
        if not isinstance(module, nn.Linear):
            raise TypeError(f"from_dense expects nn.Linear, got {type(module).__name__}")
        w = module.weight
        layer = cls(module.in_features, module.out_features, sparsity, pattern=pattern, seed=seed,
                    bias=module.bias is not None, backend=backend, device=w.device, dtype=w.dtype)
        if keep_weights:
            layer.load_dense_(w, module.bias)
        return layer


class RBGPConv2d(_RBGPBase):
    """A 2-D convolution (groups=1) whose (c_out, c_in*kh*kw) weight follows an RBGP pattern."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 sparsity: float = 0.9, *, pattern: str | Pattern | None = None, seed: int = 0,
                 bias: bool = True, backend: str = "auto", device=None, dtype=None) -> None:
        super().__init__()
        if isinstance(padding, str):
            raise ValueError(f"string padding {padding!r} is not supported; give explicit integers")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        shape = (out_channels, in_channels, *self.kernel_size)
        matrix_shape(shape)
        self._setup(shape, sparsity, pattern, seed, bias, backend, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        cols, oh, ow = im2col_feature_major(x, self.kernel_size, self.stride, self.padding, self.dilation)
        # the feature-major matrix goes in as its transposed (N*L, C*kh*kw) view: the gather reads rows
        y = rbgp_linear(cols.t(), self.values, self.layout, self.bias, self.backend)  # (N*L, out)
        return y.t().reshape(self.out_channels, x.shape[0], oh, ow).transpose(0, 1)

    def dense_weight(self) -> torch.Tensor:
        """The masked dense (c_out, c_in, kh, kw) weight."""
        return self.dense_matrix().reshape(self.structure.weight_shape)

    @classmethod
    def from_dense(cls, module: nn.Conv2d, sparsity: float = 0.9, *, pattern: str | Pattern | None = None,
                   seed: int = 0, keep_weights: bool = True, backend: str = "auto") -> RBGPConv2d:
        """An RBGPConv2d shaped like `module`; with keep_weights its weights on the pattern are kept."""
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"from_dense expects nn.Conv2d, got {type(module).__name__}")
        if module.groups != 1 or isinstance(module.padding, str) or module.padding_mode != "zeros":
            raise ValueError(f"only groups=1, zero, integer padding convs can be RBGP, got {module}")
        w = module.weight
        layer = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                    module.dilation, sparsity, pattern=pattern, seed=seed, bias=module.bias is not None,
                    backend=backend, device=w.device, dtype=w.dtype)
        if keep_weights:
            layer.load_dense_(w, module.bias)
        return layer
