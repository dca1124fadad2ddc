"""Masked baseline layers: a dense weight times a fixed 0/1 mask from any Pattern.

They make comparisons fair (same training code, any pattern: unstructured, block, N:M, HBsNN) and
compute as dense; the masked entries stay exactly zero in `dense_weight()` whatever the optimizer does.

The mask is saved with the state (buffer `mask`). Loading a state adopts its mask (a mask fitted to
trained weights is not a function of the layer's arguments); a state with `weight` but no `mask` is
refused, even with strict=False, so weights never land on another mask.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rbgp.nn.checks import check_conv_input, check_linear_input, conv_args, layer_size
from rbgp.patterns import Pattern, SparseMask, Unstructured, get_pattern
from rbgp.patterns.base import bsr_bytes, csr_bytes

if TYPE_CHECKING:
    _MixinBase = nn.Module  # the mixin only ever comes with nn.Linear or nn.Conv2d
else:
    _MixinBase = object


class _MaskedMixin(_MixinBase):
    weight: torch.Tensor
    bias: torch.Tensor | None
    mask: torch.Tensor  # buffer registered by _attach_mask

    def _attach_mask(
        self, sparsity: float, pattern: str | Pattern | None, seed: int, structure: SparseMask | None = None
    ) -> None:
        if structure is None:
            pattern = Unstructured() if pattern is None else get_pattern(pattern)
            structure = pattern.build(tuple(self.weight.shape), sparsity, seed)
        elif tuple(structure.weight_shape) != tuple(self.weight.shape):
            raise ValueError(
                f"structure is for a {tuple(structure.weight_shape)} weight, this layer's is {tuple(self.weight.shape)}"
            )
        self.structure: SparseMask = structure
        mask = torch.as_tensor(self.structure.weight_mask(), device=self.weight.device)
        self.register_buffer("mask", mask, persistent=True)
        fan_in = max(1, int(self.structure.array.sum(axis=1).mean()))
        with torch.no_grad():  # Kaiming normal scaled to the real (mean) fan-in
            self.weight.normal_(0.0, math.sqrt(2.0 / fan_in)).mul_(self.mask)
            if self.bias is not None:
                self.bias.uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def _load_from(self, module: nn.Linear | nn.Conv2d) -> None:
        """Take `module`'s weights on the mask (and its bias)."""
        with torch.no_grad():
            self.weight.copy_(module.weight * self.mask)
            if module.bias is not None:
                assert self.bias is not None  # built with a bias where `module` has one
                self.bias.copy_(module.bias)

    def scale_rows_(self, scale: torch.Tensor) -> None:
        """Multiply output row i's weights by scale[i] (in place)."""
        with torch.no_grad():
            self.weight.mul_(scale.to(self.weight).view(-1, *([1] * (self.weight.dim() - 1))))

    @property
    def density(self) -> float:
        return self.structure.density

    def _describe_mask(self, mask: torch.Tensor | None = None) -> str:
        mask = self.mask if mask is None else mask
        return f"{int(mask.sum())} of {mask.numel()} weights kept"

    def _adopt_saved_mask(self, saved, name: str) -> str | None:
        """Take the mask a state carries (this layer's `structure` follows it); an error message, or None."""
        if not isinstance(saved, torch.Tensor) or tuple(saved.shape) != tuple(self.mask.shape):
            shape = tuple(saved.shape) if isinstance(saved, torch.Tensor) else type(saved).__name__
            return f"layer {name!r}: the saved mask is {shape}, this layer's {tuple(self.mask.shape)}"
        saved = saved.detach()
        if saved.dtype != torch.bool:
            if saved.is_complex() or not bool(((saved == 0) | (saved == 1)).all()):
                return f"layer {name!r}: the saved mask holds values other than 0 and 1 ({saved.dtype})"
            saved = saved != 0
        saved = saved.to(self.mask.device)
        if torch.equal(saved, self.mask):
            return None
        array = saved.cpu().numpy().reshape(self.structure.shape)
        s = self.structure
        size = {"unstructured": lambda: csr_bytes(array), "block": lambda: bsr_bytes(array, s.bsr_block)}
        self.structure = dataclasses.replace(
            s,
            dense=np.ascontiguousarray(array),
            layout=None,
            graph=None,
            info={**s.info, "fitted": "loaded"},
            structure_bytes=size.get(s.kind, lambda: s.structure_bytes)(),
        )
        return None

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        key, name = prefix + "mask", prefix[:-1] or type(self).__name__
        if key in state_dict:
            error = self._adopt_saved_mask(state_dict[key], name)
            if error:
                error_msgs.append(error)
                return
        elif prefix + "weight" in state_dict:  # refused even with strict=False
            error_msgs.append(
                f"layer {name!r}: the state has {prefix}weight but no {key}, so the weights cannot be "
                f"matched to this layer's mask ({self._describe_mask()}); load a state saved whole "
                f"(state_dict() keeps {key})"
            )
            return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def dense_weight(self) -> torch.Tensor:
        """The masked dense weight (exact zeros off the pattern)."""
        return self.weight * self.mask


