"""The one-sum check for inf and NaN, and the exact flags behind it."""

import torch

from rbgp.ops.finite import nonfinite_rows, surely_finite


def test_surely_finite():
    x = torch.randn(7, 33)
    assert surely_finite(x)
    for bad in (float("inf"), float("-inf"), float("nan")):
        y = x.clone()
        y[3, 5] = bad
        assert not surely_finite(y)
    both = x.clone()
    both[0, 0], both[1, 1] = float("inf"), float("-inf")  # their sum is NaN: still caught
    assert not surely_finite(both)
    assert not surely_finite(torch.full((4, 4), 3e38))  # a finite overflow: the exact flags decide


def test_nonfinite_rows_flag_exactly_the_rows_with_inf_or_nan():
    x = torch.full((4, 6), 3e38)  # huge but finite: never flagged
    x[1, 2] = float("nan")
    x[3, 0] = float("-inf")
    flags = nonfinite_rows(x)
    assert flags.shape == (4, 1) and flags[[0, 2]].eq(0).all() and flags[[1, 3]].isnan().all()
