"""RBGPLinear and RBGPConv2d: layers that store only their non-zero weights.

The weight of an RBGP layer is kept as dense `(groups, rows_per_group, nnz_per_row)` values plus its
factor graphs (a few hundred bytes); `dense_weight()` rebuilds the masked (out, in) matrix on demand.
Compute goes through `rbgp.ops.rbgp_linear` (the one dispatch point); a conv is the same product on its
im2col matrix.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rbgp.nn.checks import check_conv_input, check_linear_input, conv_args, layer_size
from rbgp.ops import BACKENDS, LayoutTensors, dense_weight, grouped_values, rbgp_linear
from rbgp.ops.channel_conv import channel_grouped_conv2d, channel_table, padded_channels
from rbgp.ops.im2col import im2col_feature_major
from rbgp.ops.pointwise_conv import pointwise_conv2d
from rbgp.patterns import (
    RBGP4,
    GroupedLayout,
    Pattern,
    SparseMask,
    get_pattern,
)


def build_structure(weight_shape: tuple[int, ...], sparsity: float, pattern: str | Pattern | None,
                    seed: int) -> SparseMask:
    """The SparseMask of an RBGP layer; refuses patterns that have no grouped layout."""
    pattern = RBGP4() if pattern is None else get_pattern(pattern)
    mask = pattern.build(tuple(weight_shape), sparsity, seed)
    if mask.layout is None:
        raise ValueError(
            f"pattern {pattern!r} has no grouped (product) layout; RBGP layers take RBGP/RBGP4 patterns, "
            f"use MaskedLinear/MaskedConv2d for {mask.kind!r} masks"
        )
    return mask


class _RBGPBase(nn.Module):
    """Shared storage, initialisation and state handling of RBGP layers.

    State is tensors only: `values`, `bias` and `structure_id`, an int64 tensor that identifies the
    sparsity structure (values shape, micro-block width and a sha256 of the index lists), so
    `safetensors` and `save_pretrained` take the state as it is. The structure itself is rebuilt from
    the layer's arguments (shape, sparsity, pattern, seed), which are pure functions; loading a state
    saved from another structure is refused with both structures named, and so are values without a
    structure entry (even with strict=False: they would land on whatever structure this layer has).
    The layout (index lists and kernel tables, built once) lives in non-persistent buffers, so it
    moves with `.to()`.

    A structure fitted to trained weights (sparsify's init="magnitude") is not a function of those
    arguments: its `row_index` and `col_index` are then saved too, and a layer of the same plan that
    loads them adopts that structure.
    """

    def _setup(self, weight_shape: tuple[int, ...], sparsity: float | None, pattern, seed: int, bias: bool,
               backend: str, device=None, dtype=None, structure: SparseMask | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; valid: {list(BACKENDS)}")
        self.backend = backend
        if structure is not None and tuple(structure.weight_shape) != tuple(weight_shape):
            raise ValueError(f"structure is for a {tuple(structure.weight_shape)} weight, this layer's is "
                             f"{tuple(weight_shape)}")
        self._set_structure(structure if structure is not None else
                            build_structure(weight_shape, sparsity, pattern, seed), device)
        self.values = nn.Parameter(torch.empty(self.layout.values_shape, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(weight_shape[0], device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def _set_structure(self, structure: SparseMask, device=None) -> None:
        if structure.layout is None:
            raise ValueError(f"an RBGP layer needs a structure with a grouped layout, got a {structure.kind!r} mask")
        self.structure = structure
        layout = LayoutTensors.from_layout(structure.layout, device=device)
        saved = "fitted" in structure.info  # not a function of the layer's arguments: saved with the state
        for name, t in layout.buffers.items():
            self.register_buffer(name, t, persistent=saved and name in ("row_index", "col_index"))
        self.block_width = layout.block_width
        self.register_buffer("structure_id", self._structure_id(layout).to(device))

    def _adopt_saved_structure(self, rows, cols, name: str) -> str | None:
        """Take the fitted structure a state carries (same values shape); an error message, or None."""
        from rbgp.patterns.fit import layout_mask

        try:
            if not (isinstance(rows, torch.Tensor) and isinstance(cols, torch.Tensor)) or rows.is_floating_point() \
                    or cols.is_floating_point():
                raise ValueError("row_index and col_index must be integer tensors")
            if (*rows.shape, cols.shape[-1]) != tuple(self.values.shape) or cols.shape[0] != rows.shape[0]:
                raise ValueError(f"they are shaped {tuple(rows.shape)} and {tuple(cols.shape)}, this layer's values "
                                 f"{tuple(self.values.shape)}")
            m, n = self.structure.shape
            layout = GroupedLayout(m, n, rows.cpu().numpy().astype(np.int64), cols.cpu().numpy().astype(np.int64))
        except ValueError as err:
            return f"layer {name!r}: the saved structure (row_index, col_index) is not valid here: {err}"
        self._set_structure(layout_mask(self.structure.kind, self.structure.weight_shape, layout, {"fitted": "loaded"}),
                            self.values.device)
        return None

    @staticmethod
    def _structure_id(layout: LayoutTensors) -> torch.Tensor:
        """[G, R, K, BW, four int64 words of the sha256 of the index lists]."""
        h = hashlib.sha256()
        for t in (layout.row_index, layout.col_index):
            h.update(t.detach().cpu().numpy().astype("<i8").tobytes())
        words = np.frombuffer(h.digest(), dtype="<i8")
        return torch.tensor([*layout.values_shape, layout.block_width, *words.tolist()], dtype=torch.int64)

    @property
    def layout(self) -> LayoutTensors:
        return LayoutTensors(self.row_index, self.col_index, self.row_order, self.structure.shape[1],
                             self.block_width, self.col_blocks, self.col_entries, self.structure.shape[0])

    @property
    def nnz_per_row(self) -> int:
        return self.values.shape[2]

    @property
    def density(self) -> float:
        return self.structure.density

    @property
    def weight(self) -> torch.Tensor:
        """The masked dense weight, materialised on every access (out x in elements: as much memory and
        time as a dense layer's weight). For code that reads `.weight` (nn.TransformerEncoder's fast
        path, Hugging Face helpers); differentiable in `values`. Read-only."""
        return self.dense_weight()

    @weight.setter
    def weight(self, value) -> None:
        raise AttributeError(f"{type(self).__name__}.weight is read-only (the dense view of its non-zero values); "
                             f"change `values`, or keep this layer dense (sparsify's exclude=...)")

    def reset_parameters(self) -> None:
        """Kaiming normal scaled to the real fan-in: std = sqrt(2 / nnz_per_row)."""
        with torch.no_grad():
            self.values.normal_(0.0, math.sqrt(2.0 / self.nnz_per_row))
            if self.bias is not None:
                bound = 1.0 / math.sqrt(self.nnz_per_row)
                self.bias.uniform_(-bound, bound)

    def dense_matrix(self) -> torch.Tensor:
        """The masked (out, in*kh*kw) weight matrix."""
        return dense_weight(self.values, self.layout)

    @property
    def mask(self) -> torch.Tensor:
        """The true 0/1 mask in the weight's shape (bool), computed on each access (none is stored)."""
        return torch.as_tensor(self.structure.weight_mask(), device=self.values.device)

    def load_dense_(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Take the entries of a dense weight that lie on the pattern (the rest are dropped)."""
        with torch.no_grad():
            matrix = weight.reshape(self.structure.shape).to(self.values)
            self.values.copy_(grouped_values(matrix, self.layout))
            if bias is not None and self.bias is not None:
                self.bias.copy_(bias)

    def scale_rows_(self, scale: torch.Tensor) -> None:
        """Multiply output row i's weights by scale[i] (in place)."""
        with torch.no_grad():
            full = scale.new_ones(self.row_order.numel())  # padding rows keep their (unused) values
            full[:scale.numel()] = scale
            self.values.mul_(full.to(self.values)[self.row_index].unsqueeze(-1))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        key = prefix + "structure_id"
        name = prefix[:-1] or type(self).__name__
        indexed = prefix + "row_index" in state_dict and prefix + "col_index" in state_dict
        if indexed:  # a fitted structure saved with its indices: adopted (it then is this layer's structure)
            error = self._adopt_saved_structure(state_dict[prefix + "row_index"], state_dict[prefix + "col_index"], name)
            if error:
                error_msgs.append(error)
                return
        if key in state_dict:
            saved = state_dict[key]
            if not isinstance(saved, torch.Tensor) or saved.shape != self.structure_id.shape \
                    or not _same_structure(saved.to(self.structure_id.device), self.structure_id):
                error_msgs.append(
                    f"layer {name!r}: the state was saved from another sparsity structure "
                    f"(saved {_describe_id(saved)}, this layer {_describe_id(self.structure_id)}); build the "
                    f"model and sparsify it with the same shape, sparsity, pattern and seed before loading")
                return
        elif prefix + "values" in state_dict and not indexed:  # refused even with strict=False
            error_msgs.append(f"layer {name!r}: the state has {prefix}values but no {key}, so the values cannot be "
                              f"matched to this layer's structure ({_describe_id(self.structure_id)}); load a state "
                              f"saved whole (state_dict() keeps {key})")
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        s = self.structure
        return (f"weight={tuple(s.weight_shape)}, sparsity={s.sparsity:.4f}, nnz_per_row={self.nnz_per_row}, "
                f"groups={self.values.shape[0]}x{self.values.shape[1]} rows, bias={self.bias is not None}, "
                f"backend={self.backend!r}")


def _same_structure(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Two structure ids name the same structure: values shape and index digest equal. The block width
    (word 3) is derived from the indices, and its detection has widened (3x3 convs: 1, now 9), so it
    is not compared."""
    keep = [0, 1, 2, 4, 5, 6, 7]
    return torch.equal(a[keep], b[keep])


def _describe_id(t) -> str:
    if not isinstance(t, torch.Tensor) or t.numel() != 8:
        return f"an unreadable structure entry {t!r}"
    g, r, k, bw = t[:4].tolist()
    digest = t[4:].cpu().numpy().astype("<i8").tobytes().hex()
    return f"{g} groups x {r} rows x {k} columns, block width {bw}, sha256 {digest[:16]}"


def linear_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight (out, in), bias) of an nn.Linear or a Hugging Face `Conv1D` (a linear layer that stores its
    weight transposed, (in, out)); TypeError for anything else."""
    if isinstance(module, nn.Linear):
        return module.weight, module.bias
    if is_hf_conv1d(module):
        return module.weight.t(), module.bias
    raise TypeError(f"expected nn.Linear or transformers' Conv1D, got {type(module).__name__}")


def is_hf_conv1d(module: nn.Module) -> bool:
    """transformers' `Conv1D` (GPT-2 and relatives), recognised without importing transformers."""
    return (type(module).__name__ == "Conv1D" and hasattr(module, "nf")
            and isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.dim() == 2)


class RBGPLinear(_RBGPBase):
    """A linear layer whose weight follows an RBGP pattern (RBGP4 planned by default)."""

    def __init__(self, in_features: int, out_features: int, sparsity: float = 0.9, *,
                 pattern: str | Pattern | None = None, seed: int = 0, bias: bool = True,
                 backend: str = "auto", device=None, dtype=None, structure: SparseMask | None = None) -> None:
        super().__init__()
        self.in_features = layer_size("in_features", in_features)
        self.out_features = layer_size("out_features", out_features)
        self._setup((self.out_features, self.in_features), sparsity, pattern, seed, bias, backend, device, dtype,
                    structure)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_linear_input(x, self.in_features)
        return rbgp_linear(x, self.values, self.layout, self.bias, self.backend)

    def dense_weight(self) -> torch.Tensor:
        """The masked dense (out, in) weight."""
        return self.dense_matrix()

    @classmethod
    def from_dense(cls, module: nn.Module, sparsity: float = 0.9, *, pattern: str | Pattern | None = None,
                   seed: int = 0, keep_weights: bool = True, backend: str = "auto",
                   structure: SparseMask | None = None) -> RBGPLinear:
        """An RBGPLinear shaped like `module` (nn.Linear or transformers' Conv1D); with keep_weights its
        weights on the pattern are kept. `structure`: a prebuilt one (e.g. fitted to the weights)."""
        w, b = linear_weight(module)
        layer = cls(w.shape[1], w.shape[0], sparsity, pattern=pattern, seed=seed, bias=b is not None,
                    backend=backend, device=w.device, dtype=w.dtype, structure=structure)
        layer.dense_type = type(module)
        if keep_weights:
            layer.load_dense_(w, b)
        return layer


PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
MERGE_ROWS = 8
MAX_MERGED_DENSITY = 0.3
"""How channel-layout convs with small row groups run (a static rule of the layer's shape, so the
numbers never depend on a timing). Grouped convs of 2-4-row groups run slower than dense on oneDNN,
so groups of fewer than MERGE_ROWS rows are merged, a few consecutive ones at a time, into groups of
at least MERGE_ROWS rows with block-diagonal weights (`channel_grouped_conv2d(merge=...)`); when the
merged work would exceed MAX_MERGED_DENSITY of the dense conv's, the dense conv of the masked weight
runs instead. Measured on the 2-core CPU, batch 32, 3x3, fwd+bwd vs dense: 128->128 @16x16 at 90%
(4-row groups) 0.98x as they are, 1.42x merged by 2; at 95% (2-row groups) 0.40x as they are, 1.39x
merged by 4; 64->64 @32x32 at 90% (2-row groups) 0.22x as they are, 0.37x merged by 4, 0.83x as a
masked dense conv (`benchmarks/conv_merge.md`)."""


def im2col_runs_dense(rows: int, density: float) -> bool:
    """Whether an im2col-path conv (conv_block="block", or a strided or padded 1x1) runs as the dense conv of its
    masked weight: when its row groups are under MERGE_ROWS rows (its GEMMs are then too thin to
    beat the dense one, and this path has no merging), or its density is above MAX_MERGED_DENSITY
    (the grouped GEMM copies each input row once per group that reads it, which then costs more than
    the dense conv saves). On the 2-core CPU, batch 32: ResNet-18's 1x1 shortcuts that ERK makes 0.77
    and 0.99 dense ran 0.36x and 0.18x dense forward+backward on the grouped GEMM
    (`benchmarks/models-cpu.md` at commit 1b99ed0)."""
    return rows < MERGE_ROWS or density > MAX_MERGED_DENSITY


POINTWISE_MIN_ROWS = 4
POINTWISE_MAX_DENSITY = 0.2


def pointwise_runs_dense(rows: int, density: float) -> bool:
    """Whether an unpadded stride-1 1x1 conv runs as the dense conv of its masked weight rather than on the
    pointwise path (`rbgp.ops.pointwise_conv`): row groups under POINTWISE_MIN_ROWS rows, or a density
    above POINTWISE_MAX_DENSITY, where the gathered channels cost more than the skipped multiply-adds
    save (`benchmarks/pointwise_conv.md`, the dispatch table)."""
    return rows < POINTWISE_MIN_ROWS or density > POINTWISE_MAX_DENSITY


def conv_merge(groups: int, rows: int, density: float) -> int | None:
    """How many consecutive row groups a channel-layout conv runs as one (1: none), or None for the
    dense conv of the masked weight (see MERGE_ROWS); `density`: the work of the grouped conv relative
    to the dense one (channel padding included)."""
    merge = next((m for m in range(1, groups + 1) if groups % m == 0 and m * rows >= MERGE_ROWS), groups)
    return merge if merge == 1 or merge * density <= MAX_MERGED_DENSITY else None


class RBGPConv2d(_RBGPBase):
    """A 2-D convolution (groups=1) whose (c_out, c_in*kh*kw) weight follows an RBGP pattern.

    When every row group reads whole input channels (RBGP4's default for convs), backends "auto" and
    "grouped" run it as a gathered-channel grouped convolution (`rbgp.ops.channel_conv`), small row
    groups merged or, when merging costs too much, as a dense conv of the masked weight (`conv_merge`);
    unpadded stride-1 1x1 convs on the CPU as chunked grouped matmuls on the NCHW input
    (`rbgp.ops.pointwise_conv`; "auto" runs the masked dense conv for small groups or dense layers:
    `pointwise_runs_dense`; on CUDA, "auto" keeps them on im2col and the Triton kernels); other
    layouts, and backends "triton" and "reference", use im2col and the grouped matmul ("auto" runs the
    masked dense conv there too for small row groups or dense layers: `im2col_runs_dense`).

    Arguments and inputs as in nn.Conv2d, checked at construction (ValueError naming the bad value):
    kernel_size, stride and dilation integers >= 1 or pairs of them; padding integers >= 0, "valid" or
    "same" (stride 1), with any `padding_mode` (what nn.Conv2d would pad is padded the same way before
    the im2col); input (N, C, H, W) or unbatched (C, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 sparsity: float = 0.9, *, pattern: str | Pattern | None = None, seed: int = 0,
                 bias: bool = True, padding_mode: str = "zeros", backend: str = "auto", device=None,
                 dtype=None, structure: SparseMask | None = None) -> None:
        super().__init__()
        self.in_channels = layer_size("in_channels", in_channels)
        self.out_channels = layer_size("out_channels", out_channels)
        self.kernel_size, self.stride, self.padding, self.dilation = conv_args(kernel_size, stride, padding, dilation)
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        self._pad = self._explicit_padding(self.padding)  # (left, right, top, bottom)
        shape = (self.out_channels, self.in_channels, *self.kernel_size)
        self._setup(shape, sparsity, pattern, seed, bias, backend, device, dtype, structure)

    def _explicit_padding(self, padding) -> tuple[int, int, int, int]:
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":  # stride 1 (checked by conv_args)
            pads = []
            for d, k in zip(reversed(self.dilation), reversed(self.kernel_size)):  # width first, like F.pad
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            return tuple(pads)
        ph, pw = padding
        return (pw, pw, ph, ph)

    def _set_structure(self, structure: SparseMask, device=None) -> None:
        super()._set_structure(structure, device)
        taps = self.kernel_size[0] * self.kernel_size[1]
        channels = channel_table(self.col_index, taps)
        self.register_buffer("channels", None if channels is None else padded_channels(channels), persistent=False)
        self._rows_in_order = bool(torch.equal(self.row_order.cpu(), torch.arange(self.row_order.numel())))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, in_channels, H, W), or unbatched (in_channels, H, W) as nn.Conv2d takes it."""
        if not check_conv_input(x, self.in_channels):
            return self._forward(x.unsqueeze(0)).squeeze(0)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right, top, bottom = self._pad
        if self.padding_mode == "zeros" and left == right and top == bottom:
            padding = (top, left)  # the conv (or im2col) pads with zeros itself
        else:
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, self._pad, mode=mode)
            padding = (0, 0)
        if self.channels is not None and self.backend in ("auto", "grouped"):
            g, r, k = self.values.shape
            merge = conv_merge(g, r, self.density * self.channels.numel() / (g * k) * math.prod(self.kernel_size))
            if merge is None:  # tiny groups: the masked dense conv is faster
                return self._masked_dense_conv(x, padding)
            order = None if self._rows_in_order else self.row_order
            return channel_grouped_conv2d(x, self.values, self.channels, order, self.out_channels,
                                          self.kernel_size, self.stride, padding, self.dilation, self.bias, merge)
        pointwise = self.backend == "grouped" or (self.backend == "auto" and x.device.type == "cpu")
        if pointwise and self.kernel_size == (1, 1) and self.stride == (1, 1) and padding == (0, 0):
            if self.backend == "auto" and pointwise_runs_dense(self.values.shape[1], self.density):
                return self._masked_dense_conv(x, padding)
            ordered = self._rows_in_order and self.row_order.numel() == self.out_channels
            return pointwise_conv2d(x, self.values, self.col_index.reshape(-1), self.row_index.reshape(-1),
                                    None if ordered else self.row_order[:self.out_channels], self.out_channels,
                                    self.bias)
        if self.backend == "auto" and im2col_runs_dense(self.values.shape[1], self.density):
            return self._masked_dense_conv(x, padding)
        cols, oh, ow = im2col_feature_major(x, self.kernel_size, self.stride, padding, self.dilation)
        # the feature-major matrix goes in as its transposed (N*L, C*kh*kw) view: the gather reads rows
        y = rbgp_linear(cols.t(), self.values, self.layout, self.bias, self.backend)  # (N*L, out)
        return y.t().reshape(self.out_channels, x.shape[0], oh, ow).transpose(0, 1)

    def _masked_dense_conv(self, x: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
        if x.dtype != self.values.dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(f"input dtype {x.dtype} differs from the weight dtype {self.values.dtype}; "
                             f"cast one or use autocast")
        return F.conv2d(x, self.dense_weight(), self.bias, self.stride, padding, self.dilation)

    def dense_weight(self) -> torch.Tensor:
        """The masked dense (c_out, c_in, kh, kw) weight."""
        return self.dense_matrix().reshape(self.structure.weight_shape)

    @classmethod
    def from_dense(cls, module: nn.Conv2d, sparsity: float = 0.9, *, pattern: str | Pattern | None = None,
                   seed: int = 0, keep_weights: bool = True, backend: str = "auto",
                   structure: SparseMask | None = None) -> RBGPConv2d:
        """An RBGPConv2d shaped like `module` (any padding and padding mode); with keep_weights its
        weights on the pattern are kept. `structure`: a prebuilt one (e.g. fitted to the weights)."""
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"from_dense expects nn.Conv2d, got {type(module).__name__}")
        if module.groups != 1:
            raise ValueError(f"only groups=1 convs can be RBGP, got groups={module.groups} in {module}")
        w = module.weight
        layer = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                    module.dilation, sparsity, pattern=pattern, seed=seed, bias=module.bias is not None,
                    padding_mode=module.padding_mode, backend=backend, device=w.device, dtype=w.dtype,
                    structure=structure)
        if keep_weights:
            layer.load_dense_(w, module.bias)
        return layer
