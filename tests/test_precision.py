"""Tests for rbgp.precision: bit-exact bf16 rounding emulation and the autocast helper."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rbgp.precision import bf16_autocast, to_bf16_rne


def _floats(bits: list[int] | torch.Tensor) -> torch.Tensor:
    """float32 tensor with the given uint32 bit patterns."""
    t = torch.as_tensor(bits, dtype=torch.int64)
    t = torch.where(t >= 2**31, t - 2**32, t).to(torch.int32)
    return t.view(torch.float32)


def _u16(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int16).to(torch.int32) & 0xFFFF


def _assert_matches_torch(x: torch.Tensor) -> None:
    ours, ref = to_bf16_rne(x), x.to(torch.bfloat16)
    assert ours.dtype == torch.bfloat16 and ours.shape == x.shape
    nan = torch.isnan(x)
    assert torch.isnan(ours[nan]).all() and torch.isnan(ref[nan]).all()
    mismatch = (_u16(ours) != _u16(ref)) & ~nan
    if mismatch.any():
        i = int(mismatch.nonzero()[0])
        bits = int(x.view(torch.int32)[i]) & 0xFFFFFFFF
        raise AssertionError(
            f"{int(mismatch.sum())} mismatches, e.g. 0x{bits:08x}: ours 0x{int(_u16(ours)[i]):04x}"
            f" torch 0x{int(_u16(ref)[i]):04x}"
        )


def test_random_bit_patterns():
    g = torch.Generator().manual_seed(1234)
    bits = torch.randint(0, 2**32, (1 << 22,), generator=g, dtype=torch.int64)
    _assert_matches_torch(_floats(bits))


def test_every_upper_half_with_rounding_classes():
    upper = torch.arange(1 << 16, dtype=torch.int64) << 16
    lowers = torch.tensor([0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xC000, 0xFFFF, 0x4321])
    _assert_matches_torch(_floats((upper[:, None] | lowers[None, :]).flatten()))


def test_every_lower_half_for_edge_uppers():
    lower = torch.arange(1 << 16, dtype=torch.int64)
    uppers = torch.tensor([0x0000, 0x8000, 0x0001, 0x007F, 0x3F80, 0x3F81, 0x7F7F, 0xFF7F, 0x7F7E])
    _assert_matches_torch(_floats(((uppers[:, None] << 16) | lower[None, :]).flatten()))


@pytest.mark.parametrize(
    "bits, expected",
    [
        (0x3F800000, 0x3F80),  # 1.0
        (0x3F808000, 0x3F80),  # tie, even lsb: down
        (0x3F818000, 0x3F82),  # tie, odd lsb: up
        (0xBF818000, 0xBF82),  # negative tie, odd lsb: away from zero
        (0x3F808001, 0x3F81),  # just above a tie
        (0x3F807FFF, 0x3F80),  # just below a tie
        (0x7F7FFFFF, 0x7F80),  # FLT_MAX overflows to +Inf
        (0xFF7FFFFF, 0xFF80),  # -FLT_MAX overflows to -Inf
        (0x7F7F7FFF, 0x7F7F),  # largest value rounding to bf16 max
        (0x7F7F8000, 0x7F80),  # tie at bf16 max with odd lsb: to Inf
        (0x7F800000, 0x7F80),  # +Inf
        (0xFF800000, 0xFF80),  # -Inf
        (0x00000000, 0x0000),  # +0
        (0x80000000, 0x8000),  # -0
        (0x00000001, 0x0000),  # smallest subnormal
        (0x00008000, 0x0000),  # subnormal tie, even
        (0x00018000, 0x0002),  # subnormal tie, odd
        (0x80018000, 0x8002),  # negative subnormal tie, odd
        (0x007FFFFF, 0x0080),  # largest subnormal rounds to the smallest normal
        (0x00800000, 0x0080),  # smallest normal
    ],
)
def test_edge_cases(bits, expected):
    x = _floats([bits])
    assert int(_u16(to_bf16_rne(x))[0]) == expected
    assert int(_u16(x.to(torch.bfloat16))[0]) == expected


@pytest.mark.parametrize(
    "bits, expected",
    [
        (0x7FC00000, 0x7FC0),  # canonical quiet NaN
        (0xFFC00000, 0xFFC0),  # negative quiet NaN keeps its sign
        (0x7F800001, 0x7FC0),  # signalling NaN, payload only in the dropped bits: quieted
        (0xFF812345, 0xFFC1),  # negative signalling NaN: sign and top payload bits kept
        (0x7FA12345, 0x7FE1),
        (0x7FFFFFFF, 0x7FFF),  # never rounds a NaN up into the sign bit
        (0xFFFFFFFF, 0xFFFF),
    ],
)
def test_nan_is_quieted_keeping_sign_and_payload(bits, expected):
    out = to_bf16_rne(_floats([bits]))
    assert torch.isnan(out).all()
    assert int(_u16(out)[0]) == expected
    # torch's own cast also yields a NaN, but canonicalises the bits per backend.
    assert torch.isnan(_floats([bits]).to(torch.bfloat16)).all()


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_hypothesis_single_patterns(bits):
    _assert_matches_torch(_floats([bits]))


def test_shapes_and_non_contiguous():
    x = torch.randn(5, 7).t()
    out = to_bf16_rne(x)
    assert out.shape == (7, 5)
    assert torch.equal(out.view(torch.int16), x.to(torch.bfloat16).view(torch.int16))
    assert to_bf16_rne(torch.empty(0)).shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.int32])
def test_rejects_non_float32(dtype):
    with pytest.raises(TypeError, match="float32"):
        to_bf16_rne(torch.zeros(3, dtype=dtype))
    with pytest.raises(TypeError, match="Tensor"):
        to_bf16_rne([1.0])  # type: ignore[arg-type]


def test_bf16_autocast_policy():
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    lin = torch.nn.Linear(8, 8)
    with bf16_autocast("cpu"):
        assert (a @ b).dtype == torch.bfloat16
        assert lin(a).dtype == torch.bfloat16
    assert lin.weight.dtype == torch.float32  # master weights stay fp32
    with bf16_autocast(torch.device("cpu"), enabled=False):
        assert (a @ b).dtype == torch.float32
    with bf16_autocast("cpu:0"):
        assert (a @ b).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="device type"):
        bf16_autocast("tpu-ish")
