"""Launchers for the grouped-sparse Triton kernels: grids, tile choice, strides and checks.

The kernels read the layout's small tables (`rbgp.ops.layout.LayoutTensors`, built once per layer):
`row_index` (G, R), `col_blocks` (G, K // BW) and the transposed `col_entries` (in / BW, D), for
micro-blocks of BW columns. Tiles are autotuned per (N, R, K or BW, dtype) on the GPU from a short
config list pruned to the problem; under the interpreter one small config is used so CPU tests stay fast.

Launchers take any strides (no copies of x, dy or values). Like the grouped torch path, y and dx come
back feature-major (the transposed view of an (features, N) buffer): a group's rows and columns are
scattered over the features, so only along the batch are the kernels' gathered loads and scattered
stores contiguous; with feature-major activations every one of them is (stores of y, loads of the
next layer's x, loads of dy in both backward kernels).
"""

from __future__ import annotations

from typing import cast

import torch
import triton

from rbgp.ops import triton_kernels as K

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INPUT_PRECISIONS = ("ieee", "tf32", "tf32x3")
_GRID_YZ_MAX = 65535  # CUDA limit on grid axes 1 and 2


# ---- tile configs ------------------------------------------------------------------------------------------

SMALL = (1, 2, 4, 8)
"""Tile sizes below tl.dot's 16 for the dims that can be small (rows per group, block width): such
tiles run on FMAs (`triton_kernels._mma`) instead of padding to 16."""
FMA_TILE_MAX = 16384
"""Largest product of the three tile sizes of an FMA tile: its broadcast product is held in registers
(16384 fp32 values are 128 per thread at 4 warps)."""


def _small_copy(tile: tuple[int, int, int, int, int], at: int, size: int) -> tuple[int, int, int, int, int]:
    """`tile` with tile `at` set to `size`, the reduction tile (last of the three), then the first,
    halved down to 16 until the FMA product fits FMA_TILE_MAX."""
    t = list(tile)
    t[at] = size
    for i in (2, 0):
        while t[0] * t[1] * t[2] > FMA_TILE_MAX and t[i] > 16 and i != at:
            t[i] //= 2
    return cast(tuple[int, int, int, int, int], tuple(t))


def _configs(
    names: tuple[str, str, str], tiles: list[tuple[int, int, int, int, int]], small: tuple[int, ...] = ()
) -> list[triton.Config]:
    """Autotune configs from (tile0, tile1, tile2, warps, stages); the third tile is the reduction.
    For each tile position in `small`, copies of the tiles with that tile at each size in SMALL
    (`_small_copy`); under the interpreter one config per size (16 and SMALL), so CPU tests stay fast."""
    if K.INTERPRETED:
        tiles = [(16, 16, 16, 4, 1)]
    tiles = list(tiles) + [_small_copy(t, i, size) for i in small for size in SMALL for t in tiles]
    unique = dict.fromkeys(tiles)
    return [triton.Config(dict(zip(names, t[:3])), num_warps=t[3], num_stages=t[4]) for t in unique]


def _tile_for(extent: int, small: bool) -> tuple[int, int]:
    """The (smallest, largest) tile worth trying along a dim of this extent: from 16 (tl.dot) up to its
    power of two; for a dim that may be `small`, exactly its power of two below 16 (no padding)."""
    p2 = triton.next_power_of_2(max(extent, 1))
    return (p2, p2) if small and p2 < 16 else (16, max(16, p2))


def _pruner(dims: dict[str, str], small: tuple[str, ...] = ()):
    """Keep the configs whose tile along each dim fits that dim (see `_tile_for`); keep >= 1."""

    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        bounds = {t: _tile_for(int(args[d]), t in small) for t, d in dims.items()}
        keep = [c for c in configs if all(lo <= c.kwargs[t] <= hi for t, (lo, hi) in bounds.items())]
        if keep:
            return keep
        smallest = min(configs, key=lambda c: sum(abs(c.kwargs[t] - bounds[t][0]) for t in dims))
        return [smallest]

    return {"early_config_prune": prune}


