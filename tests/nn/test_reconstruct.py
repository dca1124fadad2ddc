"""Per-group least squares against a closed-form reference, saliencies, and the output error."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rbgp.nn.reconstruct import damped, output_error, saliency, solve_grouped


def _problem(out: int, inp: int, n: int, seed: int, bias: bool = True):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(inp, inp, generator=g, dtype=torch.float64) / inp ** 0.5
    x = torch.randn(n, inp, generator=g, dtype=torch.float64) @ (torch.eye(inp, dtype=torch.float64) + mix)
    w = torch.randn(out, inp, generator=g, dtype=torch.float64)
    b = torch.randn(out, generator=g, dtype=torch.float64) if bias else None
    xa = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], 1)
    return x, w, b, xa.t() @ xa


def _layout(out: int, inp: int, groups: int, k: int, seed: int):
    """Random rows per group (padding rows beyond `out`) and sorted random columns."""
    g = torch.Generator().manual_seed(seed)
    per = -(-out // groups)
    rows = torch.randperm(per * groups, generator=g).reshape(groups, per)
    cols = torch.stack([torch.sort(torch.randperm(inp, generator=g)[:k]).values for _ in range(groups)])
    return rows, cols


def _error(w, b, w2, b2, h):
    """output_error in float64 (the library's is float32: a report figure)."""
    ref = torch.cat([w, b[:, None]], 1)
    diff = torch.cat([w2, b2[:, None]], 1) - ref
    return float(((diff @ h) * diff).sum() / ((ref @ h) * ref).sum())


def _dense(values, rows, cols, out, inp):
    w = torch.zeros(rows.numel(), inp, dtype=values.dtype)
    w[rows[:, :, None], cols[:, None, :]] = values
    return w[:out]


@pytest.mark.parametrize("out,inp,groups,k,bias", [(12, 10, 3, 4, True), (7, 9, 2, 5, False), (16, 16, 4, 16, True),
                                                  (5, 33, 5, 7, True)])
def test_matches_closed_form_least_squares(out, inp, groups, k, bias):
    x, w, b, h = _problem(out, inp, 200, seed=out + inp)
    b = b if bias else None
    rows, cols = _layout(out, inp, groups, k, seed=1)
    values, nb = solve_grouped(w, b, h, rows, cols, damp=0.0)
    y = x @ w.t() + (b if b is not None else 0)
    for gi in range(groups):
        keep = rows[gi][rows[gi] < out]
        a = x[:, cols[gi]]
        if bias:
            a = torch.cat([a, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        ref = torch.linalg.lstsq(a, y[:, keep]).solution  # (K [+1], rows)
        torch.testing.assert_close(values[gi][rows[gi] < out], ref[:cols.shape[1]].t(), rtol=1e-8, atol=1e-8)
        if bias:
            torch.testing.assert_close(nb[keep], ref[-1], rtol=1e-8, atol=1e-8)
    assert torch.all(values[rows >= out] == 0)  # padding rows: zero targets, zero weights
    if not bias:
        assert nb is None


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(1e-3, 1.0))
def test_residual_is_the_minimum(seed, scale):
    """Perturbing the kept weights (or the bias) never lowers the calibration residual."""
    x, w, b, h = _problem(8, 12, 64, seed)
    rows, cols = _layout(8, 12, 2, 5, seed)
    values, nb = solve_grouped(w, b, h, rows, cols, damp=0.0)
    best = _error(w, b, _dense(values, rows, cols, 8, 12), nb, h)
    g = torch.Generator().manual_seed(seed + 1)
    moved = values + scale * torch.randn(values.shape, generator=g, dtype=values.dtype)
    assert _error(w, b, _dense(moved, rows, cols, 8, 12), nb, h) >= best - 1e-12
    assert _error(w, b, _dense(values, rows, cols, 8, 12), nb + scale, h) >= best - 1e-12
    assert output_error(w, b, _dense(values, rows, cols, 8, 12), nb, h) == pytest.approx(best, rel=1e-4)


@pytest.mark.parametrize("bias", [True, False])
def test_dense_targets_match_closed_form_least_squares(bias):
    """With cross products, each group fits the dense layer's outputs on other inputs X_d (the unconverted
    model's) from its columns of X; the output error is measured against those outputs."""
    x, w, b, h = _problem(10, 12, 300, seed=3, bias=bias)
    g = torch.Generator().manual_seed(4)
    xd = x + 0.3 * torch.randn(x.shape, generator=g, dtype=x.dtype)  # what the dense model would have given
    ones = torch.ones(len(x), 1, dtype=x.dtype)
    xa, xda = torch.cat([x, ones], 1), torch.cat([xd, ones], 1)
    rows, cols = _layout(10, 12, 2, 6, seed=5)
    values, nb = solve_grouped(w, b, h, rows, cols, damp=0.0, cross=xa.t() @ xda)
    y = xd @ w.t() + (b if bias else 0)
    for gi in range(2):
        keep = rows[gi][rows[gi] < 10]
        a = torch.cat([x[:, cols[gi]], ones], 1) if bias else x[:, cols[gi]]
        ref = torch.linalg.lstsq(a, y[:, keep]).solution
        torch.testing.assert_close(values[gi][rows[gi] < 10], ref[: cols.shape[1]].t(), rtol=1e-8, atol=1e-8)
        if bias:
            torch.testing.assert_close(nb[keep], ref[-1], rtol=1e-8, atol=1e-8)
    new = _dense(values, rows, cols, 10, 12)
    got = x @ new.t() + (nb if bias else 0)
    direct = float((got - y).pow(2).sum() / y.pow(2).sum())
    error = output_error(w, b, new, nb, h, xa.t() @ xda, xda.t() @ xda)
    assert error == pytest.approx(direct, rel=1e-3)
    assert output_error(w, b, w, b, h, h, h) == pytest.approx(0.0, abs=1e-6)  # X_d = X, exact weights


def test_full_support_reproduces_the_layer():
    x, w, b, h = _problem(6, 8, 50, 0)
    rows = torch.arange(6).reshape(2, 3)
    cols = torch.arange(8).expand(2, 8)
    values, nb = solve_grouped(w, b, h, rows, cols, damp=0.0)
    torch.testing.assert_close(_dense(values, rows, cols, 6, 8), w)
    torch.testing.assert_close(nb, b)
    assert output_error(w, b, w, b, h) == 0.0


def test_degenerate_gram_is_damped_and_finite():
    """Inputs never seen (zero columns) and exact collinearity: damping keeps every solve finite."""
    x, w, b, _ = _problem(4, 6, 30, 0)
    x[:, 2] = 0
    x[:, 3] = x[:, 4]
    xa = torch.cat([x, torch.ones(30, 1, dtype=x.dtype)], 1)
    rows, cols = torch.arange(4).reshape(2, 2), torch.tensor([[1, 2, 3, 4], [0, 2, 3, 5]])
    values, nb = solve_grouped(w, b, xa.t() @ xa, rows, cols)
    assert torch.isfinite(values).all() and torch.isfinite(nb).all()
    assert torch.all(torch.isfinite(damped(torch.zeros(3, 3)))) and bool((damped(torch.zeros(3, 3)).diagonal() > 0).all())


def test_gram_shape_is_checked():
    with pytest.raises(ValueError, match=r"gram must be \(5, 5\)"):
        solve_grouped(torch.ones(2, 4), None, torch.eye(4), torch.arange(2).reshape(1, 2), torch.arange(2).reshape(1, 2))


def test_saliencies():
    w = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    h = torch.tensor([[4.0, 1.0], [1.0, 2.0]])
    torch.testing.assert_close(saliency(w, h, "magnitude"), (w ** 2).double())
    torch.testing.assert_close(saliency(w, h, "wanda"), (w ** 2 * torch.tensor([4.0, 2.0])).double())
    hinv = torch.linalg.inv(h.double() + 0.03 * torch.eye(2, dtype=torch.float64))  # damp 0.01 x mean diag 3
    torch.testing.assert_close(saliency(w, h, "obs"), (w ** 2).double() / hinv.diagonal())
    with pytest.raises(ValueError, match="saliency must be one of"):
        saliency(w, h, "taylor")


def _group_error(x, w, b, rows, cols):
    """Calibration output error of the least-squares fit on `cols` (no damping)."""
    h = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    h = h.t() @ h
    values, nb = solve_grouped(w, b, h, rows, cols, damp=0.0)
    return _error(w, b, _dense(values, rows, cols, w.shape[0], w.shape[1]), nb, h)


def test_block_elimination_removes_the_best_single_block():
    """Keeping all blocks but one: greedy group OBS removes the block whose loss is least (brute force)."""
    from rbgp.nn.reconstruct import select_blocks

    x, w, b, _ = _problem(6, 24, 300, seed=3)
    rows = torch.arange(6).reshape(2, 3)
    ranked = torch.arange(8).expand(2, 8)
    cols = select_blocks(w, x.t() @ x, rows, ranked, keep=7, width=3, damp=0.0)
    assert cols.shape == (2, 21) and torch.equal(cols, torch.sort(cols, dim=1).values)
    assert torch.equal(cols.view(2, 7, 3) % 3, torch.arange(3).expand(2, 7, 3))  # aligned runs of 3
    for gi in range(2):
        one = rows[gi:gi + 1]
        errors = [_group_error(x, w[one[0]], b[one[0]], torch.arange(3)[None],
                               torch.tensor([c for c in range(24) if c // 3 != drop])[None]) for drop in range(8)]
        got = _group_error(x, w[one[0]], b[one[0]], torch.arange(3)[None], cols[gi:gi + 1])
        assert got == pytest.approx(min(errors), rel=1e-6)


def test_block_elimination_beats_the_highest_saliency_blocks():
    from rbgp.nn.reconstruct import select_blocks

    x, w, b, _ = _problem(8, 64, 400, seed=5)
    x[:, 16:32] = x[:, :16] + 0.05 * x[:, 16:32]  # strongly correlated blocks: saliency sums count them twice
    rows = torch.arange(8).reshape(2, 4)
    h = x.t() @ x
    score = saliency(w, h).view(2, 4, 4, 16).sum(dim=(1, 3))  # (groups, blocks)
    ranked = torch.argsort(score, dim=1, descending=True)
    top = torch.sort((ranked[:, :2, None] * 16 + torch.arange(16)).reshape(2, -1), dim=1).values
    chosen = select_blocks(w, h, rows, ranked, keep=2, width=16)
    assert _group_error(x, w, b, rows, chosen) <= _group_error(x, w, b, rows, top) + 1e-12


def test_calibrated_pattern_refines_narrow_layers_only():
    from rbgp.nn.reconstruct import MIN_GROUPS, WIDE_GROUPS, WIDE_ROWS, calibrated_pattern
    from rbgp.patterns import RBGP4

    narrow = calibrated_pattern(RBGP4(), (256, 256), 0.75)
    plan = narrow._plan(256, 256, 0.75)
    assert 256 // plan.rows_per_group >= MIN_GROUPS and plan.block == (1, 8)  # 8 blocks of 8 to choose from
    assert calibrated_pattern(RBGP4(), (256, 1024), 0.5)._plan(256, 1024, 0.5).block == (1, 8)  # a narrow input
    assert calibrated_pattern(RBGP4(), (256, 4096), 0.5)._plan(256, 4096, 0.5).block == (1, 16)  # 128 blocks: kept
    assert calibrated_pattern(RBGP4(), (2048, 2048), 0.9).group_rows == 2048 // MIN_GROUPS
    assert calibrated_pattern(RBGP4(), (WIDE_ROWS, 4096), 0.9).group_rows == WIDE_ROWS // WIDE_GROUPS
    wide = calibrated_pattern(RBGP4(), (4096, 4096), 0.9)
    assert wide._plan(4096, 4096, 0.9).describe() == RBGP4()._plan(4096, 4096, 0.9).describe()  # the fast plan
    conv = RBGP4()
    assert calibrated_pattern(conv, (64, 64, 3, 3), 0.9) is conv


def test_explained_energy_is_what_least_squares_recovers():
    from rbgp.nn.reconstruct import explained

    x, w, _, _ = _problem(5, 12, 200, seed=7)
    h = x.t() @ x
    cols = torch.tensor([[0, 3, 4, 9], [1, 2, 7, 11]])
    got = explained(w @ h, h, cols)
    for g, s in enumerate(cols):
        fit = torch.linalg.lstsq(x[:, s], x @ w.t()).solution  # (|S|, out): the best weights on S
        residual = ((x[:, s] @ fit - x @ w.t()) ** 2).sum(dim=0)
        total = ((x @ w.t()) ** 2).sum(dim=0)
        torch.testing.assert_close(got[:, g], total - residual, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regroup_finds_planted_groups_and_never_raises_the_residual(seed):
    """Rows built from two disjoint column sets, handed in mixed up: regrouping lowers the residual
    (to the planted optimum here) and a round that would raise it is not kept."""
    from rbgp.nn.reconstruct import regroup, select_blocks

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(400, 32, generator=g, dtype=torch.float64)
    w = torch.zeros(8, 32, dtype=torch.float64)
    w[:4, :16] = torch.randn(4, 16, generator=g, dtype=torch.float64)
    w[4:, 16:] = torch.randn(4, 16, generator=g, dtype=torch.float64)
    h = x.t() @ x
    mixed = torch.tensor([[0, 1, 4, 5], [2, 3, 6, 7]])
    ranked = torch.arange(4).expand(2, 4)

    def choose(rows):
        score = saliency(w, h)[rows].sum(dim=1).view(2, 4, 8).sum(dim=2)
        return select_blocks(w, h, rows, torch.argsort(score, dim=1, descending=True, stable=True), 2, 8, 0.0)

    def residual(rows, cols):
        return _group_error(x, w, torch.zeros(8, dtype=torch.float64), rows, cols)

    start = choose(mixed)
    rows, cols = regroup(w, h, mixed, start, choose, rounds=3, damp=0.0)
    assert residual(rows, cols) < 1e-9 < residual(mixed, start)
    assert sorted(map(sorted, rows.tolist())) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    again = regroup(w, h, rows, cols, choose, rounds=3, damp=0.0)  # already optimal: nothing changes
    assert torch.equal(again[0], rows) and torch.equal(again[1], cols)
    assert regroup(w, h, mixed, start, choose, rounds=0)[0] is mixed
