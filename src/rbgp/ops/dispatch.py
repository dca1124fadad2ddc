"""The one dispatch point: picks the reference, the grouped torch path or a GPU kernel."""

from __future__ import annotations

import torch

from rbgp.ops.grouped import GroupedLinearFunction
from rbgp.ops.layout import LayoutTensors
from rbgp.ops.reference import reference_linear

BACKENDS = ("auto", "reference", "grouped")


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend `auto` stands for on `device`, or `backend` itself after validation."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {list(BACKENDS)}")
    return "grouped" if backend == "auto" else backend


def rbgp_linear(x: torch.Tensor, values: torch.Tensor, layout: LayoutTensors, bias: torch.Tensor | None = None,
                backend: str = "auto") -> torch.Tensor:
    """y = x W^T + b for the grouped-sparse W = (values, layout); x may have any leading dims.

    Under torch.autocast the GEMM inputs are cast to the autocast dtype (bf16: fp32 master weights,
    low-precision GEMM inputs, fp32 accumulation inside the GEMM).
    """
    if x.shape[-1] != layout.in_features:
        raise ValueError(f"input has {x.shape[-1]} features in its last dim, the layer expects {layout.in_features}")
    if values.shape != layout.values_shape:
        raise ValueError(f"values shape {tuple(values.shape)} does not match the layout {layout.values_shape}")
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, values = x.to(dtype), values.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    elif x.dtype != values.dtype:
        raise ValueError(f"input dtype {x.dtype} differs from the weight dtype {values.dtype}; cast one or use autocast")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    kind = resolve_backend(backend, x.device)
    with torch.autocast(x.device.type, enabled=False):
        if kind == "reference":
            y = reference_linear(x2, values, layout)
        else:
            y = GroupedLinearFunction.apply(x2, values, layout)
    if bias is not None:
        y = y + bias
    return y.reshape(*lead, layout.out_features)
