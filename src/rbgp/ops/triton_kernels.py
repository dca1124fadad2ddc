"""Triton kernels for grouped-sparse (RBGP) layers: forward, grad-input and grad-weight.

The weight W (out, in) is stored as values V (G, R, K): the R rows `row_index[g]` of group g all read the
same K input columns, so every group is one dense (R x K) sub-GEMM. Columns are addressed through the
small factor-level table `col_blocks` (G, K // BW): column k of group g is
`col_blocks[g, k // BW] * BW + k % BW` (BW is the micro-block width; BW = 1 makes `col_blocks` the plain
column list). No kernel reads an index per non-zero.

What each program computes (the plain PyTorch version of every kernel is next to it, `*_reference`):

- `grouped_fwd_kernel`, grid (N tiles, R tiles, G): Y[n, row(g, r)] = sum_k X[n, col(g, k)] V[g, r, k]
  for its (BLOCK_N x BLOCK_R) tile, looping over K in BLOCK_K chunks (gathered X tile, V tile, tl.dot).
- `grouped_bwd_input_kernel`, grid (column tiles, N tiles): the transposed pattern. Input column block b
  is read by the (group, block slot) pairs listed in `col_entries[b]` (padded with -1); the program
  owns BLOCK_C columns of one block and a BLOCK_N batch tile and accumulates
  dX[n, c] = sum_(g, kb) sum_r dY[n, row(g, r)] V[g, r, kb * BW + c % BW]. Every dX element is written
  by exactly one program with a fixed summation order: no atomics, bitwise deterministic, and columns
  that no group reads come out as zeros. (A scatter with tl.atomic_add would work on any layout but is
  run-to-run nondeterministic in fp32 and needs an fp32 buffer plus a cast.)
- `grouped_bwd_values_kernel`, grid (K tiles, R tiles, G): dV[g, r, k] = sum_n dY[n, row(g, r)] X[n, col(g, k)],
  the weight gradient sampled on the non-zeros only, looping over N in BLOCK_N chunks.

Precision: tiles are loaded in the tensor dtype (fp16, bf16 or fp32) and multiplied by tl.dot with fp32
accumulation; the result is rounded once to the output dtype. For fp32 inputs `INPUT_PRECISION` decides
whether the tensor cores run TF32 ("tf32", "tf32x3") or exact fp32 FMAs ("ieee", our default, so the
kernels compare like with like against fp32 cuBLAS with TF32 off). It is ignored for 16-bit inputs.

`EMULATE_BF16` is set by the launcher only under Triton's CPU interpreter (TRITON_INTERPRET=1) with bf16
tensors: the interpreter multiplies bf16 tiles as raw uint16 bit patterns and truncates fp32 -> bf16,
so bf16 tiles are cast to fp32 before tl.dot (exact: bf16 products are exact in fp32) and the output is
rounded to nearest even by hand. On a GPU the flag is off and bf16 tiles go to the tensor cores natively.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# triton.jit picks the interpreter at decoration time, so this module's kernels are interpreted iff
# TRITON_INTERPRET=1 was set before it was first imported.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _dot_operand(t, EMULATE_BF16: tl.constexpr):
    """A tile ready for tl.dot: unchanged, or cast to fp32 where the interpreter cannot do bf16."""
    if EMULATE_BF16:
        t = t.to(tl.float32)
    return t


@triton.jit
def _round_bf16(acc, EMULATE_BF16: tl.constexpr):
    """fp32 values that convert exactly to bf16 (round to nearest even by hand): the interpreter's own
    fp32 -> bf16 cast truncates. A no-op unless EMULATE_BF16."""
    if EMULATE_BF16:
        bits = acc.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        acc = bits.to(tl.float32, bitcast=True)
    return acc


@triton.jit
def _mma(a, b, acc, INPUT_PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """acc + a @ b for an (M, K) and a (K, N) tile: tl.dot (tensor cores) when every dim is at least
    16, else fp32 FMAs over a broadcast product, so that small row groups (2-8 rows) or narrow blocks
    are not padded to the 16 that tl.dot needs."""
    if a.shape[0] < 16 or a.shape[1] < 16 or b.shape[1] < 16:
        acc += tl.sum(a.to(tl.float32)[:, :, None] * b.to(tl.float32)[None, :, :], axis=1)
    else:
        acc = tl.dot(_dot_operand(a, EMULATE_BF16), _dot_operand(b, EMULATE_BF16), acc, input_precision=INPUT_PRECISION)
    return acc


@triton.jit
def _block_columns(cblk_ptr, g, offs_k, mask_k, KB, BW: tl.constexpr, CONTIG: tl.constexpr):
    """Input columns col(g, k) of the positions `offs_k`, from the (G, K // BW) block table.

    K is a multiple of BW, so each aligned run of CONTIG positions (a power of two dividing BW, at most
    BLOCK_K) is either all valid or all masked, and its columns are contiguous from a multiple of
    CONTIG: the hints let the compiler vectorise the gathered loads.
    """
    blk = tl.load(cblk_ptr + g * KB + offs_k // BW, mask=mask_k, other=0)
    cols = blk.to(tl.int64) * BW + offs_k % BW
    return tl.max_contiguous(tl.multiple_of(cols, CONTIG), CONTIG)


@triton.jit
def grouped_fwd_kernel(
    x_ptr,
    v_ptr,
    y_ptr,
    rows_ptr,
    cblk_ptr,
    N,
    R,
    K,
    KB,
    stride_xn,
    stride_xi,
    stride_vg,
    stride_vr,
    stride_vk,
    stride_yn,
    stride_yo,
    BW: tl.constexpr,
    BW_ALIGN: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    EMULATE_BF16: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Y[n, row(g, r)] = X[n, col(g, :)] . V[g, r, :] for one (BLOCK_N, BLOCK_R) tile of group g."""
    pid_n = tl.program_id(0)
    pid_r = tl.program_id(1)
    g = tl.program_id(2).to(tl.int64)
    CONTIG: tl.constexpr = BW_ALIGN if BW_ALIGN < BLOCK_K else BLOCK_K
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_n = offs_n < N
    mask_r = offs_r < R
    x_rows = x_ptr + offs_n.to(tl.int64)[:, None] * stride_xn
    v_tile = v_ptr + g * stride_vg + offs_r[None, :] * stride_vr
    acc = tl.zeros((BLOCK_N, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        cols = _block_columns(cblk_ptr, g, offs_k, mask_k, KB, BW, CONTIG)
        xt = tl.load(x_rows + cols[None, :] * stride_xi, mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        vt = tl.load(v_tile + offs_k[:, None] * stride_vk, mask=mask_k[:, None] & mask_r[None, :], other=0.0)
        acc = _mma(xt, vt, acc, INPUT_PRECISION, EMULATE_BF16)
    rows = tl.load(rows_ptr + g * R + offs_r, mask=mask_r, other=0)
    y_ptrs = y_ptr + offs_n.to(tl.int64)[:, None] * stride_yn + rows.to(tl.int64)[None, :] * stride_yo
    tl.store(y_ptrs, _round_bf16(acc, EMULATE_BF16).to(y_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_r[None, :])


@triton.jit
def grouped_bwd_input_kernel(
    dy_ptr,
    v_ptr,
    dx_ptr,
    rows_ptr,
    ent_ptr,
    N,
    R,
    KB,
    IN,
    D,
    stride_dyn,
    stride_dyo,
    stride_vg,
    stride_vr,
    stride_vk,
    stride_xn,
    stride_xi,
    BW: tl.constexpr,
    BW_ALIGN: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    EMULATE_BF16: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """dX[n, c] for BLOCK_C columns c of one input block b: sum over the (g, kb) reading b and over r."""
    TILES: tl.constexpr = (BW + BLOCK_C - 1) // BLOCK_C  # column tiles per block
    pid_c = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = pid_c // TILES
    c_in = (pid_c % TILES) * BLOCK_C + tl.arange(0, BLOCK_C)  # offsets inside the block
    cols = b.to(tl.int64) * BW + c_in
    mask_c = (c_in < BW) & (cols < IN)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    dy_rows = dy_ptr + offs_n.to(tl.int64)[:, None] * stride_dyn
    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    for d in range(0, D):
        e = tl.load(ent_ptr + b.to(tl.int64) * D + d)
        rows_used = tl.where(e >= 0, R, 0)  # a -1 pad entry masks every row
        e = tl.maximum(e, 0)
        g = (e // KB).to(tl.int64)
        v_cols = v_ptr + g * stride_vg + ((e % KB) * BW + c_in)[None, :] * stride_vk
        for r0 in range(0, R, BLOCK_R):
            offs_r = r0 + tl.arange(0, BLOCK_R)
            mask_r = offs_r < rows_used
            rows = tl.load(rows_ptr + g * R + offs_r, mask=mask_r, other=0)
            dyt = tl.load(
                dy_rows + rows.to(tl.int64)[None, :] * stride_dyo, mask=mask_n[:, None] & mask_r[None, :], other=0.0
            )
            vt = tl.load(v_cols + offs_r[:, None] * stride_vr, mask=mask_r[:, None] & mask_c[None, :], other=0.0)
            acc = _mma(dyt, vt, acc, INPUT_PRECISION, EMULATE_BF16)
    dx_ptrs = dx_ptr + offs_n.to(tl.int64)[:, None] * stride_xn + cols[None, :] * stride_xi
    tl.store(
        dx_ptrs, _round_bf16(acc, EMULATE_BF16).to(dx_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_c[None, :]
    )


@triton.jit
def grouped_bwd_values_kernel(
    dy_ptr,
    x_ptr,
    dv_ptr,
    rows_ptr,
    cblk_ptr,
    N,
    R,
    K,
    KB,
    stride_dyn,
    stride_dyo,
    stride_xn,
    stride_xi,
    stride_vg,
    stride_vr,
    stride_vk,
    BW: tl.constexpr,
    BW_ALIGN: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    EMULATE_BF16: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """dV[g, r, k] = dY[:, row(g, r)] . X[:, col(g, k)] for one (BLOCK_R, BLOCK_K) tile of group g."""
    pid_k = tl.program_id(0)
    pid_r = tl.program_id(1)
    g = tl.program_id(2).to(tl.int64)
    CONTIG: tl.constexpr = BW_ALIGN if BW_ALIGN < BLOCK_K else BLOCK_K
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_r = offs_r < R
    mask_k = offs_k < K
    rows = tl.load(rows_ptr + g * R + offs_r, mask=mask_r, other=0)
    cols = _block_columns(cblk_ptr, g, offs_k, mask_k, KB, BW, CONTIG)
    dy_cols = dy_ptr + rows.to(tl.int64)[:, None] * stride_dyo
    x_cols = x_ptr + cols[None, :] * stride_xi
    acc = tl.zeros((BLOCK_R, BLOCK_K), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        dyt = tl.load(
            dy_cols + offs_n.to(tl.int64)[None, :] * stride_dyn, mask=mask_r[:, None] & mask_n[None, :], other=0.0
        )
        xt = tl.load(
            x_cols + offs_n.to(tl.int64)[:, None] * stride_xn, mask=mask_n[:, None] & mask_k[None, :], other=0.0
        )
        acc = _mma(dyt, xt, acc, INPUT_PRECISION, EMULATE_BF16)
    dv_ptrs = dv_ptr + g * stride_vg + offs_r[:, None] * stride_vr + offs_k[None, :] * stride_vk
    tl.store(
        dv_ptrs, _round_bf16(acc, EMULATE_BF16).to(dv_ptr.dtype.element_ty), mask=mask_r[:, None] & mask_k[None, :]
    )


# ---- plain PyTorch descriptions of the same computations, on the same tables ----------------------------
# (accumulating in fp32 like the kernels, or in fp64 when given fp64 tensors)


def _acc(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def block_columns_reference(col_blocks: torch.Tensor, block_width: int) -> torch.Tensor:
    """(G, K) input columns of every group from the (G, K // BW) block table, as `_block_columns` computes."""
    offs = torch.arange(block_width, device=col_blocks.device)
    return (col_blocks.long()[:, :, None] * block_width + offs).flatten(1)


def fwd_reference(
    x: torch.Tensor, values: torch.Tensor, row_index: torch.Tensor, col_blocks: torch.Tensor, block_width: int
) -> torch.Tensor:
    """What `grouped_fwd_kernel` computes: y (N, G*R), group by group."""
    cols = block_columns_reference(col_blocks, block_width)
    y = _acc(x.new_zeros(x.shape[0], row_index.numel()))
    for g in range(values.shape[0]):
        y[:, row_index[g].long()] = _acc(x[:, cols[g]]) @ _acc(values[g]).t()
    return y.to(x.dtype)


def bwd_input_reference(
    grad_y: torch.Tensor,
    values: torch.Tensor,
    row_index: torch.Tensor,
    col_entries: torch.Tensor,
    block_width: int,
    in_features: int,
) -> torch.Tensor:
    """What `grouped_bwd_input_kernel` computes: dx (N, in), input block by input block."""
    kb_count = values.shape[2] // block_width
    dx = _acc(grad_y.new_zeros(grad_y.shape[0], in_features))
    for b in range(col_entries.shape[0]):
        cols = slice(b * block_width, min((b + 1) * block_width, in_features))
        for e in col_entries[b].tolist():
            if e < 0:
                continue
            g, kb = divmod(e, kb_count)
            v = _acc(values[g, :, kb * block_width : (kb + 1) * block_width])
            dx[:, cols] += (_acc(grad_y[:, row_index[g].long()]) @ v)[:, : cols.stop - cols.start]
    return dx.to(grad_y.dtype)


def bwd_values_reference(
    grad_y: torch.Tensor, x: torch.Tensor, row_index: torch.Tensor, col_blocks: torch.Tensor, block_width: int
) -> torch.Tensor:
    """What `grouped_bwd_values_kernel` computes: dV (G, R, K) on the non-zeros only."""
    cols = block_columns_reference(col_blocks, block_width)
    dv = torch.stack(
        [_acc(grad_y[:, row_index[g].long()]).t() @ _acc(x[:, cols[g]]) for g in range(row_index.shape[0])]
    )
    return dv.to(x.dtype)
