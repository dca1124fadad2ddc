"""Fitting an RBGP4 structure to trained weights (`init="magnitude"`): keep as much |W| as the pattern allows.

With a complete outer graph an RBGP4 layout is: rows split into G groups of R rows, and a bipartite
graph (G x columns, every group reading the same number of columns) that says which columns each
group reads. Which rows form a group is free (the layout gathers rows through `row_index`), and so
is the graph: the kernels need equal row groups and equal fan-in, not aligned blocks. The fit
maximises the kept |W| mass by alternating two exact sub-problems:

- given the row groups, the graph is a maximum-weight degree-constrained b-matching on the
  (group x column) masses: a transportation LP whose constraint matrix is totally unimodular, so the
  optimal vertex HiGHS returns is integral;
- given the graph, rows are re-assigned to groups (R each) to maximise each row's mass on its group's
  columns (an assignment problem).

Neither step lowers the kept mass. Rows start co-clustered by which columns they favour (sorted along
the leading principal component of their normalised mass profiles). The result is a pure function
of the weights and the plan. The fitted graph's spectral gap is reported next to that of the
Ramanujan graph the plan would draw (`benchmarks/pretrained_conversion.md` compares them).
"""

from __future__ import annotations

import numpy as np
import scipy.optimize as opt
import scipy.sparse as sp

from rbgp.graphs import BipartiteGraph
from rbgp.patterns.base import SparseMask
from rbgp.patterns.layout import GroupedLayout

MAX_ROUNDS = 4
POWER_STEPS = 30
MIN_GAIN = 0.005
"""Rounds stop when the kept mass grows by less than this fraction."""
EXACT_ASSIGNMENT_MAX = 4096
"""Up to this many rows, their assignment to groups is solved exactly (Hungarian method, O(n^3));
beyond, greedily (most decided rows first, each to its best group with room)."""


def _transport(score: np.ndarray, row_sum: float, col_lo: np.ndarray, col_hi: np.ndarray) -> np.ndarray:
    """0/1 matrix x maximising (score * x).sum() with every row summing to `row_sum` and column j's
    sum in [col_lo[j], col_hi[j]] (a transportation LP; integral at its optimal vertex)."""
    m, n = score.shape
    rows = sp.kron(sp.identity(m, format="csr"), np.ones((1, n)), format="csr")
    cols = sp.kron(np.ones((1, m)), sp.identity(n, format="csr"), format="csr")
    res = opt.linprog(
        -score.ravel(),
        A_ub=sp.vstack([cols, -cols]),
        b_ub=np.concatenate([col_hi, -col_lo]),
        A_eq=rows,
        b_eq=np.full(m, row_sum),
        bounds=(0, 1),
        method="highs-ds",
    )
    if res.status != 0:
        raise RuntimeError(f"the fitting LP failed: {res.message}")
    x = np.rint(res.x).reshape(m, n)
    if not np.allclose(x, res.x.reshape(m, n), atol=1e-6):  # TU: cannot happen; guard against solver drift
        raise RuntimeError("the fitting LP returned a fractional solution")
    return x.astype(bool)


def balanced_assign(score: np.ndarray, size: int) -> np.ndarray:
    """Part id of every item, `size` items per part, maximising the total score (items x parts)."""
    n, parts = score.shape
    if n <= EXACT_ASSIGNMENT_MAX:
        _, slot = opt.linear_sum_assignment(np.repeat(score, size, axis=1), maximize=True)
        return slot // size
    ids = np.full(n, -1, dtype=np.int64)
    room = np.full(parts, size)
    ranked = np.argsort(-score, axis=1, kind="stable")
    top2 = np.sort(score, axis=1)[:, -2:] if parts > 1 else np.zeros((n, 2))
    for item in np.argsort(-(top2[:, 1] - top2[:, 0]), kind="stable"):
        part = next(p for p in ranked[item] if room[p])
        ids[item], room[part] = part, room[part] - 1
    return ids


def _initial_order(profile: np.ndarray) -> np.ndarray:
    """Rows sorted along the leading principal component of their normalised profiles."""
    p = profile / np.maximum(profile.sum(axis=1, keepdims=True), 1e-30)
    p = p - p.mean(axis=0)
    if not p.any():
        return np.arange(p.shape[0])
    v = np.random.default_rng(0).standard_normal(p.shape[1])
    for _ in range(POWER_STEPS):  # power iteration: the leading right singular vector, at any size
        v = p.T @ (p @ v)
        v /= max(np.linalg.norm(v), 1e-30)
    return np.argsort(p @ v, kind="stable")


def _equal_parts(order: np.ndarray, parts: int) -> np.ndarray:
    ids = np.empty(order.size, dtype=np.int64)
    ids[order] = np.arange(order.size) // (order.size // parts)
    return ids


