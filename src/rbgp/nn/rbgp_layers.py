"""RBGPLinear, RBGPConv2d and RBGPConv1d: layers that store only their non-zero weights.

The weight of an RBGP layer is kept as dense `(groups, rows_per_group, nnz_per_row)` values plus its
factor graphs (a few hundred bytes); `dense_weight()` rebuilds the masked (out, in) matrix on demand.
Compute goes through `rbgp.ops.rbgp_linear` and `rbgp.ops.rbgp_conv2d`, which own all dispatch; the
layers hold the parameters, the structure and its checks.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch import nn

from rbgp.nn.checks import check_conv_input, check_linear_input, conv_args, conv_pair, layer_size
from rbgp.ops import BACKENDS, LayoutTensors, SparseWeight, grouped_values, rbgp_linear
from rbgp.ops.channel_conv import channel_table, padded_channels
from rbgp.ops.conv import PADDING_MODES, plan_conv, rbgp_conv2d
from rbgp.ops.native import planned_linear
from rbgp.patterns import (
    RBGP4,
    GroupedLayout,
    Pattern,
    SparseMask,
    get_pattern,
)


def build_structure(
    weight_shape: tuple[int, ...], sparsity: float, pattern: str | Pattern | None, seed: int
) -> SparseMask:
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

    # buffers registered by _set_structure
    row_index: torch.Tensor
    col_index: torch.Tensor
    row_order: torch.Tensor
    structure_id: torch.Tensor

    if TYPE_CHECKING:

        def dense_weight(self) -> torch.Tensor: ...  # defined by each layer class

    def _setup(
        self,
        weight_shape: tuple[int, ...],
        sparsity: float,
        pattern,
        seed: int,
        bias: bool,
        backend: str,
        device=None,
        dtype=None,
        structure: SparseMask | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; valid: {list(BACKENDS)}")
        self.backend = backend
        if structure is not None and tuple(structure.weight_shape) != tuple(weight_shape):
            raise ValueError(
                f"structure is for a {tuple(structure.weight_shape)} weight, this layer's is {tuple(weight_shape)}"
            )
        self._set_structure(
            structure if structure is not None else build_structure(weight_shape, sparsity, pattern, seed), device
        )
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
        # the layout's static facts, kept as plain values: `layout` is rebuilt on every forward
        self._static = (layout.in_features, layout.block_width, layout.out_features, layout.row_strides)
        self._workspace = layout.workspace
        self.register_buffer("structure_id", self._structure_id(layout).to(device))

    def _adopt_saved_structure(self, rows, cols, saved_id, name: str) -> str | None:
        """Take the fitted structure a state carries; an error message, or None. Nothing changes unless
        the structure is valid and matches the state's structure id. A structure of another shape
        (another plan of the same weight) replaces `values` by a new parameter of its shape."""
        from rbgp.patterns.fit import layout_mask

        try:
            if (
                not (isinstance(rows, torch.Tensor) and isinstance(cols, torch.Tensor))
                or rows.is_floating_point()
                or cols.is_floating_point()
                or rows.dim() != 2
                or cols.dim() != 2
            ):
                raise ValueError("row_index and col_index must be 2-D integer tensors")
            m, n = self.structure.shape
            layout = GroupedLayout(m, n, rows.cpu().numpy().astype(np.int64), cols.cpu().numpy().astype(np.int64))
            structure = layout_mask(self.structure.kind, self.structure.weight_shape, layout, {"fitted": "loaded"})
            tensors = LayoutTensors.from_layout(layout)  # the structure's layout
        except ValueError as err:
            return f"layer {name!r}: the saved structure (row_index, col_index) is not valid here: {err}"
        if saved_id is not None and not (
            isinstance(saved_id, torch.Tensor)
            and saved_id.shape == (8,)
            and _same_structure(saved_id.cpu(), self._structure_id(tensors))
        ):
            return (
                f"layer {name!r}: the saved structure id ({_describe_id(saved_id)}) does not match its saved "
                f"row_index and col_index ({_describe_id(self._structure_id(tensors))}); the file is corrupt"
            )
        self._set_structure(structure, self.values.device)
        if tuple(self.values.shape) != tensors.values_shape:
            self.values = nn.Parameter(
                self.values.new_empty(tensors.values_shape), requires_grad=self.values.requires_grad
            )
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
    def sparse_weight(self) -> SparseWeight:
        """The weight as the ops take it (references to this layer's parameters and buffers)."""
        return SparseWeight(self.values, self.layout, scales=getattr(self, "value_scales", None))

    @property
    def layout(self) -> LayoutTensors:
        in_features, block_width, out_features, row_strides = self._static
        buffers = cast("dict[str, torch.Tensor]", self._buffers)  # the layout's buffers are never None
        return LayoutTensors(
            buffers["row_index"],
            buffers["col_index"],
            buffers["row_order"],
            in_features,
            block_width,
            buffers["col_blocks"],
            buffers["col_entries"],
            out_features,
            row_strides,
            self._workspace,
        )

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
        raise AttributeError(
            f"{type(self).__name__}.weight is read-only (the dense view of its non-zero values); "
            f"change `values`, or keep this layer dense (sparsify's exclude=...)"
        )

    def reset_parameters(self) -> None:
        """Kaiming normal scaled to the real fan-in: std = sqrt(2 / nnz_per_row)."""
        with torch.no_grad():
            self.values.normal_(0.0, math.sqrt(2.0 / self.nnz_per_row))
            if self.bias is not None:
                bound = 1.0 / math.sqrt(self.nnz_per_row)
                self.bias.uniform_(-bound, bound)

    def dense_matrix(self) -> torch.Tensor:
        """The masked (out, in*kh*kw) weight matrix."""
        return self.sparse_weight.dense()

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
            full[: scale.numel()] = scale
            self.values.mul_(full.to(self.values)[self.row_index].unsqueeze(-1))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        key = prefix + "structure_id"
        name = prefix[:-1] or type(self).__name__
        indexed = prefix + "row_index" in state_dict and prefix + "col_index" in state_dict
        if indexed:  # a fitted structure saved with its indices: adopted (it then is this layer's structure)
            error = self._adopt_saved_structure(
                state_dict[prefix + "row_index"], state_dict[prefix + "col_index"], state_dict.get(key), name
            )
            if error:
                error_msgs.append(error)
                return
        if key in state_dict:
            saved = state_dict[key]
            if (
                not isinstance(saved, torch.Tensor)
                or saved.shape != self.structure_id.shape
                or not _same_structure(saved.to(self.structure_id.device), self.structure_id)
            ):
                error_msgs.append(
                    f"layer {name!r}: the state was saved from another sparsity structure "
                    f"(saved {_describe_id(saved)}, this layer {_describe_id(self.structure_id)}); build the "
                    f"model and sparsify it with the same shape, sparsity, pattern and seed before loading"
                )
                return
        elif prefix + "values" in state_dict and not indexed:  # refused even with strict=False
            error_msgs.append(
                f"layer {name!r}: the state has {prefix}values but no {key}, so the values cannot be "
                f"matched to this layer's structure ({_describe_id(self.structure_id)}); load a state "
                f"saved whole (state_dict() keeps {key})"
            )
            return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        s = self.structure
        return (
            f"weight={tuple(s.weight_shape)}, sparsity={s.sparsity:.4f}, nnz_per_row={self.nnz_per_row}, "
            f"groups={self.values.shape[0]}x{self.values.shape[1]} rows, bias={self.bias is not None}, "
            f"backend={self.backend!r}"
        )


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
        weight, bias = cast(torch.Tensor, module.weight), cast("torch.Tensor | None", module.bias)
        return weight.t(), bias
    raise TypeError(f"expected nn.Linear or transformers' Conv1D, got {type(module).__name__}")


def is_hf_conv1d(module: nn.Module) -> bool:
    """transformers' `Conv1D` (GPT-2 and relatives), recognised without importing transformers."""
    return (
        type(module).__name__ == "Conv1D"
        and hasattr(module, "nf")
        and isinstance(getattr(module, "weight", None), torch.Tensor)
        and cast(torch.Tensor, module.weight).dim() == 2
    )


class RBGPLinear(_RBGPBase):
    """A linear layer whose weight follows an RBGP pattern (RBGP4 planned by default)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        sparsity: float = 0.9,
        *,
        pattern: str | Pattern | None = None,
        seed: int = 0,
        bias: bool = True,
        backend: str = "auto",
        device=None,
        dtype=None,
        structure: SparseMask | None = None,
        dense_type: type[nn.Module] = nn.Linear,
    ) -> None:
        super().__init__()
        self.dense_type = dense_type
        """The dense class this layer stands for (nn.Linear, or transformers' Conv1D): what densify rebuilds."""
        self.in_features = layer_size("in_features", in_features)
        self.out_features = layer_size("out_features", out_features)
        self._setup(
            (self.out_features, self.in_features), sparsity, pattern, seed, bias, backend, device, dtype, structure
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend in ("auto", "grouped") and not torch.compiler.is_compiling():
            # the common eager inference call after the first, on the plan its first call made
            scales = self._buffers.get("value_scales")
            y = planned_linear(x, self._workspace, self.values, scales, self.bias)
            if y is not None:
                return y
        check_linear_input(x, self.in_features)
        return rbgp_linear(x, self.sparse_weight, self.bias, self.backend)

    def dense_weight(self) -> torch.Tensor:
        """The masked dense (out, in) weight."""
        return self.dense_matrix()

    @classmethod
    def from_dense(
        cls,
        module: nn.Module,
        sparsity: float = 0.9,
        *,
        pattern: str | Pattern | None = None,
        seed: int = 0,
        keep_weights: bool = True,
        backend: str = "auto",
        structure: SparseMask | None = None,
    ) -> RBGPLinear:
        """An RBGPLinear shaped like `module` (nn.Linear or transformers' Conv1D); with keep_weights its
        weights on the pattern are kept. `structure`: a prebuilt one (e.g. fitted to the weights)."""
        w, b = linear_weight(module)
        layer = cls(
            w.shape[1],
            w.shape[0],
            sparsity,
            pattern=pattern,
            seed=seed,
            bias=b is not None,
            backend=backend,
            device=w.device,
            dtype=w.dtype,
            structure=structure,
            dense_type=type(module),
        )
        if keep_weights:
            layer.load_dense_(w, b)
        return layer


class RBGPConv2d(_RBGPBase):
    """A 2-D convolution (groups=1) whose (c_out, c_in*kh*kw) weight follows an RBGP pattern.

    Which path it runs (gathered-channel grouped conv, pointwise grouped matmul, im2col, or the masked
    dense conv where sparsity cannot pay) is planned once from its shape and layout (`conv_args`, see
    `rbgp.ops.conv`); the forward is one call to `rbgp.ops.rbgp_conv2d`.

    Arguments and inputs as in nn.Conv2d, checked at construction (ValueError naming the bad value):
    kernel_size, stride and dilation integers >= 1 or pairs of them; padding integers >= 0, "valid" or
    "same" (stride 1), with any `padding_mode` (what nn.Conv2d would pad is padded the same way before
    the im2col); input (N, C, H, W) or unbatched (C, H, W).
    """

    dense_class: type[nn.Module] = nn.Conv2d
    # as nn.Conv2d's and nn.Conv1d's: pairs here, 1-tuples in RBGPConv1d
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: str | tuple[int, ...]
    dilation: tuple[int, ...]
    channels: torch.Tensor | None  # buffer registered by _set_structure

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        sparsity: float = 0.9,
        *,
        pattern: str | Pattern | None = None,
        seed: int = 0,
        bias: bool = True,
        padding_mode: str = "zeros",
        backend: str = "auto",
        device=None,
        dtype=None,
        structure: SparseMask | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = layer_size("in_channels", in_channels)
        self.out_channels = layer_size("out_channels", out_channels)
        self._geometry = conv_args(kernel_size, stride, padding, dilation)  # pairs: what the 2-D paths run
        self.kernel_size, self.stride, self.padding, self.dilation = self._geometry  # what users read
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        self._pad = self._explicit_padding()  # (left, right, top, bottom)
        shape = (self.out_channels, self.in_channels, *self._geometry[0])
        self._setup(shape, sparsity, pattern, seed, bias, backend, device, dtype, structure)

    def _explicit_padding(self) -> tuple[int, int, int, int]:
        kernel, _, padding, dilation = self._geometry
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":  # stride 1 (checked by conv_args)
            pads = []
            for d, k in zip(reversed(dilation), reversed(kernel)):  # width first, like F.pad
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            return cast(tuple[int, int, int, int], tuple(pads))
        ph, pw = cast(tuple[int, int], padding)  # conv_padding: "valid", "same" or a pair
        return (pw, pw, ph, ph)

    def _set_structure(self, structure: SparseMask, device=None) -> None:
        super()._set_structure(structure, device)
        kernel, stride, _, dilation = self._geometry
        channels = channel_table(self.col_index, kernel[0] * kernel[1])
        self.register_buffer("channels", None if channels is None else padded_channels(channels), persistent=False)
        self.conv_args = plan_conv(
            self.layout,
            self.channels,
            kernel,
            stride,
            self._pad,
            dilation,
            self.padding_mode,
            self.density,
        )

    @property
    def sparse_weight(self) -> SparseWeight:
        return SparseWeight(self.values, self.layout, self.channels)  # with the channel table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, in_channels, H, W), or unbatched (in_channels, H, W) as nn.Conv2d takes it."""
        if not check_conv_input(x, self.in_channels):
            return rbgp_conv2d(x.unsqueeze(0), self.sparse_weight, self.conv_args, self.bias, self.backend).squeeze(0)
        return rbgp_conv2d(x, self.sparse_weight, self.conv_args, self.bias, self.backend)

    def dense_weight(self) -> torch.Tensor:
        """The masked dense (c_out, c_in, kh, kw) weight."""
        return self.dense_matrix().reshape(self.structure.weight_shape)

    @classmethod
    def from_dense(
        cls,
        module: nn.Conv2d | nn.Conv1d,
        sparsity: float = 0.9,
        *,
        pattern: str | Pattern | None = None,
        seed: int = 0,
        keep_weights: bool = True,
        backend: str = "auto",
        structure: SparseMask | None = None,
    ) -> RBGPConv2d:
        """A layer shaped like `module` (nn.Conv2d; nn.Conv1d for RBGPConv1d; any padding and padding
        mode); with keep_weights its weights on the pattern are kept. `structure`: a prebuilt one (e.g.
        fitted to the weights), for the (c_out, c_in, kh, kw) weight ((c_out, c_in, 1, k) for Conv1d)."""
        if not isinstance(module, cls.dense_class):
            raise TypeError(f"from_dense expects nn.{cls.dense_class.__name__}, got {type(module).__name__}")
        if module.groups != 1:
            raise ValueError(f"only groups=1 convs can be RBGP, got groups={module.groups} in {module}")
        w = module.weight
        layer = cls(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            sparsity,
            pattern=pattern,
            seed=seed,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
            backend=backend,
            device=w.device,
            dtype=w.dtype,
            structure=structure,
        )
        if keep_weights:
            layer.load_dense_(w, module.bias)
        return layer


def _single(name: str, value, minimum: int) -> int:
    """An int >= minimum, or a 1-tuple of one (nn.Conv1d's kernel_size/stride/padding/dilation)."""
    item = value[0] if isinstance(value, (tuple, list)) and len(value) == 1 else value
    if isinstance(item, (tuple, list)):
        raise ValueError(f"{name} must be an integer >= {minimum} or a 1-tuple of one, got {value!r}")
    return conv_pair(name, item, minimum)[0]


class RBGPConv1d(RBGPConv2d):
    """A 1-D convolution (groups=1) run as an RBGPConv2d over a height-1 input: kernel (1, k), the same
    paths and guarantees. Arguments, attributes (kernel_size=(k,), ...) and inputs as in nn.Conv1d
    (input (N, C, L) or unbatched (C, L)); `dense_weight()` is the (c_out, c_in, k) weight nn.Conv1d
    holds, the structure is planned on the (c_out, c_in, 1, k) one."""

    dense_class = nn.Conv1d

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        sparsity: float = 0.9,
        *,
        pattern: str | Pattern | None = None,
        seed: int = 0,
        bias: bool = True,
        padding_mode: str = "zeros",
        backend: str = "auto",
        device=None,
        dtype=None,
        structure: SparseMask | None = None,
    ) -> None:
        pad = padding if isinstance(padding, str) else (0, _single("padding", padding, 0))
        super().__init__(
            in_channels,
            out_channels,
            (1, _single("kernel_size", kernel_size, 1)),
            (1, _single("stride", stride, 1)),
            pad,
            (1, _single("dilation", dilation, 1)),
            sparsity,
            pattern=pattern,
            seed=seed,
            bias=bias,
            padding_mode=padding_mode,
            backend=backend,
            device=device,
            dtype=dtype,
            structure=structure,
        )
        self.kernel_size, self.stride, self.dilation = self.kernel_size[1:], self.stride[1:], self.dilation[1:]
        self.padding = self.padding if isinstance(self.padding, str) else self.padding[1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, in_channels, L), or unbatched (in_channels, L) as nn.Conv1d takes it."""
        if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3) or x.shape[-2] != self.in_channels:
            got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"
            raise ValueError(
                f"expected input (N, {self.in_channels}, L) or unbatched ({self.in_channels}, L) "
                f"(in_channels = {self.in_channels}), got {got}"
            )
        return super().forward(x.unsqueeze(-2)).squeeze(-2)

    def dense_weight(self) -> torch.Tensor:
        """The masked dense (c_out, c_in, k) weight."""
        return self.dense_matrix().reshape(self.out_channels, self.in_channels, *self.kernel_size)

    @property
    def mask(self) -> torch.Tensor:
        """The true 0/1 mask (c_out, c_in, k) (bool)."""
        return super().mask.reshape(self.out_channels, self.in_channels, *self.kernel_size)
