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

Row labels of conv weights: with channel micro-blocks (`conv_block="channel"`), `build` takes the
product in the order G_o (x) G_i (x) G_r (x) G_b. G_r has one column (the planner's repeat is r_h x 1),
so this is the same graph with only its rows relabelled, such that each row group's rows are
consecutive output channels: the grouped conv's group-major outputs are then already in channel
order and need no reorder (one copy of every conv output saved, forward and backward). The price is
between layers: a layer whose micro-blocks are BW consecutive inputs now reads each of them from one
or two groups of the layer before instead of BW groups. For a 3x3 conv after a 3x3 conv (one channel
per micro-block) that changes nothing but the names; for a 1x1 conv after one (16-channel blocks, as
in bottleneck ResNets) the stack's input-output path coverage (sparsify's report) drops a little.
A linear weight, whose successor is nearly always a linear layer, keeps the paper's order with its
strided groups (row g + G*r), so that each next-layer micro-block mixes BW groups.

Seeding: `build(..., seed)` draws G_o from `seed` and G_i from `seed + 1` (see `RBGP4Plan.factors`);
every Ramanujan construction honours its seed (the algebraic one by a seeded relabelling of both
sides), so different seeds give different masks with the same degrees and spectrum class, and the
same seed always gives the same mask. Planning is arithmetic (closed-form degrees over a few
halvings of the block width and group size), so any shape is planned in milliseconds; `build` then
estimates the memory of the factors, the product's index lists and the grouped layout and refuses
(before building them) a request that does not fit the limit (`rbgp.patterns.resources`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from rbgp.graphs import complete, near_biregular, product, ramanujan
from rbgp.patterns import resources
from rbgp.patterns.base import (
    Pattern,
    SparseMask,
    check_int,
    check_sparsity,
    matrix_shape,
)
from rbgp.patterns.fit import fit_grouped, fitted_mask
from rbgp.patterns.layout import GroupedLayout
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


EXACT_TOL = 0.01
"""Plans this close to the requested sparsity are preferred to coarser ones further away (a larger
`tol` widens what is accepted, not what is preferred)."""

DEFAULT_TOL = 0.01
"""RBGP4's default `tol` (the CLI has no flag for it, so messages mention tol only when it differs)."""

MIN_SPARSITY = 5e-5
"""Plans with a sparsity above 0 but below this (0.0000 at four decimals: c = n - 1 on a huge side) are never
offered as the nearest feasible sparsity."""

MAX_PADDED_ROWS = 1 / 16
"""Largest fraction of padding rows a plan may add to complete its row groups (that much extra work)."""


@dataclass(frozen=True)
class RBGP4Plan:
    """Sizes and degrees of the four factors; a pure description, no graphs built yet.

    `padded_rows` rows complete the last row groups when the output width is not a multiple of the
    group size (computed, then dropped). When `m_i * d_i` is not a multiple of `n_i`, no biregular
    inner graph exists: G_i is then left-regular with column degrees that differ by one.
    """

    out_features: int
    in_features: int
    outer: tuple[int, int, int]  # (m_o, n_o, left degree d_o)
    repeat: tuple[int, int]  # (r_h, r_w)
    inner: tuple[int, int, int]  # (m_i, n_i, left degree d_i)
    block: tuple[int, int]  # (b_h, b_w)
    padded_rows: int = 0

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

    @property
    def biregular(self) -> bool:
        (mo, no, do), (mi, ni, di) = self.outer, self.inner
        return (mo * do) % no == 0 and (mi * di) % ni == 0

    def factors(self, seed: int = 0):
        """The four factor graphs [G_o, G_r, G_i, G_b]: G_o drawn from `seed`, G_i from `seed + 1`
        (complete factors have no seed). A pure function of the plan and the seed; different seeds give
        different graphs (at least one factor is sparse, and every construction honours its seed)."""
        (mo, no, do), (mi, ni, di) = self.outer, self.inner
        g_o = complete(mo, no) if do == no else ramanujan(mo, no, do, seed=seed, strict=False)
        g_i = complete(mi, ni) if di == ni else near_biregular(mi, ni, di, seed=seed + 1)
        return [g_o, complete(*self.repeat), g_i, complete(*self.block)]

    def cost(self) -> resources.Cost:
        """Rough peak memory and time of building this plan's mask: its sparse factor graphs, then the
        product's neighbour lists and the grouped layout (`rbgp.patterns.resources`)."""
        (mo, no, do), (mi, ni, di) = self.outer, self.inner
        total = resources.graph_cost(mi, ni, di, draws=1 if (mi * di) % ni == 0 else 4)
        if do < no:
            total = total + resources.graph_cost(mo, no, do)
        return total + resources.product_layout_cost(self.out_features + self.padded_rows, self.nnz_per_row)

    def describe(self) -> dict:
        return {
            **asdict(self),
            "density": self.density,
            "sparsity": self.sparsity,
            "nnz_per_row": self.nnz_per_row,
            "rows_per_group": self.rows_per_group,
            "biregular": self.biregular,
        }


def _best_degree(m: int, n: int, target: float, biregular: bool) -> int | None:
    """Left degree c in [2, n) of an m x n graph nearest to target*n (ties: the larger), with every
    column read at least twice (m*c >= 2n); with `biregular`, only degrees with m*c % n == 0. None
    when there is none. (c = 1 would leave the graph disconnected: every row group reading one
    block of its own.)"""
    lo = max(2, -(-2 * n // m))
    step = n // math.gcd(m, n) if biregular else 1  # m*c % n == 0  <=>  c is a multiple of n / gcd(m, n)
    below = int(target * n) // step * step
    near = (below, below + step, -(-lo // step) * step, (n - 1) // step * step)  # around the target, or clamped
    valid = [c for c in near if lo <= c < n]
    return min(valid, key=lambda c: (abs(c / n - target), -c)) if valid else None


def _plan_candidates(
    out: int,
    inp: int,
    density: float,
    block: tuple[int, int],
    group_rows: int,
    outer_density: float,
    tile: tuple[int, int],
) -> list[RBGP4Plan]:
    """Feasible plans from coarse (fast) to fine (flexible), biregular and near-biregular ones."""
    plans = []
    for bw in _halvings(block[1]):
        for group in _halvings(group_rows):
            bh = min(block[0], group)
            if inp % bw or group % bh:
                continue
            if outer_density < 1.0:
                th, tw = tile
                if out % bh or out % th or inp % tw or th % group or tw % bw:
                    continue
                mo, no = out // th, inp // tw
                do = _best_degree(mo, no, outer_density, biregular=True)
                if do is None:
                    continue
                mi, ni, rh, pad = th // group, tw // bw, group // bh, 0
            else:
                pad = -out % group
                if pad > out * MAX_PADDED_ROWS:
                    continue
                mo = no = do = 1
                mi, ni, rh = (out + pad) // group, inp // bw, group // bh
            inner_target = density / (do / no)
            if inner_target >= 1.0:
                continue
            for regular in (True, False):
                di = _best_degree(mi, ni, inner_target, biregular=regular)
                if di is not None:
                    plans.append(RBGP4Plan(out, inp, (mo, no, do), (rh, 1), (mi, ni, di), (bh, bw), pad))
    return plans


def _preference(
    plan: RBGP4Plan, sparsity: float, exact: float, min_group_rows: int = 1, min_block_width: int = 1
) -> tuple:
    """Sort key: row groups of at least `min_group_rows` first, micro-blocks at least `min_block_width`
    wide next; then within `exact` of the request; then
    exactly biregular (Ramanujan) plans without padding rows, from coarse to fine (wide micro-blocks,
    then big row groups: fast sub-GEMMs), the order the planner has always used; then the others in the
    same order, padding last."""
    miss = abs(plan.sparsity - sparsity)
    return (
        plan.rows_per_group < min_group_rows,
        plan.block[1] < min_block_width,
        miss > exact + 1e-12,
        not plan.biregular or plan.padded_rows > 0,
        -plan.block[1],
        -plan.rows_per_group,
        plan.padded_rows,
        miss,
    )


def _plain(sparsity: float) -> str:
    """A sparsity as a plain decimal with four places, more where four would show 0 or 1."""
    for places in range(4, 13):
        text = f"{sparsity:.{places}f}".rstrip("0").rstrip(".")
        if 0.0 < float(text) < 1.0:
            return text
    return repr(sparsity)


def _plain_sparsities(plans: list[RBGP4Plan], sparsity: float, count: int = 5) -> list[str]:
    """The `count` distinct plan sparsities nearest to `sparsity`, plainly formatted."""
    out: list[str] = []
    for s in sorted({p.sparsity for p in plans}, key=lambda s: (abs(s - sparsity), s)):
        text = _plain(s)
        if text not in out:
            out.append(text)
        if len(out) == count:
            break
    return out


FALLBACK_DENSITIES = (0.5, 0.25, 0.125, 0.0625)
"""Targets whose plans stand in when every plan near the request is below MIN_SPARSITY (a request for a
sparsity close to 0): the nearest of those are then offered."""


class RBGP4(Pattern):
    """The paper's pattern, G_o (x) G_r (x) G_i (x) G_b, with factor sizes chosen by `plan`.

    block: the dense micro-block G_b (b_h, b_w); group_rows: rows that share a column set (one dense
    sub-GEMM); outer_sparsity: sparsity of the tile graph G_o (0: complete, all sparsity in G_i, as in
    the paper's configurations) with `tile` its vertex size; tol: how far the achieved sparsity may be
    from the requested one (biregular degrees are integers); input_shuffle: stride of a fixed perfect
    shuffle of the inputs (1: none), used by `sparsify` between stacked layers; conv_block: "channel"
    (default) makes a conv weight's micro-block one input channel with all its kh x kw taps, so that
    RBGPConv2d runs as a gathered-channel grouped convolution (no im2col); "block" uses `block` on
    the im2col matrix as for a linear layer; min_group_rows: plans whose row groups have fewer rows are
    taken only when no plan within `tol` has that many (small groups run slowly; the hardware-aware
    distribution sets it); min_block_width: the same for micro-blocks narrower than this (calibrated
    conversion sets it, so that fitted layers keep the kernels' wide-block paths).
    """

    kind = "rbgp4"

    def __init__(
        self,
        block: tuple[int, int] = (1, 16),
        group_rows: int = 128,
        outer_sparsity: float = 0.0,
        tile: tuple[int, int] = (128, 128),
        tol: float = DEFAULT_TOL,
        input_shuffle: int = 1,
        conv_block: str = "channel",
        min_group_rows: int = 1,
        min_block_width: int = 1,
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
        if conv_block not in ("channel", "block"):
            raise ValueError(f"conv_block must be 'channel' or 'block', got {conv_block!r}")
        self.conv_block = conv_block
        self.min_group_rows = check_int("min_group_rows", min_group_rows)
        self.min_block_width = check_int("min_block_width", min_block_width)

    def replace(self, **changes) -> RBGP4:
        """A copy with some parameters changed."""
        return RBGP4(**{**vars(self), **changes})

    def _for_shape(self, weight_shape) -> RBGP4:
        """This pattern as it applies to `weight_shape`: for a conv weight with conv_block="channel",
        micro-blocks of one input channel's kh*kw taps (planned first; finer ones if they do not fit)."""
        taps = math.prod(tuple(weight_shape)[2:])
        if len(tuple(weight_shape)) < 3 or taps == 1 or self.conv_block != "channel":
            return self
        return self.replace(block=(self.block[0], taps), conv_block="block")

    @classmethod
    def plan(cls, out_features: int, in_features: int, sparsity: float, **kwargs) -> RBGP4Plan:
        """The coarsest plan for (out, in, sparsity); kwargs are RBGP4's parameters (block, ...)."""
        return cls(**kwargs)._plan(out_features, in_features, sparsity)

    def _plan(self, out_features: int, in_features: int, sparsity: float, nearest: bool = False) -> RBGP4Plan:
        """The preferred plan (see `_preference`) whose sparsity is within `tol` of the request; with
        `nearest`, the plan nearest to it when none is (plans that are not measurably sparse, below
        MIN_SPARSITY, are never taken as nearest).

        Raises ValueError that lists the nearest feasible sparsities when there is no plan (see
        `_no_plan_message`).
        """
        out = check_int("out_features", out_features)
        inp = check_int("in_features", in_features)
        density = 1.0 - check_sparsity(sparsity)
        if self.outer_sparsity >= sparsity:
            raise ValueError(f"outer_sparsity={self.outer_sparsity:g} must be below sparsity={sparsity:g}")
        plans = _plan_candidates(out, inp, density, self.block, self.group_rows, 1.0 - self.outer_sparsity, self.tile)
        within = [p for p in plans if abs(p.sparsity - sparsity) <= self.tol + 1e-12]
        sparse = [p for p in plans if p.sparsity >= MIN_SPARSITY]
        if not within and not sparse:
            sparse = [
                p
                for d in FALLBACK_DENSITIES
                for p in _plan_candidates(
                    out, inp, d, self.block, self.group_rows, 1.0 - self.outer_sparsity, self.tile
                )
                if p.sparsity >= MIN_SPARSITY and p.sparsity > self.outer_sparsity
            ]
        if within or (nearest and sparse):
            pool = within or [min(sparse, key=lambda p: abs(p.sparsity - sparsity))]
            miss = abs(pool[0].sparsity - sparsity)
            pool = within or [p for p in sparse if abs(abs(p.sparsity - sparsity) - miss) < 1e-12]
            exact = min(self.tol, EXACT_TOL)
            return min(pool, key=lambda p: _preference(p, sparsity, exact, self.min_group_rows, self.min_block_width))
        raise ValueError(self._no_plan_message(out, inp, sparsity, sparse))

    def _no_plan_message(self, out: int, inp: int, sparsity: float, plans: list[RBGP4Plan]) -> str:
        """Why no plan meets the request and the nearest sparsities that can be had. Only the sparsity is
        worth changing: the planner already tries every halving of `block` and `group_rows` down to 1,
        and the finest plans reach every sparsity any other block or group size would (block and
        group_rows trade speed, not feasibility); a sparse outer graph (outer_sparsity > 0) narrows the
        choice, so its removal is suggested when it would help."""
        tol = f" within tol={self.tol:g}" if self.tol != DEFAULT_TOL else ""
        head = (
            f"RBGP4 cannot make a {out}x{inp} weight {sparsity:g} sparse{tol} (tried block={self.block}, "
            f"group_rows={self.group_rows} and every halving of them"
        )
        head += f", outer_sparsity={self.outer_sparsity:g}, tile={self.tile})" if self.outer_sparsity else ")"
        near = _plain_sparsities(plans, sparsity)
        dense_outer = ""
        if self.outer_sparsity:
            try:
                self.replace(outer_sparsity=0.0)._plan(out, inp, sparsity)
                dense_outer = "outer_sparsity=0 (a complete outer graph) reaches it"
            except ValueError:
                pass
        if near:
            return (
                f"{head}; nearest feasible sparsities: {', '.join(near)}; ask for one of them (sparsity, "
                f"--sparsity)" + (f", or use {dense_outer}" if dense_outer else "")
            )
        if dense_outer:
            return f"{head}; no sparse plan with these settings; {dense_outer}"
        return (
            f"{head}; no sparse RBGP4 plan fits a {out}x{inp} weight at all (its sparse inner graph "
            f"needs at least 3 rows and 3 input columns); leave this layer dense or use "
            f"another pattern"
        )

    def estimate(self, weight_shape, sparsity) -> resources.Cost:
        """Rough peak memory and time of `build`, from the plan alone (see `RBGP4Plan.cost`)."""
        m, n = matrix_shape(weight_shape)
        return self._for_shape(weight_shape)._plan(m, n, sparsity).cost()

    def fit(self, weight, weight_shape, sparsity, seed=0, micro_blocks: bool = False) -> SparseMask:
        """The plan's structure fitted to |weight| (or any non-negative saliency of that shape): row
        groups and inner graph chosen to keep the most mass (see `rbgp.patterns.fit`); needs a complete
        outer graph (outer_sparsity=0). Columns are chosen one by one, or with `micro_blocks` a whole
        aligned micro-block (the plan's block width) at a time, which keeps the kernels' fast paths; a
        conv with channel micro-blocks always takes one input channel (all its taps) at a time."""
        if self.outer_sparsity:
            raise ValueError(
                f"init='magnitude' fits RBGP4 plans with a complete outer graph; got "
                f"outer_sparsity={self.outer_sparsity:g} (use 0, or init='keep')"
            )
        m, n = matrix_shape(weight_shape)
        weight = np.asarray(weight).reshape(m, n)
        shaped = self._for_shape(weight_shape)
        plan = shaped._plan(m, n, sparsity)
        channels = shaped is not self and plan.block[1] == shaped.block[1]
        unit = plan.block[1] if channels or micro_blocks else 1
        mass = np.abs(weight).reshape(m, n // unit, unit).sum(axis=2)
        layout, neighbors, history = fit_grouped(mass, plan.inner[0], plan.nnz_per_row // unit)
        if unit > 1:
            cols = (layout.col_index[:, :, None] * unit + np.arange(unit)).reshape(layout.groups, -1)
            layout = GroupedLayout(m, n, layout.row_index, cols)
        ramanujan_gap = plan.factors(check_int("seed", seed, 0))[2].spectral_gap()
        return fitted_mask(
            self.kind,
            tuple(weight_shape),
            layout,
            neighbors,
            n // unit,
            {
                "plan": plan.describe(),
                "fit_unit": unit,
                "kept_mass": history[-1] if history else 0.0,
                "kept_mass_by_round": history,
                "ramanujan_spectral_gap": ramanujan_gap,
            },
        )

    def nearest_sparsity(self, weight_shape, sparsity: float) -> float | None:
        """`sparsity` itself when a plan meets it within `tol`, else the nearest plan's sparsity, or
        None when no sparse plan fits the shape."""
        achieved = self.achieved_sparsity(weight_shape, sparsity)
        if achieved is None:
            return None
        return sparsity if abs(achieved - sparsity) <= self.tol + 1e-12 else achieved

    def achieved_sparsity(self, weight_shape, sparsity: float) -> float | None:
        m, n = matrix_shape(weight_shape)
        try:
            return self._for_shape(weight_shape)._plan(m, n, sparsity, nearest=True).sparsity
        except ValueError:
            return None

    def build(self, weight_shape, sparsity, seed=0) -> SparseMask:
        """The mask of the preferred plan, its factors drawn from `seed` (see `RBGP4Plan.factors`);
        refused with a ResourceError (a ValueError) before any graph is built when the plan's estimated
        memory is above the limit."""
        m, n = matrix_shape(weight_shape)
        plan = self._for_shape(weight_shape)._plan(m, n, sparsity)
        seed = check_int("seed", seed, 0)
        self.check_resources(weight_shape, sparsity, estimate=plan.cost())
        factors = plan.factors(seed)
        if self._for_shape(weight_shape) is not self:  # a conv with channel micro-blocks: rows group-major
            factors = [factors[0], factors[2], factors[1], factors[3]]
        graph = product(*factors)
        return product_mask(
            self.kind, tuple(weight_shape), graph, None, self.input_shuffle, {"plan": plan.describe()}, plan.padded_rows
        )
