"""The native CPU kernel for small batches (`native/grouped_small.c`), compiled on first use and cached.

At batch 1 to a few dozen the grouped product is bound by reading the values once; the torch path
spends most of its time in fixed costs there (a gather index per call, many small GEMMs, Python).
The C kernel gathers each group's inputs into a small per-thread buffer and takes one dot product
per row and sample, with the values streamed once, the output written in row order (contiguous),
and threads over groups; it reads fp32, bf16 or int8 (per-row scale) values, widened in registers.
From `wide_from()` samples on, its AVX2 build runs as a GEMM micro-kernel on x transposed 24 samples
at a time (tiles of 4 rows by 24 samples, 8 rows where the CPU has AVX-512VL: `wide_rows`, each row's first
16 samples in one 512-bit register there: `vector_bits`), which beats the torch path's batched GEMMs at any
batch of a linear layer (`benchmarks/small_batch.md`).

It is compiled with the system C compiler (`cc`, or $CC) the first time it is needed, into
$RBGP_CACHE_DIR or ~/.cache/rbgp, under a name that hashes the source, the flags and the compiler,
written atomically; its row products come as AVX2+FMA intrinsics and as plain C vectorised by the
compiler, the first where the CPU has them, chosen at run time (`isa`; never -march=native). Dense
layers kept in bf16 or int8 (`dense_small`, `rbgp.nn.StoredLinear`) run on the same row products.
Where it cannot be built or loaded, the torch path runs, with one warning naming why. RBGP_NATIVE=0
turns it off. It is called through ctypes in eager mode (a few microseconds), and
through the custom op `rbgp::grouped_small` when torch.compile or torch.export trace it.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from rbgp.ops.layout import LayoutTensors
from rbgp.ops.workspace import Workspace

SOURCE = Path(__file__).with_name("native") / "grouped_small.c"
FLAGS = ("-O3", "-std=gnu11", "-fopenmp", "-shared", "-fPIC")
MAX_BATCH = 16
"""Batches up to this many rows run on the native kernel's plain-C build (CPU, fp32 inputs, no gradient
wanted); larger ones on the batched GEMMs of the torch path, which win there (`benchmarks/small_batch.md`),
except for layers of small row groups (see SMALL_GROUP_ROWS). The AVX2 build takes any batch of a linear
layer (`batch_limit`)."""
SMALL_GROUP_ROWS = 16
"""Row groups of at most this many rows run on the native kernel up to SMALL_GROUP_MAX_BATCH rows: batched
GEMMs that short are slow there (`benchmarks/small_batch.md`)."""
SMALL_GROUP_MAX_BATCH = 256
"""The largest batch measured to favour the plain-C kernel for short row groups, and a conv's im2col rows
on either build (`benchmarks/small_batch.md`). Beyond it the batched GEMMs run, which are several times
faster on a conv's im2col rows (thousands of output pixels, a few columns each; `docs/benchmarks.md`,
whole CNNs)."""
KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2}


def cache_dir() -> Path:
    base = os.environ.get("RBGP_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "rbgp"
    )
    return Path(base)


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _build(compiler: str, target: Path) -> None:
    """Compile SOURCE into `target`, atomically (a temp file in the same folder, then renamed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=target.parent)
    os.close(fd)
    try:
        run = subprocess.run([compiler, *FLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=300)
        if run.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {run.stderr.strip()[-500:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _Library:
    """The process's one loaded kernel library (a shared object is loaded once per process)."""

    handle: ctypes.CDLL | None = None
    tried = False
    avx2 = False  # whether the AVX2 build runs (`isa`)


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, built first if needed; None (with one warning) where it cannot be."""
    if not _Library.tried:
        _Library.tried = True
        _Library.handle = _load()
    return _Library.handle


def _load() -> ctypes.CDLL | None:
    if os.environ.get("RBGP_NATIVE", "1") == "0":
        return None
    compiler = _compiler()
    if compiler is None:
        warnings.warn("rbgp: no C compiler (cc) found; small batches run on the torch path", stacklevel=4)
        return None
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
        digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + version.encode()).hexdigest()[:16]
        target = cache_dir() / f"grouped_small-{digest}.so"
        if not target.exists():
            _build(compiler, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        warnings.warn(
            f"rbgp: the native small-batch kernel is not available ({err}); the torch path runs", stacklevel=4
        )
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.rbgp_grouped_call.argtypes = [ptr, i64, ptr, i64, ptr, ctypes.c_int]
    lib.rbgp_grouped_call.restype = ctypes.c_int
    lib.rbgp_grouped_conv.argtypes = [ptr, ptr, i64, ptr, ptr, ctypes.c_int]
    lib.rbgp_grouped_conv.restype = ctypes.c_int
    lib.rbgp_dense_small.argtypes = [ctypes.c_int, i64, i64, i64, ptr, i64, ptr, ptr, ptr, ptr, ctypes.c_int]
    lib.rbgp_dense_small.restype = ctypes.c_int
    lib.rbgp_native_isa.argtypes = [ctypes.c_int]
    lib.rbgp_native_isa.restype = ctypes.c_int
    lib.rbgp_native_wide_from.argtypes = [i64]
    lib.rbgp_native_wide_from.restype = i64
    lib.rbgp_native_wide_rows.argtypes = [i64]
    lib.rbgp_native_wide_rows.restype = i64
    lib.rbgp_native_vector_bits.argtypes = [i64]
    lib.rbgp_native_vector_bits.restype = i64
    _Library.avx2 = bool(lib.rbgp_native_isa(-1))
    return lib


def _required() -> ctypes.CDLL:
    """The loaded library, for the settings below that tests switch; an error where there is none."""
    lib = library()
    if lib is None:
        raise RuntimeError("the native kernel is not available")
    return lib


def isa(request: str | None = None) -> str:
    """The build of the row products that runs: "avx2" (intrinsics, where the CPU has AVX2 and FMA) or
    "plain" (C vectorised by the compiler); `request` "plain" or "avx2" switches it (the CPU allowing),
    so that tests cover both. The kernel must be available."""
    lib = _required()
    if request not in (None, "plain", "avx2"):
        raise ValueError(f"request must be None, 'plain' or 'avx2', got {request!r}")
    code = {None: -1, "plain": 0, "avx2": 1}[request]
    _Library.avx2 = bool(lib.rbgp_native_isa(code))
    return "avx2" if _Library.avx2 else "plain"


def wide_from(batch: int | None = None) -> int:
    """The batch from which the AVX2 build takes its wide-batch tiles (x transposed 24 samples at a time, each
    value broadcast against 24 samples) instead of one dot product per row and sample: 8 where the tiles
    have 512-bit vectors (`vector_bits`), else 24; `batch` (>= 1) changes it, so that tests cover both. The
    kernel must be available."""
    lib = _required()
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    return int(lib.rbgp_native_wide_from(0 if batch is None else batch))


def wide_rows(rows: int | None = None) -> int:
    """The tallest wide-batch tile: 8 rows where the CPU has AVX-512VL (32 vector registers), else 4;
    `rows` (4 or 8) changes it, so that tests cover both (8 only where the CPU has it). The kernel must
    be available."""
    lib = _required()
    if rows is not None and rows not in (4, 8):
        raise ValueError(f"rows must be 4 or 8, got {rows!r}")
    return int(lib.rbgp_native_wide_rows(0 if rows is None else rows))


def vector_bits(bits: int | None = None) -> int:
    """The vector width of the 8-row wide tiles: 512 where the CPU has AVX-512 (a row's first 16 samples in
    one register), else 256; `bits` (256 or 512) changes it, so that tests and benchmarks cover both (512
    only where the CPU has it; `wide_from` keeps the value it took on first use). The kernel must be
    available."""
    lib = _required()
    if bits is not None and bits not in (256, 512):
        raise ValueError(f"bits must be 256 or 512, got {bits!r}")
    return int(lib.rbgp_native_vector_bits(0 if bits is None else bits))


def available() -> bool:
    """Whether the kernel can run here (built and loaded on the first call in eager mode; while
    torch.compile traces, whether eager code loaded it already: nothing is built inside a graph)."""
    if torch.compiler.is_compiling():
        return _Library.handle is not None
    return library() is not None


def batch_limit(values: torch.Tensor, im2col: bool = False) -> int:
    """The largest batch the native kernel takes for these (G, R, K) values: any batch of a linear layer
    on the AVX2 build (its wide-batch tiles beat the batched GEMMs from a few dozen rows on); else
    SMALL_GROUP_MAX_BATCH for short row groups, MAX_BATCH for the others."""
    lib = _Library.handle if torch.compiler.is_compiling() else library()
    if lib is not None and _Library.avx2 and not im2col:
        return sys.maxsize
    return SMALL_GROUP_MAX_BATCH if values.shape[1] <= SMALL_GROUP_ROWS else MAX_BATCH


def native_applies(x: torch.Tensor, values: torch.Tensor, any_batch: bool = False, im2col: bool = False) -> bool:
    """Whether the product of x (N, in) (a conv's im2col rows where `im2col`) with `values` runs on the
    native kernel: fp32 CPU inputs, fp32, bf16 or int8 values, at most `batch_limit` rows (unless
    `any_batch`), no gradient wanted, and the kernel available."""
    return (any_batch or x.shape[0] <= batch_limit(values, im2col)) and _kernel_takes(x, values)


def conv_applies(x: torch.Tensor, values: torch.Tensor) -> bool:
    """Whether a conv whose row groups read whole input channels may run on the native kernel
    (`grouped_conv`): as `native_applies` for fp32 values, on the AVX2 build, in eager mode without
    autocast."""
    return (
        values.dtype == torch.float32
        and not torch.compiler.is_compiling()
        and not torch.is_autocast_enabled("cpu")
        and _kernel_takes(x, values)
        and _Library.avx2
    )


def dense_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether x (N, in) times a dense stored `weight` (out, in) runs on the native kernel (`dense_small`):
    as `native_applies`, up to MAX_BATCH rows, in eager mode."""
    return x.shape[0] <= MAX_BATCH and not torch.compiler.is_compiling() and _kernel_takes(x, weight)


def _kernel_takes(x: torch.Tensor, values: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and values.dtype in KINDS
        and not (torch.is_grad_enabled() and (x.requires_grad or values.requires_grad))
        and not torch.jit.is_tracing()  # a traced graph would hold the kernel's output as a constant
        and available()
    )


class _Operands(ctypes.Structure):
    """The C kernel's `operands_t`: one weight's shapes and the addresses of its tensors."""

    _fields_ = [(name, ctypes.c_int64) for name in ("kind", "g", "r", "k", "bw", "in_features", "out")] + [
        (name, ctypes.c_void_p) for name in ("values", "scales", "blocks", "rows", "bias")
    ]


def _operands(
    values: torch.Tensor,
    scales: torch.Tensor | None,
    blocks: torch.Tensor,
    rows: torch.Tensor,
    block_width: int,
    in_features: int,
    out_features: int,
    bias: torch.Tensor | None,
) -> _Operands:
    return _Operands(
        KINDS[values.dtype],
        *values.shape,
        block_width,
        in_features,
        out_features,
        values.data_ptr(),
        None if scales is None else scales.data_ptr(),
        blocks.data_ptr(),
        rows.data_ptr(),
        None if bias is None else bias.data_ptr(),
    )


def _call(operands: int, n: int, x: torch.Tensor, ldx: int, y: torch.Tensor) -> None:
    """The kernel on the n rows of x (`ldx` apart, unit column stride) into y; `operands`: the address of
    an `_Operands` the caller keeps alive."""
    lib = _Library.handle or library()
    assert lib is not None
    if lib.rbgp_grouped_call(operands, n, x.data_ptr(), ldx, y.data_ptr(), torch.get_num_threads()):
        raise MemoryError("rbgp: the native kernel could not allocate its input buffers")


def _run(
    x: torch.Tensor,
    values: torch.Tensor,
    scales: torch.Tensor | None,
    blocks: torch.Tensor,
    rows: torch.Tensor,
    block_width: int,
    out_features: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The kernel on x (N, in); the output (N, out)."""
    y = torch.empty(x.shape[0], out_features, dtype=torch.float32)
    if x.shape[0]:
        operands = _operands(values, scales, blocks, rows, block_width, x.shape[1], out_features, bias)
        _call(ctypes.addressof(operands), x.shape[0], x, x.stride(0), y)
    return y


@torch.library.custom_op("rbgp::grouped_small", mutates_args=())
def _grouped_small_op(
    x: torch.Tensor,
    values: torch.Tensor,
    scales: torch.Tensor | None,
    blocks: torch.Tensor,
    rows: torch.Tensor,
    block_width: int,
    out_features: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    return _run(x, values, scales, blocks, rows, block_width, out_features, bias)


@_grouped_small_op.register_fake
def _(x, values, scales, blocks, rows, block_width, out_features, bias):
    return x.new_empty(x.shape[0], out_features, dtype=torch.float32)


def native_tables(layout: LayoutTensors) -> tuple[torch.Tensor, torch.Tensor]:
    """(block ids (G, K // BW) int64, row ids (G, R) int64) as the kernel reads them, kept in the
    layout's workspace."""

    def build() -> tuple[torch.Tensor, torch.Tensor]:
        blocks = layout.col_blocks if layout.block_width > 1 else layout.col_index
        return blocks.to(torch.int64).contiguous(), layout.row_index.to(torch.int64).contiguous()

    return build() if layout.workspace is None else layout.workspace.get("native", (), build)


def _key(values: torch.Tensor, scales: torch.Tensor | None, bias: torch.Tensor | None) -> tuple:
    """What a plan's operands depend on beyond the layout: where and in which dtype the tensors lie (a
    parameter's data swapped in place, as `Module.to` does, changes it; an in-place update does not)."""
    return (
        values.data_ptr(),
        values.dtype,
        values.is_contiguous(),
        0 if scales is None else scales.data_ptr(),
        0 if bias is None else bias.data_ptr(),
    )


class _Plan:
    """One layer's native call, prepared on its first eager call and kept in its workspace: the weight's
    operands checked and packed once, used while the layer's tensors keep their `_key`."""

    __slots__ = ("key", "tables", "operands", "address", "in_features", "out_features")

    def __init__(self, key: tuple, values, scales, bias, layout: LayoutTensors) -> None:
        self.key = key
        self.in_features, self.out_features = layout.in_features, layout.out_features
        self.tables = native_tables(layout)
        self.operands = _operands(
            values, scales, *self.tables, layout.block_width, layout.in_features, layout.out_features, bias
        )
        self.address = ctypes.addressof(self.operands)

    @staticmethod
    def takes(values: torch.Tensor, scales: torch.Tensor | None, bias: torch.Tensor | None, out: int) -> bool:
        """Whether the kernel reads these operands as they are (no copy, which in-place updates would miss)."""
        return (
            values.dtype in KINDS
            and values.is_cpu
            and values.is_contiguous()
            and (values.dtype == torch.int8) == (scales is not None)
            and (scales is None or (scales.dtype == torch.float32 and scales.is_contiguous()))
            and (bias is None or (bias.dtype == torch.float32 and bias.shape == (out,) and bias.is_contiguous()))
        )


def _plan(
    values: torch.Tensor, layout: LayoutTensors, scales: torch.Tensor | None, bias: torch.Tensor | None
) -> _Plan | None:
    """The layer's kept plan, made anew where its tensors changed; None where the kernel cannot take them."""
    ws = layout.workspace
    plan = ws.plan if ws is not None else None
    key = _key(values, scales, bias)
    if isinstance(plan, _Plan) and plan.key == key:
        return plan
    if _Library.handle is None or not _Plan.takes(values, scales, bias, layout.out_features):
        return None  # not built yet (the general dispatch builds it), or operands the general path copes with
    plan = _Plan(key, values, scales, bias, layout)
    if ws is not None:
        ws.plan = plan
    return plan


def eager_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    layout: LayoutTensors,
    scales: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> torch.Tensor | None:
    """y = x W^T + bias on the native kernel for the common eager inference call (an fp32 CPU input, no
    gradient, no autocast, not traced or compiled), with the layer's operands prepared once (`_Plan`),
    since at batch 1 Python's steps cost as much as the product; None where any condition fails (the
    caller's general dispatch then decides). x (..., in)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():  # before x is touched: a trace records it
        return None
    plan = _plan(values, layout, scales, bias)
    return None if plan is None else _planned(plan, x, values, bias)


def planned_linear(
    x: torch.Tensor,
    workspace: Workspace | None,
    values: torch.Tensor,
    scales: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> torch.Tensor | None:
    """`eager_linear` on the plan a layer's `workspace` keeps already, without its layout: what an RBGP
    layer's forward tries first (at decode, every microsecond of Python counts); None where there is no
    plan for these tensors or any condition fails."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():  # before x is touched: a trace records it
        return None
    plan = None if workspace is None else workspace.plan
    if not isinstance(plan, _Plan) or plan.key != _key(values, scales, bias):
        return None
    return _planned(plan, x, values, bias)


def _planned(plan: _Plan, x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """The plan's call on x (..., in), or None where x or the modes rule it out."""
    if (
        x.dtype != torch.float32
        or not x.is_cpu
        or x.dim() == 0
        or x.shape[-1] != plan.in_features
        or x.stride(-1) != 1
        or torch.is_autocast_enabled("cpu")
    ):
        return None
    if x.dim() == 2:
        n, ldx = x.shape[0], x.stride(0)
    elif x.is_contiguous():
        n, ldx = x.numel() // plan.in_features, plan.in_features
    else:
        return None
    if not _Library.avx2 and n > batch_limit(values):
        return None
    if torch.is_grad_enabled() and (
        x.requires_grad or values.requires_grad or (bias is not None and bias.requires_grad)
    ):
        return None
    y = torch.empty(*x.shape[:-1], plan.out_features, dtype=torch.float32)  # not a tuple: faster to parse
    if n:
        _call(plan.address, n, x, ldx, y)
    return y


def _checked(
    x: torch.Tensor,
    values: torch.Tensor,
    scales: torch.Tensor | None,
    bias: torch.Tensor | None,
    out_features: int,
    scales_shape: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The kernel's operands checked (ValueError naming the bad one) and made contiguous where it needs."""
    if values.dtype not in KINDS or x.dtype != torch.float32 or x.device.type != "cpu":
        raise ValueError(
            f"the native kernel takes fp32 CPU inputs and fp32/bf16/int8 values, got x {x.dtype} on "
            f"{x.device.type}, values {values.dtype}"
        )
    if (values.dtype == torch.int8) != (scales is not None):
        raise ValueError(f"int8 values need their per-row scales {scales_shape}, and only they take scales")
    if bias is not None and (bias.dtype != torch.float32 or bias.shape != (out_features,)):
        raise ValueError(f"bias must be fp32 ({out_features},), got {bias.dtype} {tuple(bias.shape)}")
    x = x if x.stride(-1) == 1 else x.contiguous()
    scales = None if scales is None else scales.to(torch.float32).contiguous()
    return x, values.contiguous(), scales, None if bias is None else bias.contiguous()


def grouped_small(
    x: torch.Tensor,
    values: torch.Tensor,
    layout: LayoutTensors,
    scales: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y (N, out) = x W^T + bias on the native kernel, contiguous and in row order; x (N, in) fp32 on
    the CPU, values fp32, bf16 or int8 (then `scales` (G, R) fp32, one per row), bias fp32 or None.
    No autograd."""
    blocks, rows = native_tables(layout)
    x, values, scales, bias = _checked(x, values, scales, bias, layout.out_features, "(G, R)")
    if torch.compiler.is_compiling():
        return _grouped_small_op(x, values, scales, blocks, rows, layout.block_width, layout.out_features, bias)
    return _run(x, values, scales, blocks, rows, layout.block_width, layout.out_features, bias)


def grouped_conv(
    x: torch.Tensor,
    values: torch.Tensor,
    blocks: torch.Tensor,
    rows: torch.Tensor,
    out_channels: int,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    bias: torch.Tensor | None = None,
    workspace: Workspace | None = None,
) -> torch.Tensor:
    """The RBGP conv of x (N, C, H, W) fp32 on the native kernel, (N, out_channels, OH, OW) contiguous:
    the wide tiles read each run of up to 24 neighbouring output pixels' windows straight from the
    zero-padded input (no im2col matrix, no gathered copy). values (G, R, K) fp32 with K =
    `blocks`.shape[1] * kh * kw, group g reading input channels `blocks[g]` (int64), its group-major rows
    landing on output channels `rows` (G, R) int64 (out_channels or more: dropped); at most
    CONV_MAX_KW taps along the width. Inf and NaN inputs are not flagged (`rbgp_conv2d` does). The padded
    input (each row's columns stored phase by phase for a stride along the width, so that a run still
    reads neighbouring floats) is kept in `workspace` where one is given and free (a fresh buffer that
    size would be faulted in on every call). Eager, no autograd; the AVX2 build must run
    (`conv_applies`)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    n, c, h, w = x.shape
    hp, wp = h + 2 * ph, w + 2 * pw
    oh, ow = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    if values.shape[2] != blocks.shape[1] * kh * kw or values.dtype != torch.float32 or kw > CONV_MAX_KW:
        raise ValueError(
            f"values {values.dtype} {tuple(values.shape)} with {blocks.shape[1]} channels of {kh}x{kw} taps: the "
            f"native conv takes fp32 values of whole channels, at most {CONV_MAX_KW} taps along the width"
        )
    if oh < 1 or ow < 1:
        raise ValueError(f"input {h}x{w} is too small for kernel {kernel_size} with padding {padding}")
    g, r = values.shape[:2]
    if not (blocks.dtype == rows.dtype == torch.int64 and blocks.shape[0] == g and rows.shape == (g, r)):
        raise ValueError(
            f"blocks must be int64 ({g}, channels) and rows int64 ({g}, {r}), got {blocks.dtype} "
            f"{tuple(blocks.shape)} and {rows.dtype} {tuple(rows.shape)}"
        )
    if blocks.numel() and not 0 <= int(blocks.min()) <= int(blocks.max()) < c:
        raise ValueError(f"blocks must be input channels in [0, {c}), got {int(blocks.min())}..{int(blocks.max())}")
    blocks, rows = blocks.contiguous(), rows.contiguous()
    y = torch.empty(n, out_channels, oh, ow, dtype=torch.float32)
    if n == 0:
        return y
    wq = -(-wp // sw)  # a row's floats per phase
    size = (n * c * hp * sw * wq + _SLACK,)
    values, bias = values.contiguous(), None if bias is None else bias.to(torch.float32).contiguous()
    kept = workspace if workspace is not None and workspace.lock.acquire(blocking=False) else None
    try:
        padded = x.new_zeros(size) if kept is None else kept.buffer("padded input", size, x, zeroed=True)
        phases = padded[: n * c * hp * sw * wq].view(n, c, hp, sw, wq)
        for q in range(sw):  # padded column pw + x lands at phase (pw + x) % sw, place (pw + x) // sw
            first = (q - pw) % sw
            if first < w:
                cols = x[:, :, :, first::sw]
                start = (pw + first) // sw
                phases[:, :, ph : ph + h, q, start : start + cols.shape[3]].copy_(cols)
        operands = _operands(values, None, blocks, rows, kh * kw, c * kh * kw, out_channels, bias)
        geometry = (ctypes.c_int64 * 11)(c, hp, kh, kw, sh, sw, dh, dw, oh, ow, wq)
        status = _required().rbgp_grouped_conv(
            ctypes.addressof(operands), geometry, n, padded.data_ptr(), y.data_ptr(), torch.get_num_threads()
        )
    finally:
        if kept is not None:
            kept.lock.release()
    if status == 1:
        raise MemoryError("rbgp: the native kernel could not allocate its buffers")
    if status == 2:
        raise RuntimeError("the native conv needs the kernel's AVX2 build (conv_applies)")
    return y


_SLACK = 32
"""Floats past the padded input the conv kernel may read (whole vectors at a row's end)."""
CONV_MAX_KW = 16
"""The most taps along the width the native conv takes (the C kernel's CONV_MAX_KW)."""


def dense_small(
    x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """y (N, out) = x W^T + bias on the native kernel for a dense weight (out, in) in fp32, bf16, or int8
    with `scales` (out,) fp32, one per row; x (N, in) fp32 on the CPU, bias fp32 or None. Eager mode,
    no autograd: the layers a sparse model keeps dense (an LM's head) stored in bf16 or int8."""
    if weight.dim() != 2 or x.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"need x (N, in) and weight (out, in), got {tuple(x.shape)} and {tuple(weight.shape)}")
    out = weight.shape[0]
    if scales is not None and scales.shape != (out,):
        raise ValueError(f"scales must be ({out},), one per row of the weight, got {tuple(scales.shape)}")
    x, weight, scales, bias = _checked(x, weight, scales, bias, out, "(out,)")
    y = torch.empty(x.shape[0], out, dtype=torch.float32)
    if x.shape[0] == 0:
        return y
    lib = library()
    assert lib is not None
    lib.rbgp_dense_small(
        KINDS[weight.dtype],
        x.shape[0],
        out,
        x.shape[1],
        x.data_ptr(),
        x.stride(0),
        weight.data_ptr(),
        None if scales is None else scales.data_ptr(),
        None if bias is None else bias.data_ptr(),
        y.data_ptr(),
        torch.get_num_threads(),
    )
    return y
