"""Launchers for the grouped-sparse Triton kernels: index tables, grids, tile choice and strides.

The kernels take three small int32 tables derived once per layout (`triton_layout`, cached per index
tensor): `row_index` (G, R), `col_blocks` (G, K // BW) and the transposed `col_entries` (in / BW, D).
BW is the widest power of two (<= 128) for which every group's columns are whole aligned runs of BW
(RBGP4 micro-blocks); a layout without that form falls back to BW = 1, where `col_blocks` is the plain
column list. Tiles are autotuned per (N, R, K or BW, dtype) on the GPU from a short config list pruned to
the problem; under the interpreter one small config is used so CPU tests stay fast.

Launchers take any strides (no copies of x, dy or values). Like the grouped torch path, y and dx come
back feature-major (the transposed view of an (features, N) buffer): a group's rows and columns are
scattered over the features, so only along the batch are the kernels' gathered loads and scattered
stores contiguous; with feature-major activations every one of them is (stores of y, loads of the
next layer's x, loads of dy in both backward kernels).
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import torch
import triton
from torch.utils.weak import WeakIdKeyDictionary

from rbgp.ops import triton_kernels as K

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INPUT_PRECISIONS = ("ieee", "tf32", "tf32x3")
MAX_BLOCK_WIDTH = 128
_GRID_YZ_MAX = 65535  # CUDA limit on grid axes 1 and 2


class TritonLayout(NamedTuple):
    """The int32 index tables the kernels read (all on the layout's device)."""

    row_index: torch.Tensor  # (G, R): output row of every group row
    col_blocks: torch.Tensor  # (G, K // BW): column block of every group block slot
    col_entries: torch.Tensor  # (ceil(in / BW), D): g * (K // BW) + slot reading each input block, -1 pads
    block_width: int
    in_features: int


# ---- index tables ------------------------------------------------------------------------------------------

def detect_block_width(col_index: torch.Tensor, max_width: int = MAX_BLOCK_WIDTH) -> int:
    """The widest power of two BW <= max_width such that every group's columns are aligned runs
    [j * BW, j * BW + BW) (in any block order); 1 when there is none."""
    g, k = col_index.shape
    bw = 1
    while bw * 2 <= max_width and k % (bw * 2) == 0:
        bw *= 2
    while bw > 1:
        runs = col_index.reshape(g, k // bw, bw)
        first = runs[:, :, :1]
        if bool(((first % bw) == 0).all()) and torch.equal(runs, first + torch.arange(bw, device=col_index.device)):
            return bw
        bw //= 2
    return 1


def build_triton_layout(row_index: torch.Tensor, col_index: torch.Tensor, in_features: int,
                        block_width: int | None = None) -> TritonLayout:
    """The kernels' tables for one layout; `block_width` is detected when not given (and checked when given)."""
    if row_index.dim() != 2 or col_index.dim() != 2 or row_index.shape[0] != col_index.shape[0]:
        raise ValueError(f"row_index {tuple(row_index.shape)} and col_index {tuple(col_index.shape)} must be "
                         f"(G, R) and (G, K) with the same G")
    g, k = col_index.shape
    if col_index.numel() and (int(col_index.min()) < 0 or int(col_index.max()) >= in_features):
        raise ValueError(f"col_index holds columns outside [0, {in_features})")
    bw = detect_block_width(col_index) if block_width is None else block_width
    if block_width is not None and (k % bw or detect_block_width(col_index, bw) != bw):
        raise ValueError(f"col_index is not made of aligned runs of block_width={block_width}")
    col_blocks = col_index[:, ::bw] // bw if bw > 1 else col_index
    n_blocks = triton.cdiv(in_features, bw)
    flat = col_blocks.reshape(-1)
    counts = torch.bincount(flat, minlength=n_blocks)
    depth = int(counts.max()) if flat.numel() else 0
    order = torch.argsort(flat, stable=True)  # entry e = g * kb + slot, ordered by block then e
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(flat.numel(), device=flat.device) - starts[flat[order]]
    entries = torch.full((n_blocks, max(depth, 1)), -1, dtype=torch.int64, device=flat.device)
    entries[flat[order], slot] = order
    return TritonLayout(row_index.to(torch.int32).contiguous(), col_blocks.to(torch.int32).contiguous(),
                        entries[:, :depth].to(torch.int32).contiguous(), bw, in_features)


_CACHE: WeakIdKeyDictionary = WeakIdKeyDictionary()


def triton_layout(row_index: torch.Tensor, col_index: torch.Tensor, in_features: int) -> TritonLayout:
    """`build_triton_layout`, cached per (col_index, row_index) tensor object: layouts are immutable, so
    the tables (and the one host sync that checks the block form) are built once per layer."""
    entry = _CACHE.get(col_index)
    if entry is not None:
        rows_ref, cached = entry
        if rows_ref() is row_index and cached.in_features == in_features:
            return cached
    cached = build_triton_layout(row_index, col_index, in_features)
    _CACHE[col_index] = (weakref.ref(row_index), cached)
    return cached


# ---- tile configs ------------------------------------------------------------------------------------------

def _configs(names: tuple[str, str, str], tiles: list[tuple[int, int, int, int, int]]) -> list[triton.Config]:
    """Autotune configs from (tile0, tile1, tile2, warps, stages); one small config under the interpreter."""
    if K.INTERPRETED:
        return [triton.Config(dict(zip(names, (16, 16, 16))), num_warps=4, num_stages=1)]
    return [triton.Config(dict(zip(names, t[:3])), num_warps=t[3], num_stages=t[4]) for t in tiles]


def _cap(extent: int) -> int:
    """The largest tile worth trying along a dim of this extent (tl.dot needs at least 16)."""
    return max(16, triton.next_power_of_2(max(extent, 1)))


def _pruner(dims: dict[str, str]):
    """Drop configs whose tile along a dim exceeds that dim (rounded up to a power of two); keep >= 1."""
    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        keep = [c for c in configs if all(c.kwargs[t] <= _cap(int(args[d])) for t, d in dims.items())]
        if keep:
            return keep
        smallest = min(configs, key=lambda c: sum(c.kwargs[t] for t in dims))
        return [smallest]
    return {"early_config_prune": prune}


# (BLOCK_N, BLOCK_R, BLOCK_K, warps, stages): output tile N x R, reduction over K
_FWD_TILES = [(128, 128, 32, 8, 3), (128, 128, 64, 8, 3), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4),
              (128, 64, 64, 4, 3), (64, 64, 64, 4, 3), (128, 32, 64, 4, 3), (64, 32, 64, 4, 4),
              (128, 16, 64, 4, 3), (64, 16, 64, 4, 4)]
# (BLOCK_R, BLOCK_K, BLOCK_N, warps, stages): output tile R x K, reduction over N
_VALUES_TILES = [(128, 128, 32, 8, 3), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (64, 64, 64, 4, 3),
                 (32, 64, 64, 4, 3), (16, 64, 64, 4, 4), (64, 16, 64, 4, 4), (16, 16, 128, 4, 3)]
# (BLOCK_N, BLOCK_C, BLOCK_R, warps, stages): output tile N x C (columns of one block), reduction over R
_INPUT_TILES = [(128, 64, 32, 4, 4), (128, 128, 32, 8, 3), (64, 64, 64, 4, 3), (128, 32, 64, 4, 3),
                (128, 16, 64, 4, 3), (64, 16, 64, 4, 4), (64, 32, 32, 4, 4)]

_fwd = triton.autotune(_configs(("BLOCK_N", "BLOCK_R", "BLOCK_K"), _FWD_TILES), key=["N", "R", "K"],
                       prune_configs_by=_pruner({"BLOCK_N": "N", "BLOCK_R": "R", "BLOCK_K": "K"}))(
    K.grouped_fwd_kernel)
_bwd_values = triton.autotune(_configs(("BLOCK_R", "BLOCK_K", "BLOCK_N"), _VALUES_TILES), key=["N", "R", "K"],
                              prune_configs_by=_pruner({"BLOCK_R": "R", "BLOCK_K": "K"}))(
    K.grouped_bwd_values_kernel)
_bwd_input = triton.autotune(_configs(("BLOCK_N", "BLOCK_C", "BLOCK_R"), _INPUT_TILES), key=["N", "R", "D", "BW"],
                             prune_configs_by=_pruner({"BLOCK_N": "N", "BLOCK_C": "BW", "BLOCK_R": "R"}))(
    K.grouped_bwd_input_kernel)


# ---- checks ------------------------------------------------------------------------------------------------

def _flags(dtype: torch.dtype, device: torch.device, input_precision: str) -> dict:
    """Constexpr flags of one launch: the dot precision and the interpreter's bf16 emulation."""
    if dtype not in DTYPES:
        raise ValueError(f"triton kernels take {[str(d) for d in DTYPES]}, got {dtype}")
    if input_precision not in INPUT_PRECISIONS:
        raise ValueError(f"input_precision must be one of {INPUT_PRECISIONS}, got {input_precision!r}")
    if device.type != "cuda" and not K.INTERPRETED:
        raise ValueError(f"triton kernels need CUDA tensors, got {device.type} tensors; to run them on the CPU set "
                         f"TRITON_INTERPRET=1 before rbgp.ops.triton_kernels is first imported")
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


def _check_layout(values: torch.Tensor, lay: TritonLayout) -> tuple[int, int, int, int]:
    g, r, k = values.shape
    kb = lay.col_blocks.shape[1]
    if lay.row_index.shape != (g, r) or kb * lay.block_width != k or lay.col_blocks.shape[0] != g:
        raise ValueError(f"values shape {tuple(values.shape)} does not match the layout tables "
                         f"(rows {tuple(lay.row_index.shape)}, {kb} blocks of {lay.block_width} columns)")
    if lay.row_index.device != values.device:
        raise ValueError(f"layout tables are on {lay.row_index.device}, values on {values.device}")
    return g, r, k, kb


# ---- launchers ---------------------------------------------------------------------------------------------

def grouped_forward(x: torch.Tensor, values: torch.Tensor, lay: TritonLayout,
                    input_precision: str = "ieee") -> torch.Tensor:
    """y (N, G*R) = x W^T, feature-major; x (N, in) with any strides, values (G, R, K)."""
    flags = _flags(x.dtype, x.device, input_precision)
    _check_same("values", values, x)
    g, r, k, kb = _check_layout(values, lay)
    if x.dim() != 2 or x.shape[1] != lay.in_features:
        raise ValueError(f"x must be (N, {lay.in_features}), got {tuple(x.shape)}")
    n = x.shape[0]
    y = x.new_empty(g * r, n).t()
    if n == 0:
        return y
    _check_grid("groups", g)
    _check_grid("row tiles", triton.cdiv(r, 16))
    grid = lambda m: (triton.cdiv(n, m["BLOCK_N"]), triton.cdiv(r, m["BLOCK_R"]), g)  # noqa: E731
    _fwd[grid](x, values, y, lay.row_index, lay.col_blocks, n, r, k, kb,
               x.stride(0), x.stride(1), *values.stride(), y.stride(0), y.stride(1),
               BW=lay.block_width, **flags)
    return y


def grouped_grad_input(grad_y: torch.Tensor, values: torch.Tensor, lay: TritonLayout,
                       input_precision: str = "ieee") -> torch.Tensor:
    """dx (N, in) = dy W over the transposed pattern (deterministic, no atomics), feature-major; dy (N, G*R)."""
    flags = _flags(grad_y.dtype, grad_y.device, input_precision)
    _check_same("values", values, grad_y)
    g, r, k, kb = _check_layout(values, lay)
    if grad_y.dim() != 2 or grad_y.shape[1] != g * r:
        raise ValueError(f"grad_y must be (N, {g * r}), got {tuple(grad_y.shape)}")
    n = grad_y.shape[0]
    dx = grad_y.new_empty(lay.in_features, n).t()
    if n == 0 or lay.in_features == 0:
        return dx
    n_blocks, depth = lay.col_entries.shape
    bw = lay.block_width
    grid = lambda m: (n_blocks * triton.cdiv(bw, m["BLOCK_C"]), triton.cdiv(n, m["BLOCK_N"]))  # noqa: E731
    _check_grid("batch tiles", triton.cdiv(n, 16))
    _bwd_input[grid](grad_y, values, dx, lay.row_index, lay.col_entries, n, r, kb, lay.in_features, depth,
                     grad_y.stride(0), grad_y.stride(1), *values.stride(), dx.stride(0), dx.stride(1),
                     BW=bw, **flags)
    return dx


def grouped_grad_values(grad_y: torch.Tensor, x: torch.Tensor, lay: TritonLayout,
                        input_precision: str = "ieee") -> torch.Tensor:
    """dV (G, R, K) = dy^T x sampled on the non-zeros; dy (N, G*R), x (N, in)."""
    flags = _flags(x.dtype, x.device, input_precision)
    _check_same("grad_y", grad_y, x)
    g, r = lay.row_index.shape
    kb = lay.col_blocks.shape[1]
    k = kb * lay.block_width
    if grad_y.dim() != 2 or x.dim() != 2 or grad_y.shape[0] != x.shape[0] or grad_y.shape[1] != g * r \
            or x.shape[1] != lay.in_features:
        raise ValueError(f"grad_y {tuple(grad_y.shape)} and x {tuple(x.shape)} must be (N, {g * r}) and "
                         f"(N, {lay.in_features})")
    n = x.shape[0]
    dv = x.new_empty(g, r, k)
    if dv.numel() == 0:
        return dv
    _check_grid("groups", g)
    _check_grid("row tiles", triton.cdiv(r, 16))
    grid = lambda m: (triton.cdiv(k, m["BLOCK_K"]), triton.cdiv(r, m["BLOCK_R"]), g)  # noqa: E731
    _bwd_values[grid](grad_y, x, dv, lay.row_index, lay.col_blocks, n, r, k, kb,
                      grad_y.stride(0), grad_y.stride(1), x.stride(0), x.stride(1), *dv.stride(),
                      BW=lay.block_width, **flags)
    return dv
