"""The dtypes a sparse product runs in: under torch.autocast its dtype, otherwise the inputs' own."""

from __future__ import annotations

import torch


def autocast_inputs(
    x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The GEMM inputs: under torch.autocast cast to its dtype (bf16: fp32 master weights, low-precision
    GEMM inputs, fp32 accumulation inside the GEMM); otherwise as they are, x and values of one dtype."""
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        return x.to(dtype), values.to(dtype), bias.to(dtype) if bias is not None else None
    if x.dtype != values.dtype:
        raise ValueError(
            f"input dtype {x.dtype} differs from the weight dtype {values.dtype}; cast one or use autocast"
        )
    return x, values, bias
