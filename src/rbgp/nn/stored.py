"""Weights stored in bf16 or int8 for inference: `store_values_` for a model's RBGPLinear values and,
optionally, its dense nn.Linear layers (`StoredLinear`), such as an LM's output head."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from rbgp.nn.calibration import set_module
from rbgp.nn.checks import check_linear_input
from rbgp.nn.rbgp_layers import RBGPLinear
from rbgp.ops import native, quantize_rows

STORED_DTYPES = (torch.float32, torch.bfloat16, torch.int8)


class StoredLinear(nn.Module):
    """A dense linear layer for inference whose weight is stored in bf16, or in int8 with one fp32 scale
    per row: `values` (out, in) and, for int8, `value_scales` (out,) (`rbgp.ops.quantize_rows`), as
    RBGPLinear keeps stored values. fp32 inputs give fp32 outputs: CPU batches of up to
    `rbgp.ops.native.MAX_BATCH` rows run on the native kernel, which widens the values in registers and
    so reads a half or a quarter of the fp32 bytes (a batch-1 product is bound by them); other inputs
    take F.linear with the weight widened once per call. The values take no gradient; the bias stays
    fp32. `weight` is the widened fp32 weight, materialised on access (for code that reads it, such as
    nn.TransformerEncoderLayer's fast path); `to_linear()` gives an nn.Linear back."""

    value_scales: torch.Tensor | None

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        if dtype not in (torch.bfloat16, torch.int8):
            raise ValueError(f"dtype must be torch.bfloat16 or torch.int8, got {dtype!r}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().to(torch.float32)
        scales = None
        if dtype == torch.int8:
            q, s = quantize_rows(w[None])
            w, scales = q[0], s[0]
        self.values = nn.Parameter(w.to(dtype), requires_grad=False)
        self.register_buffer("value_scales", scales)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(torch.float32))

    @property
    def weight(self) -> torch.Tensor:
        """The weight in fp32 (int8: the values times their row scales), materialised on every access."""
        w = self.values.to(torch.float32)
        return w if self.value_scales is None else w * self.value_scales[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_linear_input(x, self.in_features)
        x2 = x.reshape(-1, self.in_features)
        if native.dense_applies(x2, self.values):
            y = native.dense_small(x2, self.values, self.value_scales, self.bias)
            return y.reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def to_linear(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=self.values.device)
        with torch.no_grad():
            linear.weight.copy_(self.weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, values={self.values.dtype}"


def store_values_(model: nn.Module, dtype: torch.dtype = torch.bfloat16, *, dense_layers: bool = False) -> int:
    """Store the values of every RBGPLinear in `model` in `dtype` (in place; the number of layers
    changed). With bf16 or int8 values and fp32 inputs a layer still computes in fp32 and returns
    fp32: the values are widened in registers (batches up to `rbgp.ops.native.MAX_BATCH` on the CPU)
    or once per call, so a batch-1 (decode) product reads a half or a quarter of the bytes
    (`benchmarks/small_batch.md`). bf16 rounds each weight (relative error up to 2^-8); int8 keeps
    one fp32 scale per row, the `value_scales` buffer (`rbgp.ops.quantize_rows`: error up to half a
    scale step, the rule of `rbgp.compress`'s int8). bf16 and int8 are for inference: int8 values
    take no gradient, and fp32 brings either back (int8: the dequantised values). RBGPConv2d layers
    are left as they are.

    dense_layers: also store every plain nn.Linear (not its subclasses, such as the output projection
    nn.MultiheadAttention reads directly) as a `StoredLinear` in `dtype`, e.g. an LM's output head,
    which at batch 1 reads as many bytes as all the sparse layers of a small model; fp32 turns them
    back into nn.Linear. A head tied to the embedding is untied (the embedding keeps its fp32 weight).
    """
    if dtype not in STORED_DTYPES:
        raise ValueError(f"dtype must be one of {STORED_DTYPES}, got {dtype!r}")
    layers = [m for m in model.modules() if isinstance(m, RBGPLinear)]
    for layer in layers:
        values = layer.sparse_weight.float_values(torch.float32).detach()
        if dtype == torch.int8:
            values, scales = quantize_rows(values)
            layer.values = nn.Parameter(values, requires_grad=False)
            layer.register_buffer("value_scales", scales)
            continue
        if layer.values.dtype == torch.int8:
            layer.values = nn.Parameter(values)
            del layer.value_scales
        layer.values.data = values.to(dtype)
    return len(layers) + (store_dense_(model, dtype) if dense_layers else 0)


def store_dense_(model: nn.Module, dtype: torch.dtype, names: set[str] | None = None) -> int:
    """Store every plain nn.Linear below `model` (only those named in `names`, when given) as a
    `StoredLinear` in bf16 or int8, or turn StoredLinear layers back into nn.Linear with fp32; in place,
    the number of layers changed (`store_values_(..., dense_layers=True)` for a whole model)."""
    swaps: list[tuple[str, nn.Linear]] = []
    for name, child in model.named_modules():
        if not name or (names is not None and name not in names):
            continue
        if isinstance(child, StoredLinear) and child.values.dtype != dtype:
            swaps.append((name, child.to_linear()))
        elif type(child) is nn.Linear and dtype != torch.float32:
            swaps.append((name, cast(nn.Linear, child)))
    for name, linear in swaps:
        set_module(model, name, linear if dtype == torch.float32 else StoredLinear(linear, dtype))
    return len(swaps)
