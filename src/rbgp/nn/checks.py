"""Argument and input checks shared by the sparse layers: clear ValueErrors at construction and in
forward, with the semantics of nn.Linear and nn.Conv2d (which accept some of these bad values at
construction and fail later with an unrelated error, e.g. stride=0 as a ZeroDivisionError)."""

from __future__ import annotations

from numbers import Integral
from typing import Any

import torch

PADDING_STRINGS = ("valid", "same")


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def layer_size(name: str, value: Any) -> int:
    """A feature or channel count: an int >= 1."""
    if not _is_int(value) or int(value) < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def conv_pair(name: str, value: Any, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each >= minimum, as a pair (nn.Conv2d's kernel_size/stride/dilation/padding)."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2 or not all(_is_int(v) and int(v) >= minimum for v in items):
        raise ValueError(f"{name} must be an integer >= {minimum} or a pair of them (height, width), got {value!r}")
    return int(items[0]), int(items[1])


def conv_padding(value: Any, stride: tuple[int, int]) -> str | tuple[int, int]:
    """padding as nn.Conv2d takes it: an int or pair >= 0, or 'valid' / 'same' ('same' with stride 1 only)."""
    if isinstance(value, str):
        if value not in PADDING_STRINGS:
            raise ValueError(f"padding must be an integer >= 0, a pair of them, 'valid' or 'same', got {value!r}")
        if value == "same" and stride != (1, 1):
            raise ValueError(f"padding='same' needs stride 1 (as in nn.Conv2d), got stride={stride}")
        return value
    try:
        return conv_pair("padding", value, 0)
    except ValueError:
        raise ValueError(f"padding must be an integer >= 0, a pair of them, 'valid' or 'same', got {value!r}") from None


Pair = tuple[int, int]


def conv_args(kernel_size: Any, stride: Any, padding: Any, dilation: Any) -> tuple[Pair, Pair, str | Pair, Pair]:
    """(kernel_size, stride, padding, dilation) checked and normalised to pairs (padding may stay a string)."""
    kernel = conv_pair("kernel_size", kernel_size, 1)
    stride = conv_pair("stride", stride, 1)
    dilation = conv_pair("dilation", dilation, 1)
    return kernel, stride, conv_padding(padding, stride), dilation


def _shape(x: Any) -> str:
    if not isinstance(x, torch.Tensor):
        return f"a {type(x).__name__}"
    return "a scalar (0-d tensor)" if x.dim() == 0 else f"shape {tuple(x.shape)}"


def check_linear_input(x: Any, in_features: int) -> None:
    """nn.Linear's contract: a tensor of at least 1 dim whose last dim is in_features."""
    if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[-1] != in_features:
        raise ValueError(
            f"expected input (..., {in_features}) (any leading dims, last dim = in_features = "
            f"{in_features}), got {_shape(x)}"
        )


def check_conv_input(x: Any, in_channels: int) -> bool:
    """nn.Conv2d's contract: (N, C, H, W) or unbatched (C, H, W) with C = in_channels; True when batched."""
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4) or x.shape[-3] != in_channels:
        raise ValueError(
            f"expected input (N, {in_channels}, H, W) or unbatched ({in_channels}, H, W) "
            f"(in_channels = {in_channels}), got {_shape(x)}"
        )
    return x.dim() == 4
