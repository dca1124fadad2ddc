"""bfloat16 precision helpers.

Mixed-precision policy used for training: GEMM/conv inputs are cast to bf16, products are
accumulated in fp32, and the master weights and optimizer state stay in fp32. ``to_bf16_rne``
reproduces the fp32 -> bf16 cast with integer ops so kernels that round by hand (and their
tests) can be checked against it bit for bit.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

__all__ = ["bf16_autocast", "to_bf16_rne"]

_EXP_MASK = 0x7F800000
_QUIET_BIT_BF16 = 0x0040


def to_bf16_rne(x: torch.Tensor) -> torch.Tensor:
    """Round float32 to bfloat16 (round to nearest, ties to even) using int32 bit arithmetic.

    Bit-exact with ``x.to(torch.bfloat16)`` for every non-NaN input, subnormals, signed zeros
    and overflow to +-Inf included. A NaN stays a NaN with its sign and the top 7 payload bits,
    with the quiet bit set, as the bf16 conversion instructions of x86 (AVX512-BF16) and Arm do;
    torch's own cast instead canonicalises NaNs, differently per backend.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"to_bf16_rne expects a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"to_bf16_rne expects a float32 tensor, got {x.dtype}")
    bits = x.contiguous().view(torch.int32)
    is_nan = (bits & 0x7FFFFFFF) > _EXP_MASK
    # Adding 0x7FFF + lsb carries into the upper half exactly when RNE rounds up. NaNs are
    # zeroed first so the sum cannot overflow int32 (a non-NaN magnitude is <= 0x7F800000).
    finite = torch.where(is_nan, 0, bits)
    rounded = (finite + 0x7FFF + ((finite >> 16) & 1)) >> 16
    quiet_nan = (bits >> 16) | _QUIET_BIT_BF16
    upper = torch.where(is_nan, quiet_nan, rounded) & 0xFFFF
    # Reinterpret the 16-bit pattern: move [0x8000, 0xFFFF] to the negative int16 range.
    signed = torch.where(upper >= 0x8000, upper - 0x10000, upper)
    return signed.to(torch.int16).view(torch.bfloat16)


def bf16_autocast(device_type: str | torch.device, enabled: bool = True) -> AbstractContextManager[object]:
    """Autocast to bf16 on ``device_type`` ("cuda", "cpu", ...), or a no-op when disabled.

    Under autocast, matmuls and convs take bf16 inputs and accumulate in fp32 while the
    parameters themselves remain fp32 master weights.
    """
    if not enabled:
        return contextlib.nullcontext()
    kind = device_type.type if isinstance(device_type, torch.device) else str(device_type)
    if ":" in kind:  # accept "cuda:0" like torch.device does
        kind = kind.split(":", 1)[0]
    try:
        return torch.autocast(kind, dtype=torch.bfloat16)
    except RuntimeError as exc:
        raise ValueError(f"cannot autocast on device type {device_type!r} ({exc}); use e.g. 'cuda' or 'cpu'") from exc