@torch.no_grad()
def rezero_masked_(model: nn.Module) -> None:
    """Zero the stored weights off the mask in every masked layer of `model` (their forward already
    multiplies by the mask; this keeps `.weight` itself exact whatever the optimizer does)."""
    for m in model.modules():
        if isinstance(m, _MaskedMixin):
            m.weight.mul_(m.mask)


class MaskedLinear(_MaskedMixin, nn.Linear):  # type: ignore[misc]  # torch types Linear.bias as Parameter, not Optional
    """nn.Linear with a fixed sparsity mask from `pattern` (unstructured by default)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        sparsity: float = 0.9,
        *,
        pattern: str | Pattern | None = None,
        seed: int = 0,
        bias: bool = True,
        device=None,
        dtype=None,
        structure: SparseMask | None = None,
        dense_type: type[nn.Module] = nn.Linear,
    ) -> None:
        super().__init__(
            layer_size("in_features", in_features),
            layer_size("out_features", out_features),
            bias,
            device=device,
            dtype=dtype,
        )
        self.dense_type = dense_type
        """The dense class this layer stands for (nn.Linear, or transformers' Conv1D): what densify rebuilds."""
        self._attach_mask(sparsity, pattern, seed, structure)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_linear_input(x, self.in_features)
        return F.linear(x, self.dense_weight(), self.bias)

    @classmethod
    def from_dense(
        cls,
        module: nn.Module,
        sparsity: float = 0.9,
        *,
        pattern=None,
        seed: int = 0,
        keep_weights: bool = True,
        structure: SparseMask | None = None,
    ) -> MaskedLinear:
        """A MaskedLinear shaped like `module` (nn.Linear or transformers' Conv1D)."""
        from rbgp.nn.rbgp_layers import linear_weight

        w, b = linear_weight(module)
        layer = cls(
            w.shape[1],
            w.shape[0],
            sparsity,
            pattern=pattern,
            seed=seed,
            bias=b is not None,
            device=w.device,
            dtype=w.dtype,
            structure=structure,
            dense_type=type(module),
        )
        if keep_weights:
            with torch.no_grad():
                layer.weight.copy_(w * layer.mask)
                if b is not None:
                    assert layer.bias is not None  # built with bias=b is not None
                    layer.bias.copy_(b)
        return layer


class MaskedConv2d(_MaskedMixin, nn.Conv2d):
    """nn.Conv2d (groups=1) with a fixed mask on its (c_out, c_in*kh*kw) matrix."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        sparsity: float = 0.9,
        *,
        pattern: str | Pattern | None = None,
        seed: int = 0,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        structure: SparseMask | None = None,
    ) -> None:
        kernel_size, stride, padding, dilation = conv_args(kernel_size, stride, padding, dilation)
        super().__init__(
            layer_size("in_channels", in_channels),
            layer_size("out_channels", out_channels),
            kernel_size,
            stride,
            padding,
            dilation,
            groups=1,
            bias=bias,
            padding_mode=cast(Literal["zeros", "reflect", "replicate", "circular"], padding_mode),  # checked by torch
            device=device,
            dtype=dtype,
        )
        self._attach_mask(sparsity, pattern, seed, structure)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, in_channels, H, W), or unbatched (in_channels, H, W) as nn.Conv2d takes it."""
        check_conv_input(x, self.in_channels)
        return self._conv_forward(x, self.dense_weight(), self.bias)

    @classmethod
    def from_dense(
        cls,
        module: nn.Conv2d,
        sparsity: float = 0.9,
        *,
        pattern=None,
        seed: int = 0,
        keep_weights: bool = True,
        structure: SparseMask | None = None,
    ) -> MaskedConv2d:
        if module.groups != 1:
            raise ValueError(f"only groups=1 convs can be masked, got groups={module.groups}")
        w = module.weight
        layer = cls(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            sparsity,
            pattern=pattern,
            seed=seed,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
            device=w.device,
            dtype=w.dtype,
            structure=structure,
        )
        if keep_weights:
            layer._load_from(module)
        return layer