def _sums(values: np.ndarray, ids: np.ndarray, parts: int) -> np.ndarray:
    """Sums of the rows of `values` over the equal-sized index sets `ids == p`."""
    order = np.argsort(ids, kind="stable")
    return values[order].reshape(parts, -1, values.shape[1]).sum(axis=1)


def check_finite_weight(weight: np.ndarray) -> None:
    """Refuse a weight with inf or NaN entries (no structure can be fitted to them), naming the first."""
    bad = ~np.isfinite(weight)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"the weight holds {int(bad.sum())} inf/NaN entries (the first at {first}); a structure can only be "
            f"fitted to finite weights"
        )


def fit_grouped(
    weight: np.ndarray, groups: int, degree: int, min_reads: int = 1, rounds: int = MAX_ROUNDS
) -> tuple[GroupedLayout, np.ndarray, list[float]]:
    """(layout, each group's columns (G, degree), kept mass after each round) of the grouped structure
    that keeps the most of |weight| ((out, in); rows beyond a multiple of `groups` are padding rows).

    Rows are split into G equal groups and every group reads `degree` columns; every column is read by
    at least `min_reads` groups (1: no input is dropped). Each round re-solves the graph, then the
    row groups, each exactly; rounds stop when the kept mass grows by less than MIN_GAIN.
    """
    out, inp = weight.shape
    check_finite_weight(weight)
    rows = -(-out // groups) * groups
    a = np.zeros((rows, inp))
    a[:out] = np.abs(weight)
    peak = a.max(initial=0.0)
    if peak > 0:
        a /= peak  # the fit is scale-free; the LP solver is not (weights of 1e20 overflow it)
    total = a.sum()
    group_of = _equal_parts(_initial_order(a), groups)
    min_reads = min(min_reads, groups * degree // inp)
    col_lo, col_hi = np.full(inp, float(min_reads)), np.full(inp, float(groups))
    history: list[float] = []
    graph = np.zeros((groups, inp), dtype=bool)
    for _ in range(rounds):
        group_mass = _sums(a, group_of, groups)  # (G, in)
        candidate = _transport(group_mass, degree, col_lo, col_hi)
        kept = float((group_mass * candidate).sum())
        if history and kept <= history[-1] * (1 + MIN_GAIN):
            break
        graph = candidate
        history.append(kept)
        group_of = balanced_assign(a @ graph.T.astype(float), rows // groups)  # rows x G: mass on its columns
    neighbors = np.nonzero(graph)[1].reshape(groups, degree)  # sorted within each group
    layout = GroupedLayout(out, inp, np.argsort(group_of, kind="stable").reshape(groups, -1), neighbors)
    history.append(float(a[:out][layout.mask()].sum()))  # after the last re-assignment of rows
    return layout, neighbors, [h / total if total else 0.0 for h in history]


def kept_mass(weight: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of sum |weight| on the mask's non-zeros."""
    a = np.abs(weight)
    total = a.sum()
    return float((a * mask).sum() / total) if total else 0.0


def top_k_mask(weight: np.ndarray, sparsity: float) -> np.ndarray:
    """The unstructured magnitude mask: the largest round((1 - sparsity) * size) (at least one) entries of
    |weight|."""
    a = np.abs(weight).ravel()
    keep = max(1, int(round((1.0 - sparsity) * a.size)))
    mask = np.zeros(a.size, dtype=bool)
    mask[np.argpartition(-a, keep - 1)[:keep]] = True
    return mask.reshape(weight.shape)


def layout_mask(kind: str, weight_shape: tuple[int, ...], layout: GroupedLayout, info: dict) -> SparseMask:
    """The SparseMask of a grouped structure given by its index lists alone (fitted, or loaded from a
    file): it costs its row and column lists, 4 bytes an index."""
    facts = {
        "groups": layout.groups,
        "rows_per_group": layout.rows_per_group,
        "padded_rows": layout.padded_rows,
        **info,
    }
    return SparseMask(
        kind,
        tuple(weight_shape),
        None,
        4 * (layout.row_index.size + layout.col_index.size),
        (1, 1),
        layout,
        None,
        facts,
    )


def fitted_mask(
    kind: str, weight_shape: tuple[int, ...], layout: GroupedLayout, neighbors: np.ndarray, blocks: int, info: dict
) -> SparseMask:
    """The SparseMask of a fitted grouped structure; its inner graph's spectrum goes into `info`."""
    inner = BipartiteGraph.from_neighbors(blocks, neighbors, name="fitted-magnitude")
    return layout_mask(
        kind,
        weight_shape,
        layout,
        {"fitted": "magnitude", "inner_graph": inner.summary(), "spectral_gap": inner.spectral_gap(), **info},
    )