# (BLOCK_N, BLOCK_R, BLOCK_K, warps, stages): output tile N x R, reduction over K
_FWD_TILES = [
    (128, 128, 32, 8, 3),
    (128, 128, 64, 8, 3),
    (128, 64, 32, 4, 4),
    (64, 128, 32, 4, 4),
    (128, 64, 64, 4, 3),
    (64, 64, 64, 4, 3),
    (128, 32, 64, 4, 3),
    (64, 32, 64, 4, 4),
    (128, 16, 64, 4, 3),
    (64, 16, 64, 4, 4),
]
# (BLOCK_R, BLOCK_K, BLOCK_N, warps, stages): output tile R x K, reduction over N
_VALUES_TILES = [
    (128, 128, 32, 8, 3),
    (128, 64, 32, 4, 4),
    (64, 128, 32, 4, 4),
    (64, 64, 64, 4, 3),
    (32, 64, 64, 4, 3),
    (16, 64, 64, 4, 4),
    (64, 16, 64, 4, 4),
    (16, 16, 128, 4, 3),
]
# (BLOCK_N, BLOCK_C, BLOCK_R, warps, stages): output tile N x C (columns of one block), reduction over R
_INPUT_TILES = [
    (128, 64, 32, 4, 4),
    (128, 128, 32, 8, 3),
    (64, 64, 64, 4, 3),
    (128, 32, 64, 4, 3),
    (128, 16, 64, 4, 3),
    (64, 16, 64, 4, 4),
    (64, 32, 32, 4, 4),
]


def autotuned(fwd_tiles: list, values_tiles: list, input_tiles: list) -> tuple:
    """The three kernels autotuned over the given tile lists (the launchers use the lists above;
    benchmarks/gpu_tune.py tries others)."""
    fwd = triton.autotune(
        _configs(("BLOCK_N", "BLOCK_R", "BLOCK_K"), fwd_tiles, small=(1,)),
        key=["N", "R", "K"],
        prune_configs_by=_pruner({"BLOCK_N": "N", "BLOCK_R": "R", "BLOCK_K": "K"}, ("BLOCK_R",)),
    )(K.grouped_fwd_kernel)
    values = triton.autotune(
        _configs(("BLOCK_R", "BLOCK_K", "BLOCK_N"), values_tiles, small=(0,)),
        key=["N", "R", "K"],
        prune_configs_by=_pruner({"BLOCK_R": "R", "BLOCK_K": "K"}, ("BLOCK_R",)),
    )(K.grouped_bwd_values_kernel)
    grad_input = triton.autotune(
        _configs(("BLOCK_N", "BLOCK_C", "BLOCK_R"), input_tiles, small=(1, 2)),
        key=["N", "R", "D", "BW"],
        prune_configs_by=_pruner({"BLOCK_N": "N", "BLOCK_C": "BW", "BLOCK_R": "R"}, ("BLOCK_C", "BLOCK_R")),
    )(K.grouped_bwd_input_kernel)
    return fwd, values, grad_input


_fwd, _bwd_values, _bwd_input = autotuned(_FWD_TILES, _VALUES_TILES, _INPUT_TILES)


# ---- checks ------------------------------------------------------------------------------------------------


def _flags(dtype: torch.dtype, device: torch.device, input_precision: str) -> dict:
    """Constexpr flags of one launch: the dot precision and the interpreter's bf16 emulation."""
    if dtype not in DTYPES:
        raise ValueError(f"triton kernels take {[str(d) for d in DTYPES]}, got {dtype}")
    if input_precision not in INPUT_PRECISIONS:
        raise ValueError(f"input_precision must be one of {INPUT_PRECISIONS}, got {input_precision!r}")
    if device.type != "cuda" and not K.INTERPRETED:
        raise ValueError(
            f"triton kernels need CUDA tensors, got {device.type} tensors; to run them on the CPU set "
            f"TRITON_INTERPRET=1 before rbgp.ops.triton_kernels is first imported"
        )
    emulate = K.INTERPRETED and dtype == torch.bfloat16
    # input_precision only acts on fp32 operands; 16-bit tiles get Triton's default (a no-op for them)
    precision = "ieee" if emulate else (input_precision if dtype == torch.float32 else "tf32")
    return {"INPUT_PRECISION": precision, "EMULATE_BF16": emulate}


def _check_same(name: str, t: torch.Tensor, ref: torch.Tensor) -> None:
    if t.dtype != ref.dtype or t.device != ref.device:
        raise ValueError(f"{name} is {t.dtype} on {t.device}, expected {ref.dtype} on {ref.device}")


def _check_grid(name: str, extent: int) -> None:
    if extent > _GRID_YZ_MAX:
        raise ValueError(f"{name}={extent} exceeds the grid limit {_GRID_YZ_MAX}; use larger groups")


def _check_tables(
    values: torch.Tensor, row_index: torch.Tensor, kb: int, block_width: int, *tables: torch.Tensor
) -> tuple[int, int, int]:
    g, r, k = values.shape
    if tuple(row_index.shape) != (g, r) or kb * block_width != k:
        raise ValueError(
            f"values shape {tuple(values.shape)} does not match the layout tables "
            f"(rows {tuple(row_index.shape)}, {kb} blocks of {block_width} columns)"
        )
    for t in (row_index, *tables):
        if t.device != values.device:
            raise ValueError(f"layout tables are on {t.device}, values on {values.device}")
    return g, r, k


