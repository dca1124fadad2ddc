"""RBGP4 = G_o (x) G_r (x) G_i (x) G_b and the planner that sizes its factors.

| factor | kind       | size          | role                                           |
|--------|------------|---------------|------------------------------------------------|
| G_o    | Ramanujan  | m_o x n_o     | which weight tiles are non-zero                |
| G_r    | complete   | r_h x r_w     | repeats the core pattern inside a tile         |
| G_i    | Ramanujan  | m_i x n_i     | the sparse pattern inside a core               |
| G_b    | complete   | b_h x b_w     | dense micro-blocks                             |

Rows that share one column set (same u_o and u_i) form one dense sub-GEMM of `m_o' * r_h * b_h` rows
(m_o' = m_o when G_o is complete): the planner's `group_rows` sets it, trading speed (big dense
sub-GEMMs, 64+ rows for tensor cores and CPUs) against granularity (more distinct row patterns).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rbgp.graphs import complete, product, ramanujan
from rbgp.patterns.base import Pattern, SparseMask, check_int, check_sparsity, matrix_shape
from rbgp.patterns.rbgp import product_mask


def _halvings(start: int) -> list[int]:
    """start, start/2, ... down to 1 (integer halvings)."""
    out = [start]
    while out[-1] > 1:
        out.append(out[-1] // 2)
    return out


def _pair(name: str, value) -> tuple[int, int]:
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise ValueError(f"{name} must be a pair (height, width), got {value!r}")
    return check_int(f"{name}[0]", value[0]), check_int(f"{name}[1]", value[1])


@dataclass(frozen=True)
class RBGP4Plan:
    """Sizes and degrees of the four factors; a pure description, no graphs built yet."""

    out_features: int
    in_features: int
    outer: tuple[int, int, int]  # (m_o, n_o, left degree d_o)
    repeat: tuple[int, int]  # (r_h, r_w)
    inner: tuple[int, int, int]  # (m_i, n_i, left degree d_i)
    block: tuple[int, int]  # (b_h, b_w)

    @property
    def density(self) -> float:
        return (self.outer[2] / self.outer[1]) * (self.inner[2] / self.inner[1])

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    @property
    def nnz_per_row(self) -> int:
        return self.outer[2] * self.repeat[1] * self.inner[2] * self.block[1]

    @property
    def rows_per_group(self) -> int:
        outer_rows = self.outer[0] if self.outer[2] == self.outer[1] else 1
        return outer_rows * self.repeat[0] * self.block[0]

    def factors(self, seed: int = 0):
        """The four factor graphs [G_o, G_r, G_i, G_b]; the Ramanujan ones drawn from `seed`."""
        (mo, no, do), (mi, ni, di) = self.outer, self.inner
        g_o = complete(mo, no) if do == no else ramanujan(mo, no, do, seed=seed, strict=False)
        g_i = complete(mi, ni) if di == ni else ramanujan(mi, ni, di, seed=seed + 1, strict=False)
        return [g_o, complete(*self.repeat), g_i, complete(*self.block)]

    def describe(self) -> dict:
        return {**asdict(self), "density": self.density, "sparsity": self.sparsity,
                "nnz_per_row": self.nnz_per_row, "rows_per_group": self.rows_per_group}


def _best_degree(m: int, n: int, target: float) -> int | None:
    """Left degree c in [2, n] of an m x n biregular graph (m*c % n == 0, right degree >= 2) nearest
    to target*n; None when there is none."""
    valid = [c for c in range(2, n + 1) if (m * c) % n == 0 and (m * c) // n >= 2]
    return min(valid, key=lambda c: (abs(c / n - target), -c)) if valid else None


def _plan_candidates(out: int, inp: int, density: float, block: tuple[int, int], group_rows: int,
                     outer_density: float, tile: tuple[int, int]) -> list[RBGP4Plan]:
    """Feasible plans from coarse (fast) to fine (flexible); each meets biregularity exactly."""
    plans = []
    for bw in _halvings(block[1]):
        for group in _halvings(group_rows):
            bh = min(block[0], group)
            if out % bh or inp % bw or group % bh:
                continue
            if outer_density < 1.0:
                th, tw = tile
                if out % th or inp % tw or th % group or tw % bw:
                    continue
                mo, no = out // th, inp // tw
                do = _best_degree(mo, no, outer_density)
                if do is None or do == no:
                    continue
                mi, ni, rh = th // group, tw // bw, group // bh
            else:
                if out % group:
                    continue
                mo = no = do = 1
                mi, ni, rh = out // group, inp // bw, group // bh
            inner_target = density / (do / no)
            di = ni if inner_target >= 1.0 else _best_degree(mi, ni, inner_target)
            if di is None:
                continue
            plans.append(RBGP4Plan(out, inp, (mo, no, do), (rh, 1), (mi, ni, di), (bh, bw)))
    return plans


class RBGP4(Pattern):
    """The paper's pattern, G_o (x) G_r (x) G_i (x) G_b, with factor sizes chosen by `plan`.

    block: the dense micro-block G_b (b_h, b_w); group_rows: rows that share a column set (one dense
    sub-GEMM); outer_sparsity: sparsity of the tile graph G_o (0: complete, all sparsity in G_i, as in
    the paper's configurations) with `tile` its vertex size; tol: how far the achieved sparsity may be
    from the requested one (biregular degrees are integers); input_shuffle: stride of a fixed perfect
    shuffle of the inputs (1: none), used by `sparsify` between stacked layers.
    """

    kind = "rbgp4"

    def __init__(
        self,
        block: tuple[int, int] = (1, 16),
        group_rows: int = 128,
        outer_sparsity: float = 0.0,
        tile: tuple[int, int] = (128, 128),
        tol: float = 0.01,
        input_shuffle: int = 1,
    ) -> None:
        self.block = _pair("block", block)
        self.group_rows = check_int("group_rows", group_rows)
        if not 0.0 <= outer_sparsity < 1.0:
            raise ValueError(f"outer_sparsity must be in [0, 1), got {outer_sparsity!r}")
        self.outer_sparsity = float(outer_sparsity)
        self.tile = _pair("tile", tile)
        if not 0.0 <= tol < 1.0:
            raise ValueError(f"tol must be in [0, 1), got {tol!r}")
        self.tol = float(tol)
        self.input_shuffle = check_int("input_shuffle", input_shuffle)

    @classmethod
    def plan(cls, out_features: int, in_features: int, sparsity: float, **kwargs) -> RBGP4Plan:
        """The coarsest plan for (out, in, sparsity); kwargs are RBGP4's parameters (block, ...)."""
        return cls(**kwargs)._plan(out_features, in_features, sparsity)

    def _plan(self, out_features: int, in_features: int, sparsity: float) -> RBGP4Plan:
        """The coarsest plan whose sparsity is within `tol` of the request.

        Raises ValueError that lists the nearest feasible sparsities when none is.
        """
        out = check_int("out_features", out_features)
        inp = check_int("in_features", in_features)
        density = 1.0 - check_sparsity(sparsity)
        if self.outer_sparsity >= sparsity:
            raise ValueError(f"outer_sparsity={self.outer_sparsity:g} must be below sparsity={sparsity:g}")
        plans = _plan_candidates(out, inp, density, self.block, self.group_rows,
                                 1.0 - self.outer_sparsity, self.tile)
        for p in plans:
            if abs(p.sparsity - sparsity) <= self.tol + 1e-12:
                return p
        near = sorted({round(p.sparsity, 6) for p in plans}, key=lambda s: abs(s - sparsity))[:5]
        hint = f"nearest feasible sparsities: {near}" if near else "no sparse RBGP4 plan fits this shape at all"
        raise ValueError(
            f"RBGP4 cannot make a {out}x{in_features} weight {sparsity:g} sparse within tol={self.tol:g} "
            f"(block={self.block}, group_rows<={self.group_rows}; degrees must be integers and the factor "
            f"graphs biregular); {hint}; or pass a larger tol or a smaller block"
        )

    def build(self, weight_shape, sparsity, seed=0) -> SparseMask:
        m, n = matrix_shape(weight_shape)
        plan = self._plan(m, n, sparsity)
        graph = product(*plan.factors(check_int("seed", seed, 0)))
        return product_mask(self.kind, tuple(weight_shape), graph, None, self.input_shuffle,
                            {"plan": plan.describe()})
