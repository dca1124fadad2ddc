"""Layer-wise reconstruction from calibration statistics: the exact least-squares weights of a grouped
structure, the saliencies that choose it, and the error of a pruned layer.

A layer y = W x + b seen on calibration inputs X (rows x) is summarised by its Gram matrix
H = [X 1]^T [X 1] (the input augmented with a ones column, so the bias is part of the same problem).
For a row group whose rows all read the input support S, the weights minimising
sum ||W_S x_S + b' - (W x + b)||^2 solve one linear system with the matrix H[S+1, S+1] for every row
of the group at once: one (damped) Cholesky per group, where unstructured methods need one per row.
Everything here is float64, deterministic, and pure tensor maths (no modules).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import numpy as np
import torch

from rbgp.patterns import RBGP4, GroupedLayout, Pattern, SparseMask
from rbgp.patterns.fit import balanced_assign, fitted_mask

DAMP = 0.01
"""Damping: lambda = DAMP * mean(diag H) is added to the diagonal of every system (as SparseGPT does)."""
SALIENCIES = ("obs", "wanda", "magnitude")
MAX_SOLVE_BYTES = 256 << 20
"""Groups are solved in batches whose stacked systems take at most this much memory."""
MIN_GROUPS = 256
WIDE_ROWS = 4096
WIDE_GROUPS = 32
MIN_BLOCKS = 8
MIN_INPUT_BLOCKS = 128
CALIBRATED_BLOCK_WIDTH = 8
"""The calibrated default plan of a linear layer: at least MIN_GROUPS row groups (group_rows halved
until there are; WIDE_GROUPS from WIDE_ROWS rows on), and micro-blocks of CALIBRATED_BLOCK_WIDTH
columns where the planned width leaves a group fewer than MIN_BLOCKS blocks to choose or splits the
input into fewer than MIN_INPUT_BLOCKS (inputs narrower than 2048 with 16-column blocks). Every row
group shares one support, so smaller groups and finer blocks fit the data better
(`benchmarks/row_groups_sweep.md`: on the KJV GPT-2 at 0.5, 256 groups are a third as far from
unstructured SparseGPT as 32, while a 2048-row layer's 8-row groups run slower than its 64-row ones at
batches of 16 and more); a layer of WIDE_ROWS rows keeps its 128-row groups (32 of them) and its
16-column blocks, and so its speed and conversion time. Plans with blocks narrower than
CALIBRATED_BLOCK_WIDTH are taken only where no other meets the sparsity (`RBGP4(min_block_width=...)`)."""


def calibrated_pattern(pattern: RBGP4, weight_shape: tuple[int, ...], sparsity: float) -> RBGP4:
    """`pattern` with the calibrated default's row groups and micro-blocks for a linear weight (see
    MIN_GROUPS); a conv weight keeps its plan (its channel micro-blocks and merge rules)."""
    if len(weight_shape) != 2:
        return pattern
    out, inp = weight_shape
    rows, groups = pattern.group_rows, MIN_GROUPS if out < WIDE_ROWS else WIDE_GROUPS
    while rows > 1 and out // rows < groups:
        rows //= 2
    pattern = pattern.replace(group_rows=rows, min_block_width=min(pattern.block[1], CALIBRATED_BLOCK_WIDTH))
    try:
        plan = pattern._plan(out, inp, sparsity, nearest=True)
    except ValueError:
        return pattern
    few = plan.nnz_per_row // plan.block[1] < MIN_BLOCKS or inp // plan.block[1] < MIN_INPUT_BLOCKS
    if plan.block[1] > CALIBRATED_BLOCK_WIDTH and few:
        pattern = pattern.replace(block=(pattern.block[0], CALIBRATED_BLOCK_WIDTH))
    return pattern


def damped(h: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    """H + lambda I (lambda = damp * mean of the diagonal), with inputs never seen (zero diagonal) set to 1:
    positive definite whenever damp > 0."""
    h = h.clone()
    diag = h.diagonal()
    diag[diag <= 0] = 1.0
    diag += damp * float(diag.mean())
    return h


def saliency(weight: torch.Tensor, gram: torch.Tensor, kind: str = "obs", damp: float = DAMP) -> torch.Tensor:
    """Per-weight importance (out, in) >= 0, the energy each weight adds to the layer's output:
    "obs": w^2 / [H^-1]_jj (the output error when weight w_ij alone is removed and the others are
    re-fitted, Optimal Brain Surgeon); "wanda": w^2 * H_jj (Wanda's |w| * ||x_j||, squared; no re-fit);
    "magnitude": w^2. `gram` is the (in, in) input Gram matrix (without the ones column)."""
    if kind not in SALIENCIES:
        raise ValueError(f"saliency must be one of {SALIENCIES}, got {kind!r}")
    w2 = weight.double() ** 2
    if kind == "magnitude":
        return w2
    if kind == "wanda":
        return w2 * gram.double().diagonal().clamp_min(0)
    chol = torch.linalg.cholesky(damped(gram.double(), damp))
    return w2 / torch.cholesky_inverse(chol).diagonal()


def _augment(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """[W b] (out, in + 1), float64; b = 0 when there is none."""
    w = weight.double()
    b = w.new_zeros(w.shape[0]) if bias is None else bias.double()
    return torch.cat([w, b[:, None]], dim=1)


def solve_grouped(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    gram: torch.Tensor,
    row_index: torch.Tensor,
    col_index: torch.Tensor,
    damp: float = DAMP,
    fit_bias: bool | None = None,
    cross: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(values (G, R, K), bias (out,) or None): for every row group, the least-squares weights on its
    columns given the dense layer `weight` (out, in), `bias` and the augmented Gram `gram` (in + 1, in + 1).

    Rows from `out` on (padding rows) get zeros. The bias is re-fitted jointly (`fit_bias`, default:
    when the layer has one) with an undamped ones column. A system that is not positive definite (a
    degenerate Gram with damp=0) is retried with ten times the damping. `cross` ([X 1]^T [X_d 1], same
    shape as `gram`): fit the dense layer's outputs on other inputs X_d (the unconverted model's) instead
    of on X."""
    out, inp = weight.shape
    if gram.shape != (inp + 1, inp + 1):
        raise ValueError(f"gram must be ({inp + 1}, {inp + 1}) (inputs plus a ones column), got {tuple(gram.shape)}")
    fit_bias = bias is not None if fit_bias is None else fit_bias
    g, r = row_index.shape
    k = col_index.shape[1]
    h = gram.double()
    c = h if cross is None else cross.double()
    target = _augment(weight, bias).to(h.device)
    target = torch.cat([target, target.new_zeros(g * r - out, inp + 1)])  # padding rows: zero targets
    rows, cols = row_index.to(h.device), col_index.to(h.device)
    support = torch.cat([cols, cols.new_full((g, 1), inp)], dim=1) if fit_bias else cols  # (G, K')
    kk = support.shape[1]
    scale = damp * float(h.diagonal()[:inp].clamp_min(0).mean())
    values = torch.empty(g, r, k, dtype=torch.float64, device=h.device)
    new_bias = torch.empty(g, r, dtype=torch.float64, device=h.device) if fit_bias else None
    per = max(1, MAX_SOLVE_BYTES // (8 * kk * (kk + inp + 1)))
    ridge = torch.zeros(kk, dtype=torch.float64, device=h.device)
    ridge[:k] = 1.0  # the ones column (bias) is not damped
    ridge = torch.diag(ridge)
    for s in range(0, g, per):
        sup = support[s : s + per]
        a = h[sup[:, :, None], sup[:, None, :]]  # (c, K', K')
        diag = a.diagonal(dim1=1, dim2=2)
        diag[:, :k][diag[:, :k] <= 0] = 1.0  # inputs never seen
        rhs = c[sup] @ target[rows[s : s + per]].transpose(1, 2)  # (c, K', in+1) @ (c, in+1, R)
        lam = scale if scale > 0 else 1e-12
        for _ in range(8):
            chol, info = torch.linalg.cholesky_ex(a + lam * ridge)
            if not bool(info.any()):
                break
            lam *= 10
        else:
            raise ValueError(
                "the least-squares system stayed singular after damping: the calibration inputs are degenerate "
                "(inputs of magnitudes too far apart, such as activations near 1e38 next to the bias's ones)"
            )
        z = torch.cholesky_solve(rhs, chol)  # (c, K', R)
        values[s : s + per] = z[:, :k].transpose(1, 2)
        if new_bias is not None:  # fit_bias
            new_bias[s : s + per] = z[:, k]
    if new_bias is not None:
        flat = torch.empty(g * r, dtype=torch.float64, device=h.device)
        flat[rows.reshape(-1)] = new_bias.reshape(-1)
        return values, flat[:out]
    return values, None if bias is None else bias.double()


def output_error(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    new_weight: torch.Tensor,
    new_bias: torch.Tensor | None,
    gram: torch.Tensor,
    cross: torch.Tensor | None = None,
    dense_gram: torch.Tensor | None = None,
) -> float:
    """||X [W' b']^T - X_d [W b]^T||^2 / ||X_d [W b]^T||^2 on the calibration inputs (0: exact), X_d = X
    unless the cross products [X 1]^T [X_d 1] and `dense_gram` [X_d 1]^T [X_d 1] are given; the quadratic
    forms in float32 (a report figure: three digits are plenty)."""
    ref = _augment(weight, bias).to(gram.device).float()
    new = _augment(new_weight, new_bias).to(gram.device).float()

    def form(x: torch.Tensor, m: torch.Tensor, y: torch.Tensor) -> float:
        return float(((x @ m.float()) * y).sum())

    if cross is None or dense_gram is None:  # X_d = X: the difference first (exact zero for an exact fit)
        num, den = form(new - ref, gram, new - ref), form(ref, gram, ref)
    else:
        den = form(ref, dense_gram, ref)
        num = max(form(new, gram, new) - 2 * form(new, cross, ref) + den, 0.0)
    return num / den if den > 0 else 0.0


CANDIDATES = 4.0
"""Each row group's blocks are chosen by elimination among this many times the blocks it keeps (its highest
saliency blocks; all when fewer), but never more than MAX_EXTRA_COLUMNS columns beyond those it keeps."""
MAX_EXTRA_COLUMNS = 512
REGROUP_ROUNDS = 1
"""Alternations of moving each row to the group whose chosen support reproduces most of it and choosing
the groups' blocks again (kept only while the layer's least-squares residual drops; 0: none). Each round
runs the block selection once more, which is most of a large layer's conversion time."""


def select_blocks(
    weight: torch.Tensor,
    gram: torch.Tensor,
    row_index: torch.Tensor,
    ranked: torch.Tensor,
    keep: int,
    width: int,
    damp: float = DAMP,
    candidates: float = CANDIDATES,
    cross: torch.Tensor | None = None,
) -> torch.Tensor:
    """(G, keep * width) sorted columns: for every row group, the `keep` aligned blocks of `width` columns
    whose least-squares fit of the group's rows loses least, by greedy group Optimal Brain Surgeon.

    Among the group's best-ranked blocks (`ranked` (G, n_blocks), block ids best first; see CANDIDATES)
    the weights are first re-fitted exactly; then the blocks whose removal costs least (with the others
    re-fitted: w_B [H^-1]_BB^-1 w_B^T summed over the group's rows) are removed and the others updated,
    one at a time near the end (a sixteenth of the excess at a time before), until `keep` remain.
    Saliency sums ignore that inputs are correlated; this does not. `gram` is the (in, in) input Gram
    matrix, `cross` (in, in) as in `solve_grouped`."""
    inp = weight.shape[1]
    g, r = row_index.shape
    h = damped(gram.double(), damp).float()  # float32 suffices to rank blocks; the final fit is float64
    w = _padded(weight, g * r).to(h.device)
    c = h if cross is None else cross.float()
    count = min(ranked.shape[1], max(keep, int(round(candidates * keep))), keep + MAX_EXTRA_COLUMNS // width)
    size = count * width
    chunk = max(1, MAX_SOLVE_BYTES // (4 * size * (3 * size + inp + r)))
    chosen = [
        _eliminate(
            w, h, c, row_index[s : s + chunk].to(h.device), ranked[s : s + chunk, :count].to(h.device), keep, width
        )
        for s in range(0, g, chunk)
    ]
    return torch.cat(chosen)


def _padded(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """The float32 (out, in) weight with zero padding rows up to `rows` (a grouped layout's G * R)."""
    return torch.cat([weight.float(), weight.new_zeros(rows - weight.shape[0], weight.shape[1], dtype=torch.float32)])


def _gather2(m: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """m[b][rows[b]][:, cols[b]] for every b of a batch of matrices."""
    return torch.stack([mb.index_select(0, r).index_select(1, c) for mb, r, c in zip(m, rows, cols)])


def _eliminate(
    w: torch.Tensor,
    h: torch.Tensor,
    cross: torch.Tensor,
    row_index: torch.Tensor,
    blocks: torch.Tensor,
    keep: int,
    width: int,
) -> torch.Tensor:
    """`select_blocks` for a batch of groups at once (every group has as many candidate `blocks`). The
    inverse and the fitted weights keep their full size: a removed block's rows and columns are
    downdated to zero in place (a rank-`width` update each), which costs no copy of the inverse."""
    g, count = blocks.shape
    offsets = torch.arange(width, device=h.device)
    cols = (blocks[:, :, None] * width + offsets).reshape(g, -1)
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(_gather2(h.expand(g, -1, -1), cols, cols)))
    wc = (hinv @ (cross[cols] @ w[row_index].transpose(1, 2))).transpose(1, 2)  # (g, R, C): exact fit on candidates
    rows, size = wc.shape[1], hinv.shape[1]
    alive = torch.ones(g, count, dtype=torch.bool, device=h.device)
    eye = torch.eye(width, dtype=hinv.dtype, device=h.device)
    alive_count = count
    for left in _left_after_each_step(count, keep):
        hb = hinv.view(g, count, width, count, width).diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2)  # (g, n, w, w)
        hb = torch.where(alive[:, :, None, None], hb, eye)  # removed blocks: zeros, solved against I
        wb = wc.view(g, rows, count, width).permute(0, 2, 3, 1)  # (g, n, w, R)
        cost = (wb * torch.linalg.solve(hb, wb)).sum(dim=(2, 3)).masked_fill(~alive, torch.inf)
        gone = torch.argsort(cost, dim=1, stable=True)[:, : alive_count - left]  # (g, d) cheapest blocks
        idx = (gone[:, :, None] * width + offsets).reshape(g, -1)  # their columns (g, d * w)
        h_cols = hinv.gather(2, idx[:, None, :].expand(-1, size, -1))  # (g, C, d * w)
        inv_dd = torch.linalg.inv(h_cols.gather(1, idx[:, :, None].expand(-1, -1, idx.shape[1])))
        wc -= (wc.gather(2, idx[:, None, :].expand(-1, rows, -1)) @ inv_dd) @ h_cols.transpose(1, 2)
        hinv.baddbmm_(h_cols @ inv_dd, h_cols.transpose(1, 2), alpha=-1)
        alive.scatter_(1, gone, False)
        wc.masked_fill_(~alive.repeat_interleave(width, dim=1)[:, None, :], 0.0)  # exact zeros, no drift
        alive_count = left
    picked = blocks[alive].view(g, keep)
    return torch.sort((picked[:, :, None] * width + offsets).reshape(g, -1), dim=1).values


def _left_after_each_step(count: int, keep: int) -> list[int]:
    """Blocks left after each elimination step: a sixteenth of the excess at a time, one at a time near the end."""
    steps, left = [], count
    while left > keep:
        left -= max(1, (left - keep) // 16)
        steps.append(left)
    return steps


def explained(wh: torch.Tensor, h: torch.Tensor, col_index: torch.Tensor) -> torch.Tensor:
    """(rows, G): the output energy w H w^T of each row w that the least-squares fit on each group's
    columns S reproduces, ||L^-1 H[S, :] w^T||^2 with L L^T = H[S, S]. `wh` is W H (H symmetric, so its
    columns S are H[S, :] w^T), `h` the damped Gram matrix."""
    return torch.stack([_energy(wh[:, cols], h[cols][:, cols]) for cols in col_index], dim=1)


def _energy(wh_s: torch.Tensor, h_ss: torch.Tensor) -> torch.Tensor:
    z = torch.linalg.solve_triangular(torch.linalg.cholesky(h_ss), wh_s.t(), upper=False)
    return (z * z).sum(dim=0)


def _residual(
    wh: torch.Tensor, h: torch.Tensor, total: float, row_index: torch.Tensor, col_index: torch.Tensor
) -> float:
    """The layer's least-squares residual (`total` = sum of w H w^T) when group g holds rows row_index[g]."""
    return total - sum(float(_energy(wh[r][:, c], h[c][:, c]).sum()) for r, c in zip(row_index, col_index))


def regroup(
    weight: torch.Tensor,
    gram: torch.Tensor,
    row_index: torch.Tensor,
    col_index: torch.Tensor,
    choose: Callable[[torch.Tensor], torch.Tensor],
    rounds: int = REGROUP_ROUNDS,
    damp: float = DAMP,
    cross: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row_index, col_index) after up to `rounds` alternations: every row moves to the group whose
    columns reproduce most of its output (groups keep their size), then `choose(row_index)` picks each
    group's columns again. A round is kept only when it lowers the least-squares residual, so the result
    is never worse than the input. `weight` is (out, in); padding rows (ids >= out) carry nothing."""
    if rounds <= 0:
        return row_index, col_index
    g, r = row_index.shape
    h = damped(gram.double(), damp).float()
    w = _padded(weight, g * r).to(h.device)
    wh = w @ (h if cross is None else cross.float()).t()  # its columns S: the right-hand sides C[S, :] w^T
    total = float((w @ h * w).sum())  # (an offset: with dense targets the true total differs by a constant)
    best = _residual(wh, h, total, row_index.to(h.device), col_index.to(h.device))
    for _ in range(rounds):
        group = torch.as_tensor(balanced_assign(explained(wh, h, col_index.to(h.device)).double().cpu().numpy(), r))
        rows = torch.argsort(group, stable=True).reshape(g, r)
        cols = choose(rows)
        residual = _residual(wh, h, total, rows.to(h.device), cols.to(h.device))
        if residual >= best:
            break
        best, row_index, col_index = residual, rows, cols
    return row_index, col_index


def fit_calibrated(
    pattern: Pattern,
    weight: torch.Tensor,
    gram: torch.Tensor,
    weight_shape: tuple[int, ...],
    sparsity: float,
    seed: int,
    kind: str = "obs",
    damp: float = DAMP,
    candidates: float = CANDIDATES,
    rounds: int = REGROUP_ROUNDS,
    cross: torch.Tensor | None = None,
) -> SparseMask:
    """The grouped structure of `pattern` (RBGP4) chosen from calibration data: row groups fitted to the
    `kind` saliency at micro-block granularity (`pattern.fit`), each group's blocks chosen by
    `select_blocks` among its best-ranked ones, then `regroup`ed. `weight` is the (out, in) matrix,
    `gram` the (in, in) Gram, `cross` the (in, in) cross products of `solve_grouped`."""
    score = saliency(weight, gram, kind, damp)
    fitted = cast(RBGP4, pattern).fit(score.cpu().numpy(), weight_shape, sparsity, seed, micro_blocks=True)
    layout, width = fitted.layout, fitted.info["fit_unit"]
    assert layout is not None  # a fitted mask carries its layout
    out, inp = weight.shape
    padded = torch.cat([score, score.new_zeros(layout.row_index.size - out, inp)])

    def choose(rows: torch.Tensor) -> torch.Tensor:
        mass = padded[rows].sum(dim=1).view(rows.shape[0], inp // width, width).sum(dim=2)  # (G, blocks)
        ranked = torch.argsort(mass, dim=1, descending=True, stable=True)
        return select_blocks(weight, gram, rows, ranked, layout.cols_per_group // width, width, damp, candidates, cross)

    first = torch.as_tensor(layout.row_index)
    rows, col_index = regroup(weight, gram, first, choose(first), choose, rounds, damp, cross)
    cols = col_index.cpu().numpy().astype(np.int64)
    chosen = GroupedLayout(layout.out_features, layout.in_features, rows.cpu().numpy().astype(np.int64), cols)
    keep = {k: fitted.info[k] for k in ("plan", "fit_unit", "ramanujan_spectral_gap") if k in fitted.info}
    return fitted_mask(
        fitted.kind,
        tuple(weight_shape),
        chosen,
        cols[:, ::width] // width,
        inp // width,
        {**keep, "fitted": f"calibrated ({kind})", "candidates": candidates},
    )