# ---- launchers ---------------------------------------------------------------------------------------------


def grouped_forward(
    x: torch.Tensor,
    values: torch.Tensor,
    row_index: torch.Tensor,
    col_blocks: torch.Tensor,
    block_width: int,
    input_precision: str = "ieee",
) -> torch.Tensor:
    """y (N, G*R) = x W^T, feature-major; x (N, in) with any strides, values (G, R, K)."""
    flags = _flags(x.dtype, x.device, input_precision)
    _check_same("values", values, x)
    kb = col_blocks.shape[1]
    g, r, k = _check_tables(values, row_index, kb, block_width, col_blocks)
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (N, in), got {tuple(x.shape)}")
    n = x.shape[0]
    y = x.new_empty(g * r, n).t()
    if n == 0:
        return y
    _check_grid("groups", g)
    _check_grid("row tiles", triton.cdiv(r, 16))
    grid = lambda m: (triton.cdiv(n, m["BLOCK_N"]), triton.cdiv(r, m["BLOCK_R"]), g)
    _fwd[grid](
        x,
        values,
        y,
        row_index,
        col_blocks,
        n,
        r,
        k,
        kb,
        x.stride(0),
        x.stride(1),
        *values.stride(),
        y.stride(0),
        y.stride(1),
        BW=block_width,
        BW_ALIGN=block_width & -block_width,
        **flags,
    )
    return y


def grouped_grad_input(
    grad_y: torch.Tensor,
    values: torch.Tensor,
    row_index: torch.Tensor,
    col_entries: torch.Tensor,
    block_width: int,
    in_features: int,
    input_precision: str = "ieee",
) -> torch.Tensor:
    """dx (N, in) = dy W over the transposed pattern (deterministic, no atomics), feature-major; dy (N, G*R)."""
    flags = _flags(grad_y.dtype, grad_y.device, input_precision)
    _check_same("values", values, grad_y)
    kb = values.shape[2] // block_width
    g, r, k = _check_tables(values, row_index, kb, block_width, col_entries)
    if grad_y.dim() != 2 or grad_y.shape[1] != g * r:
        raise ValueError(f"grad_y must be (N, {g * r}), got {tuple(grad_y.shape)}")
    n = grad_y.shape[0]
    dx = grad_y.new_empty(in_features, n).t()
    if n == 0 or in_features == 0:
        return dx
    n_blocks, depth = col_entries.shape
    bw = block_width
    grid = lambda m: (n_blocks * triton.cdiv(bw, m["BLOCK_C"]), triton.cdiv(n, m["BLOCK_N"]))
    _check_grid("batch tiles", triton.cdiv(n, 16))
    _bwd_input[grid](
        grad_y,
        values,
        dx,
        row_index,
        col_entries,
        n,
        r,
        kb,
        in_features,
        depth,
        grad_y.stride(0),
        grad_y.stride(1),
        *values.stride(),
        dx.stride(0),
        dx.stride(1),
        BW=bw,
        BW_ALIGN=bw & -bw,
        **flags,
    )
    return dx


def grouped_grad_values(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    row_index: torch.Tensor,
    col_blocks: torch.Tensor,
    block_width: int,
    input_precision: str = "ieee",
) -> torch.Tensor:
    """dV (G, R, K) = dy^T x sampled on the non-zeros; dy (N, G*R), x (N, in)."""
    flags = _flags(x.dtype, x.device, input_precision)
    _check_same("grad_y", grad_y, x)
    g, r = row_index.shape
    kb = col_blocks.shape[1]
    k = kb * block_width
    if row_index.device != x.device or col_blocks.device != x.device:
        raise ValueError(f"layout tables are on {row_index.device}, x on {x.device}")
    if grad_y.dim() != 2 or x.dim() != 2 or grad_y.shape[0] != x.shape[0] or grad_y.shape[1] != g * r:
        raise ValueError(f"grad_y {tuple(grad_y.shape)} and x {tuple(x.shape)} must be (N, {g * r}) and (N, in)")
    n = x.shape[0]
    dv = x.new_empty(g, r, k)
    if dv.numel() == 0:
        return dv
    _check_grid("groups", g)
    _check_grid("row tiles", triton.cdiv(r, 16))
    grid = lambda m: (triton.cdiv(k, m["BLOCK_K"]), triton.cdiv(r, m["BLOCK_R"]), g)
    _bwd_values[grid](
        grad_y,
        x,
        dv,
        row_index,
        col_blocks,
        n,
        r,
        k,
        kb,
        grad_y.stride(0),
        grad_y.stride(1),
        x.stride(0),
        x.stride(1),
        *dv.stride(),
        BW=block_width,
        BW_ALIGN=block_width & -block_width,
        **flags,
    )
    return dv
