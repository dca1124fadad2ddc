"""Baseline patterns to compare RBGP against: unstructured, block, N:M and two-level (HBsNN) blocks.

All are random static masks (a pure function of shape, sparsity and seed: every seed draws its own
mask from np.random.default_rng([seed, pattern tag])); magnitude-based choices come with training.
Counts are exact: a layer at sparsity s keeps round((1-s)*size) units. Each build refuses, before
allocating, a shape whose dense mask and temporaries would not fit in memory (`estimate`, measured
peaks per mask cell).
"""

from __future__ import annotations

import numpy as np

from rbgp.patterns import resources
from rbgp.patterns.base import (
    INDEX_BYTES,
    Pattern,
    SparseMask,
    bsr_bytes,
    check_int,
    check_sparsity,
    csr_bytes,
    matrix_shape,
)
from rbgp.patterns.fit import top_k_mask


def _rng(seed: int, kind: str) -> np.random.Generator:
    return np.random.default_rng([check_int("seed", seed, 0), sum(map(ord, kind))])


def _keep(rng: np.random.Generator, total: int, density: float) -> np.ndarray:
    """A boolean vector of `total` entries with round(density*total) (at least 1) set at random."""
    keep = np.zeros(total, dtype=bool)
    keep[rng.permutation(total)[: max(1, round(density * total))]] = True
    return keep


def _block_shape(name: str, block: tuple[int, int]) -> tuple[int, int]:
    if not (isinstance(block, (tuple, list)) and len(block) == 2):
        raise ValueError(f"{name} must be a pair (height, width), got {block!r}")
    return check_int(f"{name}[0]", block[0]), check_int(f"{name}[1]", block[1])


def _check_tiles(shape: tuple[int, int], block: tuple[int, int], what: str) -> None:
    if shape[0] % block[0] or shape[1] % block[1]:
        raise ValueError(
            f"{what} {block} does not tile the weight matrix {shape} (out, in*kh*kw); "
            f"choose a {what} whose sides divide {shape[0]} and {shape[1]}"
        )


def _expand(blocks: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    return np.kron(blocks, np.ones(block, dtype=bool)).astype(bool)


class Unstructured(Pattern):
    """Random unstructured sparsity: any single weight may be kept."""

    kind = "unstructured"

    def estimate(self, weight_shape, sparsity) -> resources.Cost:
        m, n = matrix_shape(weight_shape)
        check_sparsity(sparsity)
        return resources.dense_mask_cost(m, n, 9, 1e-7)  # the mask and an int64 permutation of its cells

    def build(self, weight_shape, sparsity, seed=0) -> SparseMask:
        density = 1.0 - check_sparsity(sparsity)
        m, n = matrix_shape(weight_shape)
        self.check_resources(weight_shape, sparsity)
        mask = _keep(_rng(seed, self.kind), m * n, density).reshape(m, n)
        return SparseMask(self.kind, tuple(weight_shape), mask, csr_bytes(mask))

    def fit(self, weight, weight_shape, sparsity, seed=0) -> SparseMask:
        """Magnitude pruning: the largest entries of |weight|."""
        mask = top_k_mask(weight, check_sparsity(sparsity))
        return SparseMask(self.kind, tuple(weight_shape), mask, csr_bytes(mask), info={"fitted": "magnitude"})


class Block(Pattern):
    """Random block sparsity: dense `block` tiles kept or dropped whole (BSR-friendly)."""

    kind = "block"

    def __init__(self, block: tuple[int, int] = (16, 16)) -> None:
        self.block = _block_shape("block", block)

    def estimate(self, weight_shape, sparsity) -> resources.Cost:
        m, n = matrix_shape(weight_shape)
        check_sparsity(sparsity)
        blocks = (m // self.block[0]) * (n // self.block[1])
        return resources.dense_mask_cost(m, n, 2, 5e-9) + resources.cost(9 * blocks, 1e-7 * blocks)

    def build(self, weight_shape, sparsity, seed=0) -> SparseMask:
        density = 1.0 - check_sparsity(sparsity)
        m, n = matrix_shape(weight_shape)
        _check_tiles((m, n), self.block, "block")
        self.check_resources(weight_shape, sparsity)
        grid = (m // self.block[0], n // self.block[1])
        blocks = _keep(_rng(seed, self.kind), grid[0] * grid[1], density).reshape(grid)
        mask = _expand(blocks, self.block)
        return SparseMask(self.kind, tuple(weight_shape), mask, bsr_bytes(mask, self.block), self.block)

    def fit(self, weight, weight_shape, sparsity, seed=0) -> SparseMask:
        """The blocks with the largest L1 norm."""
        m, n = matrix_shape(weight_shape)
        _check_tiles((m, n), self.block, "block")
        (bh, bw), sparsity = self.block, check_sparsity(sparsity)
        norms = np.abs(weight).reshape(m // bh, bh, n // bw, bw).sum(axis=(1, 3))
        mask = _expand(top_k_mask(norms, sparsity), self.block)
        return SparseMask(
            self.kind, tuple(weight_shape), mask, bsr_bytes(mask, self.block), self.block, info={"fitted": "magnitude"}
        )


class NM(Pattern):
    """N:M sparsity: in every run of M consecutive inputs of a row, N are kept (2:4 on GPUs)."""

    kind = "nm"

    def __init__(self, n: int = 2, m: int = 4) -> None:
        self.n, self.m = check_int("n", n), check_int("m", m)
        if self.n >= self.m:
            raise ValueError(f"N:M needs n < m, got {self.n}:{self.m}")

    def nearest_sparsity(self, weight_shape, sparsity: float) -> float | None:
        return super().nearest_sparsity(weight_shape, 1.0 - self.n / self.m)

    def estimate(self, weight_shape, sparsity) -> resources.Cost:
        rows, cols = matrix_shape(weight_shape)
        check_sparsity(sparsity)
        return resources.dense_mask_cost(rows, cols, 17, 1e-7)  # float64 keys and int64 ranks per cell

    def build(self, weight_shape, sparsity, seed=0) -> SparseMask:
        sparsity = check_sparsity(sparsity)
        implied = 1.0 - self.n / self.m
        if abs(sparsity - implied) > 1e-9:
            raise ValueError(f"{self.n}:{self.m} sparsity is exactly {implied:g}, got sparsity={sparsity!r}")
        rows, cols = matrix_shape(weight_shape)
        if cols % self.m:
            raise ValueError(f"in features {cols} must be a multiple of m={self.m} for {self.n}:{self.m} sparsity")
        self.check_resources(weight_shape, sparsity)
        rng = _rng(seed, self.kind)
        ranks = rng.random((rows, cols // self.m, self.m)).argsort(axis=2).argsort(axis=2)
        mask = (ranks < self.n).reshape(rows, cols)
        return self._mask(weight_shape, mask)

    def _mask(self, weight_shape, mask: np.ndarray, info: dict | None = None) -> SparseMask:
        # the metadata of a compressed N:M tensor: one position (2 bits for 2:4) per kept value
        meta_bits = max(1, int(np.ceil(np.log2(self.m))))
        return SparseMask(
            self.kind, tuple(weight_shape), mask, int(mask.sum()) * meta_bits // 8, (1, self.m), info=info or {}
        )

    def fit(self, weight, weight_shape, sparsity, seed=0) -> SparseMask:
        """The n largest |w| of every run of m."""
        self.build(weight_shape, sparsity, seed)  # the same checks
        rows, cols = matrix_shape(weight_shape)
        ranks = (-np.abs(weight)).reshape(rows, cols // self.m, self.m).argsort(axis=2, kind="stable").argsort(axis=2)
        return self._mask(weight_shape, (ranks < self.n).reshape(rows, cols), {"fitted": "magnitude"})


class HBsNN(Pattern):
    """Two-level (hierarchical) block sparsity: kept `block`s, and inside each, kept `sub_block`s.

    `outer_density` is the fraction of blocks kept; the rest of the density is spent inside the kept
    blocks, each drawing its own sub-block pattern (unlike an RBGP product, which repeats one).
    """

    kind = "hbsnn"

    def __init__(
        self,
        block: tuple[int, int] = (32, 32),
        sub_block: tuple[int, int] = (4, 4),
        outer_density: float | None = None,
    ) -> None:
        self.block = _block_shape("block", block)
        self.sub_block = _block_shape("sub_block", sub_block)
        _check_tiles(self.block, self.sub_block, "sub_block")
        if outer_density is not None and not 0.0 < outer_density <= 1.0:
            raise ValueError(f"outer_density must be in (0, 1], got {outer_density!r}")
        self.outer_density = outer_density

    def estimate(self, weight_shape, sparsity) -> resources.Cost:
        m, n = matrix_shape(weight_shape)
        check_sparsity(sparsity)
        blocks = (m // self.block[0]) * (n // self.block[1])
        subs = (m // self.sub_block[0]) * (n // self.sub_block[1])
        return (
            resources.dense_mask_cost(m, n, 2, 1e-8)
            + resources.cost(9 * blocks, 1e-7 * blocks)
            + resources.cost(18 * subs, 5e-8 * subs)
        )

    def build(self, weight_shape, sparsity, seed=0) -> SparseMask:
        density = 1.0 - check_sparsity(sparsity)
        m, n = matrix_shape(weight_shape)
        _check_tiles((m, n), self.block, "block")
        outer = self.outer_density if self.outer_density is not None else float(np.sqrt(density))
        if outer < density:
            raise ValueError(f"outer_density={outer!r} is below the target density {density:g}")
        self.check_resources(weight_shape, sparsity)
        rng = _rng(seed, self.kind)
        grid = (m // self.block[0], n // self.block[1])
        sub_grid = (self.block[0] // self.sub_block[0], self.block[1] // self.sub_block[1])
        kept = _keep(rng, grid[0] * grid[1], outer)
        inner = density * kept.size / kept.sum()  # keep the overall density on target after rounding
        # Each kept block keeps the first `per_block` entries of its own random permutation of its
        # sub-blocks (one permutation per block, in block order, drawn in one call).
        kept_ids = np.flatnonzero(kept)
        per_sub = sub_grid[0] * sub_grid[1]
        per_block = max(1, round(min(1.0, inner) * per_sub))
        perms = rng.permuted(np.tile(np.arange(per_sub), (kept_ids.size, 1)), axis=1)
        subs: np.ndarray = np.zeros((grid[0] * grid[1], per_sub), dtype=bool)
        subs[kept_ids[:, None], perms[:, :per_block]] = True
        subs = subs.reshape(grid[0] * grid[1], *sub_grid)
        fine = subs.reshape(*grid, *sub_grid).transpose(0, 2, 1, 3).reshape(grid[0] * sub_grid[0], -1)
        mask = _expand(fine, self.sub_block)
        # two-level BSR: one index per kept block plus one per kept sub-block
        structure = (grid[0] + 1 + int(kept.sum()) + int(kept.sum()) + 1 + int(subs.sum())) * INDEX_BYTES
        info = {"outer_density": float(kept.mean()), "block": list(self.block), "sub_block": list(self.sub_block)}
        return SparseMask(self.kind, tuple(weight_shape), mask, structure, self.sub_block, info=info)
